"""Vector stores: Chroma, with the embedding-fingerprint guard."""

from .chroma import ChromaStore, ChromaStoreConfig

__all__ = ["ChromaStore", "ChromaStoreConfig"]
