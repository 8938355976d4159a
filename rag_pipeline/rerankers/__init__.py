"""Rerankers (LangChain ``BaseDocumentCompressor``s)."""

from .bge_reranker import BgeReranker, BgeRerankerConfig

__all__ = ["BgeReranker", "BgeRerankerConfig"]
