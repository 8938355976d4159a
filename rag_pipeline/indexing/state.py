"""Where ingestion keeps its state: the index record, the write lock and the embedding cache.

All three live in ``ingest.state_directory``: by default the folder of a persistent Chroma index,
and required when the index has no folder on this machine (a Chroma server). An in-memory index
keeps its record in memory and has neither lock nor cache.

    state_directory/
      index_record.sqlite     what each collection holds, and which collection is active
      ingest.lock             one writer at a time (ingest, reindex, eval's indexing)
      embedding_cache.sqlite  passage vectors by model identity and text hash
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from .cache import EmbeddingCache
from .lock import LOCK_FILENAME, index_lock
from .record import RECORD_FILENAME, IndexRecord

EMBEDDING_CACHE_FILENAME = "embedding_cache.sqlite"


class IndexState:
    """The state of one index. ``IndexState(None)``: an in-memory index's, for this process only."""

    def __init__(self, directory: Path | None, *, setting: str = "ingest.state_directory"):
        """``setting``: the config key that chose ``directory``, named when it cannot be used."""
        self.directory = Path(directory) if directory is not None else None
        self.setting = setting
        self._memory_record: IndexRecord | None = None

    @property
    def record_path(self) -> Path | None:
        return self.directory / RECORD_FILENAME if self.directory is not None else None

    @property
    def lock_path(self) -> Path | None:
        return self.directory / LOCK_FILENAME if self.directory is not None else None

    @property
    def embedding_cache_path(self) -> Path | None:
        return self.directory / EMBEDDING_CACHE_FILENAME if self.directory is not None else None

    def ensure_directory(self) -> Path | None:
        """Create the state folder if need be and check that files can be made in it; a folder
        that cannot hold them is one ``ConfigError`` naming the setting and the cause.

        Everything that writes state (the lock, the record, the embedding cache) calls this first,
        so a mistyped ``ingest.state_directory`` is reported before an ingest reads a file or loads
        a model, rather than as an ``OSError`` from whichever of them happened to run first (or,
        where the OS refuses the lock file quietly, as a lock that looks held by another ingest).
        """
        directory = self.directory
        if directory is None:
            return None
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._refuse(_file_in_the_way(directory) or f"cannot create {directory} ({exc.strerror or exc})")
        try:
            # a probe file, gone on close: a folder can exist and still refuse new files
            # (a read-only mount, /proc, /sys), which mkdir alone does not show
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            self._refuse(f"cannot create files in {directory} ({exc.strerror or exc})")
        return directory

    def _refuse(self, cause: str) -> None:
        raise ConfigError(
            f"{self.setting}: {cause}; the index record, write lock and embedding cache live there: "
            "give a folder this user can write"
        ) from None

    def lock(self, timeout: float):
        """Hold the write lock (a no-op for an in-memory index)."""
        self.ensure_directory()
        return index_lock(self.lock_path, timeout)

    @contextmanager
    def record(self) -> Iterator[IndexRecord]:
        """The writable record (created on first use)."""
        if self.record_path is None:
            if self._memory_record is None:
                self._memory_record = IndexRecord(None)
            yield self._memory_record
            return
        self.ensure_directory()
        with IndexRecord(self.record_path) as record:
            yield record

    def read_record(self) -> IndexRecord | None:
        """The record for reading, or None when there is none yet (creates nothing)."""
        if self.record_path is None:
            return self._memory_record
        return IndexRecord.open_existing(self.record_path)

    def active_collection(self, logical: str) -> str:
        """The physical collection that serves ``logical`` now (``logical`` itself without a record)."""
        record = self.read_record()
        if record is None:
            return logical
        try:
            return record.active_collection(logical) or logical
        finally:
            if record is not self._memory_record:
                record.close()

    def change_token(self) -> tuple[int, int, int] | None:
        """Changes whenever an ingest or reindex commits (the record's inode, size and mtime): what
        a long-lived reader checks before each query to notice another process's writes."""
        path = self.record_path
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def embedding_cache(self, identity: dict[str, Any]) -> EmbeddingCache | None:
        path = self.embedding_cache_path
        if path is None:
            return None
        self.ensure_directory()
        return EmbeddingCache(path, identity)


def _file_in_the_way(directory: Path) -> str | None:
    """Where the path, or a folder above it, is a file: the usual reason a folder cannot be made."""
    for folder in (directory, *directory.parents):
        if folder.exists() and not folder.is_dir():
            return f"{folder} is a file, not a folder" if folder == directory else f"{directory} is under a file, {folder}"
    return None
