from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.documents import Document

from ..contracts import FileError

__all__ = ["FileError", "LoadResult"]


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    files_seen: int = 0
    files_loaded: int = 0
