"""The index record: what ingest wrote into each Chroma collection, on SQLite beside the index.

One file, ``<persist_directory>/index_record.sqlite`` (in memory for an in-memory index), holds:

* ``collections`` — each physical Chroma collection, the logical name it serves
  (``vectorstore.collection``) and its state: ``active`` (the one queries use), ``building``
  (a ``reindex`` in progress) or ``retired`` (replaced, about to be dropped). A logical name with no
  row is served by the collection of the same name, so indexes from before the record still open.
  ``dirty`` is set before an ingest first writes to the collection and cleared when it finishes:
  a dirty collection is one a crash left mid-way, and the next ingest reconciles it with Chroma.
* ``files`` — per indexed file: size, mtime, inode, ctime, sha256 of its bytes, the settings that
  shaped its chunks, and when it was recorded. A file whose size, mtime, inode and ctime all match
  is skipped unread; one whose stat changed but whose hash did not is skipped after hashing.
  (Schema 1 had no inode and ctime: its rows are migrated with both unknown, so each file is
  hashed once and its full stat remembered.)
* ``chunks`` — each chunk id with the file it came from, so a changed file's old chunks and a
  deleted file's chunks can be removed by id. A chunk id has one owner: a write that would move
  an id from one source to another is refused by the write session.
* ``pending_deletes`` — chunks the record has forgotten whose removal from the indexes has not
  been confirmed yet (a delete whose index step failed): retried by the next write session, so a
  delete that failed half-way can be repeated and what it removed stops being served.

A row of ``files`` is a *source*: a file under ``loader.path`` (``origin`` ``folder``, NULL in
records from before origins) or documents added from code (``origin`` ``api``:
``Pipeline.add_documents``, the LangChain vector store). A folder sync decides only about folder
sources; api sources leave only when the user deletes them (or asks ``ingest --prune-api``).

This is LangChain's record-manager design (a record per chunk keyed by content hash and source id)
plus a per-file record that lets unchanged files be skipped without being parsed.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

SCHEMA_VERSION = "2"
RECORD_FILENAME = "index_record.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    logical TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'building', 'retired')),
    dirty INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    collection TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    settings TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    recorded_ns INTEGER NOT NULL,
    inode INTEGER,
    ctime_ns INTEGER,
    PRIMARY KEY (collection, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_source ON chunks (collection, source);
CREATE TABLE IF NOT EXISTS pending_deletes (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
"""

# Columns added after schema 1, with how an older record file gains them. NULL means "not known":
# the file is hashed once rather than trusted on size and mtime alone.
_ADDED_FILE_COLUMNS = {"inode": "INTEGER", "ctime_ns": "INTEGER", "origin": "TEXT"}
FOLDER, API = "folder", "api"  # where a source came from (``FileRecord.origin``)

_PARAMETER_BATCH = 500  # stay under SQLite's bound-parameter limit


@dataclass(frozen=True)
class FileRecord:
    """One indexed file as the record knows it."""

    source: str
    size: int
    mtime_ns: int
    sha256: str
    settings: str
    chunks: int
    recorded_ns: int = 0
    inode: int | None = None  # None: recorded before the record kept it (stat unknown, hash once)
    ctime_ns: int | None = None
    origin: str = FOLDER  # FOLDER: a file ingest syncs; API: documents added from code

    @property
    def from_code(self) -> bool:
        return self.origin == API


