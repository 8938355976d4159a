"""Chunkers split documents into the passages that get embedded: recursive, tokens, none."""

from .base import Chunker, chunk_id
from .none import NoChunker, NoChunkerConfig
from .recursive import RecursiveChunker, RecursiveChunkerConfig
from .tokens import TokenChunker, TokenChunkerConfig

__all__ = [
    "Chunker",
    "NoChunker",
    "NoChunkerConfig",
    "RecursiveChunker",
    "RecursiveChunkerConfig",
    "TokenChunker",
    "TokenChunkerConfig",
    "chunk_id",
]
