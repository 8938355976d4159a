"""Retrievers: LangChain ``BaseRetriever``s built from the configured stages."""

from .dense import DenseRetriever, DenseRetrieverConfig

__all__ = ["DenseRetriever", "DenseRetrieverConfig"]
