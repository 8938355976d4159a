"""Embedding models (LangChain ``Embeddings``)."""

from .bge import BgeEmbeddings, BgeEmbeddingsConfig
from .models import BGE_EN_INSTRUCTION, default_query_instruction, resolve_model

__all__ = ["BGE_EN_INSTRUCTION", "BgeEmbeddings", "BgeEmbeddingsConfig", "default_query_instruction", "resolve_model"]
