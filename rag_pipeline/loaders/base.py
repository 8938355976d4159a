from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.documents import Document


@dataclass(frozen=True)
class FileError:
    """A source that could not be read (or part of one, e.g. a JSONL line), with the reason."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    files_seen: int = 0
    files_loaded: int = 0
