"""Loaders turn sources into LangChain ``Document``s. Per-file failures are values, not exceptions."""

from .base import FileError, LoadResult
from .directory import DirectoryLoader, DirectoryLoaderConfig

__all__ = ["DirectoryLoader", "DirectoryLoaderConfig", "FileError", "LoadResult"]
