"""Embedding models (LangChain ``Embeddings``). Model resolution and loading live in :mod:`rag_pipeline.models`."""

from .bge import BgeEmbeddings, BgeEmbeddingsConfig

__all__ = ["BgeEmbeddings", "BgeEmbeddingsConfig"]
