"""What an index holds, read from the record and the indexes without writing anything: its
sources (``rag-pipeline ls``), its figures (``stats``) and its chunks (``export``)."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from .record import IndexRecord

_EXPORT_PAGE = 256  # chunks read back per step: memory holds one page, whatever the index's size


@dataclass(frozen=True)
class SourceInfo:
    """One source of an index: a file under ``loader.path`` (origin ``folder``) or documents added
    from code (``api``), with its chunk count and when it was last written."""

    source: str
    origin: str
    chunks: int
    recorded_at: str  # ISO 8601, UTC

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).isoformat(timespec="seconds")


def sources(record: IndexRecord | None, collection: str) -> list[SourceInfo]:
    files = record.files(collection) if record is not None else {}
    return [
        SourceInfo(source, file.origin, file.chunks, timestamp(file.recorded_ns / 1e9) or "")
        for source, file in sorted(files.items())
    ]


def last_ingest(record: IndexRecord | None, collection: str) -> str | None:
    value = record.get_meta(f"last_ingest:{collection}") if record is not None else None
    return timestamp(float(value)) if value is not None else None


def folder_size(path: Path | None) -> int:
    """Bytes of the files under ``path`` (a file's own size; 0 when it does not exist)."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def disk_usage(index_directory: Path | None, state_files: dict[str, Path | None]) -> dict[str, int]:
    """Bytes on disk: each state file or folder, the vector index (its folder without them) and the total."""
    usage = {name: folder_size(path) for name, path in state_files.items()}
    if index_directory is not None:
        inside = sum(
            size for (name, size) in usage.items()
            if state_files[name] is not None and index_directory in state_files[name].parents
        )
        usage = {"vectorstore": folder_size(index_directory) - inside, **usage}
    usage["total"] = sum(usage.values())
    return usage


def export_chunks(index: Any, record: IndexRecord | None, collection: str, *, vectors: bool = False) -> Iterator[dict[str, Any]]:
    """Every chunk the index holds, by id: ``{"id", "content", "metadata", "source", "origin"}``
    (``source``/``origin`` from the record; null for a chunk it does not list) and, with
    ``vectors``, ``"vector"``."""
    owner: dict[str, tuple[str, str]] = {}
    if record is not None:
        for source, file in record.files(collection).items():
            for identifier in record.chunk_ids(collection, [source]):
                owner[identifier] = (source, file.origin)
    ids = sorted(index.ids())
    for start in range(0, len(ids), _EXPORT_PAGE):
        part = ids[start : start + _EXPORT_PAGE]
        rows = index.vectors(part) if vectors else None
        for n, document in enumerate(index.documents(part)):
            source, origin = owner.get(document.id, (None, None))
            item = {"id": document.id, "content": document.page_content, "metadata": document.metadata,
                    "source": source, "origin": origin}
            if rows is not None:
                item["vector"] = [float(x) for x in rows[n]]
            yield item
