"""Lexical indexes: chunks searched by the words they contain, beside the dense index (``lexical:``)."""

from .bm25 import BM25Config, BM25Index

__all__ = ["BM25Config", "BM25Index"]
