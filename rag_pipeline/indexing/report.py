"""What an ingest did (``IngestReport``) and what one would do (``SyncPlan``, for ``--dry-run``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..contracts import FileError
from .record import FileRecord


def unsupported_summary(sources: list[str]) -> str:
    """``3 files of unsupported types: .docx ×2, .org`` (most frequent type first)."""
    types = Counter(Path(source).suffix.lower() or "(no extension)" for source in sources)
    listed = ", ".join(f"{kind} ×{n}" if n > 1 else kind for kind, n in types.most_common())
    return f"{len(sources)} file{'s' if len(sources) != 1 else ''} of unsupported types: {listed}"


# A dry run that would remove more than this share of the index's chunks says so loudly: a
# mistyped loader.path or include would otherwise empty the index on the real run.
LOUD_REMOVAL_SHARE = 0.5


@dataclass
class IngestReport:
    """What one ``ingest()`` (or ``index_chunks()``, ``reindex()``) did.

    Files: ``files_added``/``files_updated`` were parsed and indexed, ``files_unchanged`` were skipped
    unread, ``files_removed`` had their chunks deleted. Chunks: ``chunks`` is what the sources hold
    now, of which ``added`` were written (``embedded`` through the model, the rest from the
    embedding cache; every chunk of a parsed file is written, so that changed metadata reaches the
    index) and ``skipped`` were already indexed (unchanged files); ``deleted`` chunks were removed
    (old versions of changed files, deleted or emptied files, leftovers of an interrupted run).
    ``errors`` holds each unreadable source with its reason.
    """

    files_seen: int = 0
    files_loaded: int = 0
    files_added: int = 0
    files_updated: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    documents: int = 0
    chunks: int = 0
    added: int = 0
    skipped: int = 0  # already in the collection (same id): not embedded again
    embedded: int = 0  # chunks that went through the model (the rest came from the embedding cache)
    deleted: int = 0
    truncated: int = 0  # chunks longer than the model's max_seq_length
    errors: list[FileError] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # selected by the globs, no reader for their type
    collection: str = ""  # the physical Chroma collection written
    recovered: bool = False  # the previous ingest was interrupted; this one reconciled the index
    collection_count: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = [{"source": e.source, "reason": e.reason} for e in self.errors]
        return data

    def summary(self) -> str:
        files = (
            f"{self.files_seen} files ({self.files_added} added, {self.files_updated} updated, "
            f"{self.files_unchanged} unchanged, {self.files_removed} removed)"
        )
        text = (
            f"{files}, {self.chunks} chunks: {self.added} added ({self.embedded} embedded, "
            f"{self.added - self.embedded} from the embedding cache), {self.skipped} already indexed, "
            f"{self.deleted} deleted; collection holds {self.collection_count} ({self.seconds:.1f}s)"
        )
        if self.recovered:
            text += "; recovered from an interrupted ingest"
        if self.errors:
            text += f"; {len(self.errors)} error(s)"
        if self.unsupported:
            text += f"; {unsupported_summary(self.unsupported)} (not read)"
        return text


@dataclass
class FileChange:
    """A file to parse and (re)index; ``previous`` is its record, None for a new file."""

    path: Path
    source: str
    previous: FileRecord | None = None


@dataclass
class SyncPlan:
    """What an ingest would do, by file, decided from the record and the files' stat and hash."""

    collection: str
    cleanup: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # gone from the sources: chunks deleted
    kept: list[str] = field(default_factory=list)  # gone from the sources, chunks kept (cleanup incremental/none)
    unchanged_chunks: int = 0
    removed_chunks: int = 0
    interrupted: bool = False  # the last ingest did not finish; the next one reconciles the index
    unsupported: list[str] = field(default_factory=list)  # selected by the globs, no reader for their type
    indexed_chunks: int = 0  # what the record lists for the collection now
    from_code: list[str] = field(default_factory=list)  # sources added from code, kept (not the folder's)
    conflicts: list[str] = field(default_factory=list)  # files whose source name documents from code hold
    todo: list[FileChange] = field(default_factory=list, repr=False)
    # (source, size, mtime_ns, inode, ctime_ns) of files whose stat changed and bytes did not
    restat: list[tuple[str, int, int, int, int]] = field(default_factory=list, repr=False)

    @property
    def files_seen(self) -> int:
        return len(self.added) + len(self.updated) + len(self.unchanged)

    def summary(self) -> str:
        text = (
            f"dry run on collection {self.collection!r} (cleanup: {self.cleanup}): would add {len(self.added)}, "
            f"update {len(self.updated)} and remove {len(self.removed)} files ({self.removed_chunks} chunks); "
            f"{len(self.unchanged)} unchanged"
        )
        if self.kept:
            text += f"; {len(self.kept)} gone from the sources but kept (cleanup: {self.cleanup})"
        if self.from_code:
            text += f"; {len(self.from_code)} sources added from code kept (--prune-api removes them)"
        if self.conflicts:
            text += f"; {len(self.conflicts)} files not indexed: their source names are held by documents added from code"
        if self.interrupted:
            text += "; the last ingest was interrupted and will be reconciled"
        if self.unsupported:
            text += f"; {unsupported_summary(self.unsupported)} (not read)"
        return text

    def removal_warning(self) -> str | None:
        """A loud line when the run would remove most of the index, else None."""
        if not self.indexed_chunks or self.removed_chunks <= LOUD_REMOVAL_SHARE * self.indexed_chunks:
            return None
        share = 100 * self.removed_chunks / self.indexed_chunks
        return (
            f"WARNING: this ingest would remove {self.removed_chunks} of the {self.indexed_chunks} chunks in the index "
            f"({share:.0f}%, {len(self.removed)} files no longer found); check loader.path and loader.include before "
            "running it"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "cleanup": self.cleanup,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "kept": self.kept,
            "unchanged": len(self.unchanged),
            "removed_chunks": self.removed_chunks,
            "interrupted": self.interrupted,
            "unsupported": self.unsupported,
            "indexed_chunks": self.indexed_chunks,
            "from_code": self.from_code,
            "conflicts": self.conflicts,
        }