def _batches(items: list, size: int = _PARAMETER_BATCH) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class IndexRecord:
    """The record of one index folder. ``IndexRecord(None)`` keeps it in memory.

    Every method that changes the record commits one SQLite transaction, so a kill leaves the
    record either before or after that change, never half-way.
    """

    def __init__(self, path: str | Path | None, *, readonly: bool = False):
        self.path = Path(path) if path is not None else None
        self.readonly = readonly
        if self.path is None:
            self._connection = sqlite3.connect(":memory:", check_same_thread=False)
        elif readonly:
            self._connection = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=60, check_same_thread=False
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            # A rollback journal rather than WAL: the writes are few and short, and a reader (a
            # query resolving the active collection, a dry run) then creates no -wal/-shm files.
            self._connection.execute("PRAGMA journal_mode=DELETE")
            self._connection.execute("PRAGMA synchronous=FULL")
        if not readonly:
            with self._connection:
                self._connection.executescript(_SCHEMA)
            with self._connection:
                # Under the write lock: two processes opening an old record migrate it once.
                self._connection.execute("BEGIN IMMEDIATE")
                self._migrate()
        # A read-only reader of a record not migrated yet reads the added columns as unknown.
        present = self._file_columns()
        self._stat_columns = ", ".join(c if c in present else "NULL" for c in _ADDED_FILE_COLUMNS)

    def _file_columns(self) -> set[str]:
        return {row[1] for row in self._connection.execute("PRAGMA table_info(files)")}

    def _migrate(self) -> None:
        """Bring a record file written by an older version to this schema (inside the open transaction)."""
        present = self._file_columns()
        for column, kind in _ADDED_FILE_COLUMNS.items():
            if column not in present:
                self._connection.execute(f"ALTER TABLE files ADD COLUMN {column} {kind}")
        self._connection.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )

    @classmethod
    def open_existing(cls, path: str | Path | None) -> "IndexRecord | None":
        """The record at ``path`` opened read-only, or None when there is none yet (touches nothing)."""
        if path is None or not Path(path).is_file():
            return None
        return cls(path, readonly=True)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "IndexRecord":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        try:
            return self._connection.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as exc:
            if self.readonly and "no such table" in str(exc):
                return []  # a record file created by an ingest that has not written its schema yet
            raise

    # -- collections -----------------------------------------------------------------------------
    def active_collection(self, logical: str) -> str | None:
        rows = self._query("SELECT name FROM collections WHERE logical = ? AND state = 'active'", (logical,))
        return rows[0][0] if rows else None

    def collections(self, logical: str) -> dict[str, str]:
        """Physical name -> state, for every collection that serves or served ``logical``."""
        return dict(self._query("SELECT name, state FROM collections WHERE logical = ?", (logical,)))

    def known_collection_names(self) -> set[str]:
        return {row[0] for row in self._query("SELECT name FROM collections")}

    def add_collection(self, name: str, logical: str, state: str) -> None:
        with self._connection:
            self._connection.execute(
                "INSERT INTO collections (name, logical, state, dirty, created_at) VALUES (?, ?, ?, 0, ?) "
                "ON CONFLICT (name) DO UPDATE SET logical = excluded.logical, state = excluded.state",
                (name, logical, state, time.time()),
            )

    def switch(self, logical: str, new: str) -> list[str]:
        """Make ``new`` the active collection of ``logical`` in one transaction; returns the retired."""
        with self._connection:
            retired = [
                row[0]
                for row in self._connection.execute(
                    "SELECT name FROM collections WHERE logical = ? AND state = 'active' AND name != ?", (logical, new)
                )
            ]
            self._connection.execute(
                "UPDATE collections SET state = 'retired' WHERE logical = ? AND state = 'active' AND name != ?",
                (logical, new),
            )
            self._connection.execute("UPDATE collections SET state = 'active' WHERE name = ?", (new,))
        return retired

    def forget_collection(self, name: str) -> None:
        """Delete everything recorded for a physical collection (after Chroma dropped it)."""
        with self._connection:
            for table, column in (
                ("chunks", "collection"), ("files", "collection"), ("pending_deletes", "collection"), ("collections", "name")
            ):
                self._connection.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))

    def is_dirty(self, name: str) -> bool:
        rows = self._query("SELECT dirty FROM collections WHERE name = ?", (name,))
        return bool(rows and rows[0][0])

    def set_dirty(self, name: str, dirty: bool) -> None:
        with self._connection:
            self._connection.execute("UPDATE collections SET dirty = ? WHERE name = ?", (int(dirty), name))

    # -- files and chunks ------------------------------------------------------------------------
    def files(self, collection: str) -> dict[str, FileRecord]:
        rows = self._query(
            f"SELECT source, size, mtime_ns, sha256, settings, chunks, recorded_ns, {self._stat_columns} "
            "FROM files WHERE collection = ?",
            (collection,),
        )
        return {row[0]: FileRecord(*row[:9], origin=row[9] or FOLDER) for row in rows}

    def chunk_ids(self, collection: str, sources: Iterable[str] | None = None) -> set[str]:
        if sources is None:
            return {row[0] for row in self._query("SELECT id FROM chunks WHERE collection = ?", (collection,))}
        return self._select_in("SELECT id FROM chunks WHERE collection = ? AND source IN ({marks})", collection, sources)

    def chunk_count(self, collection: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM chunks WHERE collection = ?", (collection,))
        return rows[0][0] if rows else 0

    def chunk_owners(self, collection: str, ids: Iterable[str]) -> dict[str, str]:
        """Chunk id -> the source that records it, for those of ``ids`` the record lists."""
        owners: dict[str, str] = {}
        for part in _batches(list(ids)):
            marks = ",".join("?" * len(part))
            rows = self._query(
                f"SELECT id, source FROM chunks WHERE collection = ? AND id IN ({marks})", (collection, *part)
            )
            owners.update(rows)
        return owners

    def chunk_sources(self, collection: str, ids: Iterable[str]) -> set[str]:
        """The sources that own any of ``ids``."""
        return self._select_in("SELECT DISTINCT source FROM chunks WHERE collection = ? AND id IN ({marks})", collection, ids)

    def _select_in(self, sql: str, collection: str, values: Iterable[str]) -> set[str]:
        """First column of ``sql`` over ``values``, in batches under SQLite's parameter limit."""
        found: set[str] = set()
        for part in _batches(list(values)):
            rows = self._query(sql.format(marks=",".join("?" * len(part))), (collection, *part))
            found.update(row[0] for row in rows)
        return found

    def commit_files(
        self, collection: str, files: list[FileRecord], chunk_ids: Mapping[str, list[str]], *, replace: bool
    ) -> None:
        """Record files and their chunk ids in one transaction.

        ``replace`` drops each file's previously recorded chunks first (they are deleted from the
        collection next); without it the old chunks stay recorded (``cleanup: none``).
        """
        now = time.time_ns()
        with self._connection:
            for file in files:
                if replace:
                    self._connection.execute(
                        "DELETE FROM chunks WHERE collection = ? AND source = ?", (collection, file.source)
                    )
                self._connection.executemany(
                    "INSERT OR REPLACE INTO chunks (collection, id, source) VALUES (?, ?, ?)",
                    [(collection, identifier, file.source) for identifier in chunk_ids.get(file.source, [])],
                )
                self._connection.execute(
                    "INSERT OR REPLACE INTO files (collection, source, size, mtime_ns, sha256, settings, chunks, "
                    "recorded_ns, inode, ctime_ns, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        collection, file.source, file.size, file.mtime_ns, file.sha256, file.settings, file.chunks,
                        now, file.inode, file.ctime_ns, file.origin,
                    ),
                )

    def update_stats(self, collection: str, stats: Iterable[tuple[str, int, int, int, int]]) -> None:
        """Files whose stat changed but whose bytes did not: remember their new
        ``(source, size, mtime_ns, inode, ctime_ns)``."""
        now = time.time_ns()
        with self._connection:
            self._connection.executemany(
                "UPDATE files SET size = ?, mtime_ns = ?, inode = ?, ctime_ns = ?, recorded_ns = ? "
                "WHERE collection = ? AND source = ?",
                [
                    (size, mtime_ns, inode, ctime_ns, now, collection, source)
                    for source, size, mtime_ns, inode, ctime_ns in stats
                ],
            )

    def remove_sources(self, collection: str, sources: Iterable[str]) -> None:
        sources = list(sources)
        with self._connection:
            for part in _batches(sources):
                marks = ",".join("?" * len(part))
                self._connection.execute(
                    f"DELETE FROM chunks WHERE collection = ? AND source IN ({marks})", (collection, *part)
                )
                self._connection.execute(
                    f"DELETE FROM files WHERE collection = ? AND source IN ({marks})", (collection, *part)
                )


    # -- documents added from code ---------------------------------------------------------------
    def put_api_chunks(self, collection: str, chunk_ids: Mapping[str, list[str]], settings: str) -> None:
        """Record chunks added one by one from code (the LangChain vector store) under their api
        sources, in one transaction: an id recorded elsewhere moves, each touched source's chunk
        count is recounted, and a source left with none is forgotten."""
        now = time.time_ns()
        with self._connection:
            touched = set(chunk_ids) | self._owners(collection, [i for ids in chunk_ids.values() for i in ids])
            for source, ids in chunk_ids.items():
                self._connection.execute(
                    "INSERT OR IGNORE INTO files (collection, source, size, mtime_ns, sha256, settings, chunks, "
                    "recorded_ns, origin) VALUES (?, ?, 0, 0, '', ?, 0, ?, ?)",
                    (collection, source, settings, now, API),
                )
                self._connection.executemany(
                    "INSERT OR REPLACE INTO chunks (collection, id, source) VALUES (?, ?, ?)",
                    [(collection, identifier, source) for identifier in ids],
                )
                self._connection.execute(
                    "UPDATE files SET recorded_ns = ? WHERE collection = ? AND source = ?", (now, collection, source)
                )
            self._recount_api_sources(collection, touched)

    def remove_chunks(self, collection: str, ids: Iterable[str]) -> None:
        """Forget chunks by id (deleted from code); api sources are recounted, emptied ones forgotten."""
        with self._connection:
            self._remove_chunks(collection, list(ids))

    def _remove_chunks(self, collection: str, ids: list[str]) -> None:
        touched = self._owners(collection, ids)
        for part in _batches(ids):
            marks = ",".join("?" * len(part))
            self._connection.execute(f"DELETE FROM chunks WHERE collection = ? AND id IN ({marks})", (collection, *part))
        # A source that lost chunks no longer holds what its digest describes: adding the same
        # documents again must write them back, not be skipped as unchanged.
        self._connection.executemany(
            "UPDATE files SET sha256 = '' WHERE collection = ? AND source = ?", [(collection, s) for s in touched]
        )
        self._recount_api_sources(collection, touched)

    def _owners(self, collection: str, ids: list[str]) -> set[str]:
        owners: set[str] = set()
        for part in _batches(ids):
            marks = ",".join("?" * len(part))
            rows = self._connection.execute(
                f"SELECT DISTINCT source FROM chunks WHERE collection = ? AND id IN ({marks})", (collection, *part)
            )
            owners.update(row[0] for row in rows)
        return owners

    def _recount_api_sources(self, collection: str, sources: Iterable[str]) -> None:
        for source in sources:
            self._connection.execute(
                "UPDATE files SET chunks = (SELECT COUNT(*) FROM chunks WHERE collection = ? AND source = ?) "
                "WHERE collection = ? AND source = ? AND origin = ?",
                (collection, source, collection, source, API),
            )
        self._connection.execute("DELETE FROM files WHERE collection = ? AND origin = ? AND chunks = 0", (collection, API))

    # -- deletions not yet confirmed by the indexes ----------------------------------------------
    def forget_sources_pending(self, collection: str, sources: list[str]) -> set[str]:
        """Forget ``sources`` and list their chunks as pending deletion, in one transaction;
        returns the chunk ids (the caller deletes them from the indexes, then confirms)."""
        ids = self.chunk_owners_of(collection, sources)
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO pending_deletes (collection, id, source) VALUES (?, ?, ?)",
                [(collection, i, s) for i, s in ids.items()],
            )
            for part in _batches(sources):
                marks = ",".join("?" * len(part))
                for table in ("chunks", "files"):
                    self._connection.execute(
                        f"DELETE FROM {table} WHERE collection = ? AND source IN ({marks})", (collection, *part)
                    )
        return set(ids)

    def forget_chunks_pending(self, collection: str, ids: Iterable[str]) -> None:
        """Forget chunks by id (their api sources recounted) and list every one of ``ids`` as
        pending deletion, in one transaction."""
        ids = list(ids)
        owners = self.chunk_owners(collection, ids)
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO pending_deletes (collection, id, source) VALUES (?, ?, ?)",
                [(collection, i, owners.get(i, "")) for i in ids],
            )
            self._remove_chunks(collection, ids)

    def chunk_owners_of(self, collection: str, sources: Iterable[str]) -> dict[str, str]:
        """Chunk id -> source, for every chunk of ``sources``."""
        owners: dict[str, str] = {}
        for part in _batches(list(sources)):
            marks = ",".join("?" * len(part))
            owners.update(self._query(
                f"SELECT id, source FROM chunks WHERE collection = ? AND source IN ({marks})", (collection, *part)
            ))
        return owners

    def pending_owners(self, collection: str) -> dict[str, str]:
        """Chunk id -> the source it was removed with, for every deletion not yet confirmed."""
        return dict(self._query("SELECT id, source FROM pending_deletes WHERE collection = ?", (collection,)))

    def pending_deletes(self, collection: str, sources: Iterable[str] | None = None) -> set[str]:
        if sources is None:
            return {row[0] for row in self._query("SELECT id FROM pending_deletes WHERE collection = ?", (collection,))}
        return self._select_in(
            "SELECT id FROM pending_deletes WHERE collection = ? AND source IN ({marks})", collection, sources
        )

    def confirm_deleted(self, collection: str, ids: Iterable[str]) -> None:
        with self._connection:
            for part in _batches(list(ids)):
                marks = ",".join("?" * len(part))
                self._connection.execute(
                    f"DELETE FROM pending_deletes WHERE collection = ? AND id IN ({marks})", (collection, *part)
                )

    # -- meta --------------------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        with self._connection:
            self._connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None
