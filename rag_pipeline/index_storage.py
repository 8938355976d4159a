"""What every index of chunks is built on, dense or lexical: the chunk table, the physical
collection it serves, and how it follows what another process commits.

- :class:`ChunkTable`: the chunks of one physical collection in SQLite (id, text, metadata in
  the stored form of :mod:`rag_pipeline.metadata`), a ``meta`` table of the index's own keys, and
  a ``version`` that every write bumps in the same transaction. An index that derives something
  from its chunks (FAISS's ANN index, BM25's matrices) keys it by that version, so a reader in any
  process sees at once whether what it holds is current.
- :class:`GenerationsBase`: the :class:`~rag_pipeline.contracts.Generations` protocol implemented
  once: which physical collection is served, following the active one when another process
  commits (``change_token``, ``resolve_collection``), write sessions, and the checks every search
  makes before its own.
- :class:`TableIndex`: a ``GenerationsBase`` whose truth is one ``ChunkTable`` per physical
  collection, ``<root>/<collection>/chunks.sqlite`` (in memory without a root): every read and
  write by id, filters, collections on disk, ``content_version``.

A new index is a subclass that adds its search (and whatever it derives from the table); the
FAISS store, the BM25 and BGE-M3 sparse indexes and the conformance suite's brute-force store
are. Nothing here is required of a plugin: the protocols in :mod:`rag_pipeline.contracts` are the
promise, these classes one way to keep it.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from langchain_core.documents import Document

from .contracts import Filter
from .errors import ConfigError
from .metadata import matches, read_stored_metadata, stored_metadata_json

CHUNKS_FILENAME = "chunks.sqlite"
_IDS_PER_STATEMENT = 500  # SQLite limits the parameters of one statement


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ChunkTable:
    """The chunks of one physical collection (SQLite; ``:memory:`` without a path).

    ``CHUNK_COLUMNS`` is the ``chunks`` table's schema (a kind of index may keep more per chunk in
    it, as the vector table does); ``PER_CHUNK_TABLES`` are further tables keyed by chunk id
    (BGE-M3's outputs), deleted and cleared with the chunks in the same transaction.
    """

    CHUNK_COLUMNS = "id TEXT PRIMARY KEY, text TEXT NOT NULL, metadata TEXT NOT NULL"
    PER_CHUNK_TABLES: dict[str, str] = {}

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Readers on other threads (LangChain's ainvoke) share the connection under a lock.
        self._connection = sqlite3.connect(str(path) if path else ":memory:", timeout=60, check_same_thread=False)
        self._lock = threading.RLock()
        with self._lock, self._connection as c:
            if path is not None:
                c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"CREATE TABLE IF NOT EXISTS chunks ({self.CHUNK_COLUMNS})")
            for table, columns in self.PER_CHUNK_TABLES.items():
                c.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            # (tables written before this module held the version as INTEGER or TEXT: both read as a number)
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")

    def close(self) -> None:
        self._connection.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write: committed whole with ``version`` bumped, or not at all."""
        with self._lock, self._connection as c:
            yield c
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")

    def query(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._connection.execute(statement, parameters).fetchall()

    # -- the index's own keys ------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._connection as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def version(self) -> int:
        return int(self.meta("version") or 0)

    # -- reads ---------------------------------------------------------------------------------------
    def count(self) -> int:
        return self.query("SELECT COUNT(*) FROM chunks")[0][0]

    def is_empty(self) -> bool:
        """Whether no chunk is held (what a search asks first: unlike ``count``, no scan of the table)."""
        return not self.query("SELECT EXISTS (SELECT 1 FROM chunks)")[0][0]

    def rows(self, columns: str, ids: Sequence[Any] | None = None, *, key: str = "id", table: str = "chunks") -> list[tuple]:
        """``columns`` of every row of ``table``, or of those whose ``key`` is one of ``ids``."""
        if ids is None:
            return self.query(f"SELECT {columns} FROM {table}")
        found: list[tuple] = []
        with self._lock:
            for part in batches(list(ids), _IDS_PER_STATEMENT):
                marks = ",".join("?" * len(part))
                found += self._connection.execute(f"SELECT {columns} FROM {table} WHERE {key} IN ({marks})", part).fetchall()
        return found

    def ids(self, where: Filter | None = None) -> set[str]:
        """Every chunk id, or those whose metadata match ``where`` (:func:`~rag_pipeline.metadata.matches`)."""
        if not where:
            return {row[0] for row in self.rows("id")}
        return {i for i, metadata in self.rows("id, metadata") if matches(read_stored_metadata(metadata), where)}

    def existing(self, ids: Sequence[str]) -> set[str]:
        return {row[0] for row in self.rows("id", list(dict.fromkeys(ids)))}

    def documents(self, ids: Sequence[str], with_text: bool = True) -> dict[str, Document]:
        """The stored chunks of ``ids`` by id (an id not held is left out)."""
        rows = self.rows(f"id, {'text' if with_text else 'NULL'}, metadata", list(dict.fromkeys(ids)))
        return {i: Document(page_content=text or "", metadata=read_stored_metadata(metadata), id=i) for i, text, metadata in rows}

    def snapshot(self, columns: str, table: str = "chunks") -> tuple[int, list[tuple]]:
        """The version and ``columns`` of every row of ``table`` (by id), read in one transaction:
        what an index derives its structures from."""
        with self._lock, self._connection as c:
            c.execute("BEGIN")
            version = int(c.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            rows = c.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()
        return version, rows

    # -- writes ----------------------------------------------------------------------------------------
    @staticmethod
    def chunk_row(chunk: Document) -> tuple[str, str, str]:
        """A chunk as the ``chunks`` table holds it: id, text, metadata in the stored form."""
        return (chunk.id, chunk.page_content, stored_metadata_json(chunk.metadata))

    def upsert(self, chunks: Sequence[Document], **per_chunk_rows: Sequence[tuple]) -> None:
        """Write ``chunks`` (replacing those of the same id) and, in the same transaction, the rows
        of each per-chunk table named (``m3=[(id, ...), ...]``)."""
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO chunks (id, text, metadata) VALUES (?, ?, ?)", [self.chunk_row(x) for x in chunks])
            for table, rows in per_chunk_rows.items():
                if table not in self.PER_CHUNK_TABLES:
                    raise ValueError(f"no per-chunk table {table!r}")
                if rows:
                    c.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)

    def delete(self, ids: Sequence[str]) -> None:
        with self.transaction() as c:
            for table in ("chunks", *self.PER_CHUNK_TABLES):
                c.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in ids])

    def clear(self) -> None:
        with self.transaction() as c:
            for table in ("chunks", *self.PER_CHUNK_TABLES):
                c.execute(f"DELETE FROM {table}")


class GenerationsBase:
    """One physical collection served at a time (``vectorstore.collection`` is served by ``name``,
    ``name.v2``, ... after each ``reindex``), and how the index follows another process's commits.

    ``resolve_collection`` names the collection that serves now (the index record's active one);
    ``change_token`` returns something that changes whenever another process may have committed
    (the record's stat). Both are set by the index that owns this one; without them the index
    serves its own collection and never looks for others' writes. A read that finds the token
    changed calls :meth:`_reopen` (drop views of storage another process changed) and serves the
    collection ``resolve_collection`` names.

    A subclass says what it serves by default (:meth:`_default_collection`), what to forget when
    the served collection changes (:meth:`_served_changed`) and what a write session does at its
    ends (:meth:`_session_starts`, :meth:`_session_ends`); it searches the served collection in
    :meth:`_search_collection`.
    """

    def __init__(self, collection_name: str | None = None):
        self._collection_name = collection_name
        self.resolve_collection: Callable[[], str] | None = None
        self.change_token: Callable[[], Any] | None = None
        self._token: Any = None  # change_token() when this index last caught up with the storage
        self._writing = 0  # open write sessions (nested ones count)
        self._writes = 0  # this index's own changes, which move no token (content_version)

    # -- the served collection -------------------------------------------------------------------
    @property
    def collection_name(self) -> str:
        """The physical collection served."""
        if self._collection_name is None:
            self._collection_name = self.resolve_collection() if self.resolve_collection is not None else self._default_collection()
        return self._collection_name

    def _default_collection(self) -> str:
        raise RuntimeError(f"{type(self).__name__} serves no collection yet: the index that owns it places it")

    def use_collection(self, name: str) -> None:
        """Serve another physical collection from now on (a reindex switched to it)."""
        if name != self._collection_name:
            self._collection_name = name
            self._served_changed()

    def _served_changed(self) -> None:
        """What was opened or derived of the served collection no longer holds: another collection
        is served, or the served one was dropped or reopened. ``content_version`` moves; a subclass
        also drops its handles and derived structures."""
        self._writes += 1

    # -- following other processes -------------------------------------------------------------------
    def _sees_other_processes(self) -> bool:
        """Whether another process's commits can reach this index's storage (an in-memory one's cannot)."""
        return True

    def _reopen(self) -> None:
        """Another process committed: drop any view of the storage that would miss its writes."""

    def refresh_if_changed(self) -> bool:
        """Catch up with another process's commit (see the class docstring); returns whether one
        was seen. Never inside a write session: the writer's own view is the current one."""
        if self.change_token is None or self._writing or not self._sees_other_processes():
            return False
        token = self.change_token()
        if token == self._token:
            return False
        self._token = token
        self._reopen()
        if self.resolve_collection is not None:
            self.use_collection(self.resolve_collection())
        return True

    # -- write sessions ------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held around a write session (under the write lock): it starts from what other processes
        committed before the lock was ours, no refresh happens mid-write, and what this process
        commits does not count as another process's change. (No model check here: a session is
        also how reindex switches the served collection, built with the old model, to the new
        one; every write checks.)"""
        self.refresh_if_changed()
        self._writing += 1
        completed = False
        try:
            self._session_starts()
            yield
            completed = True
        finally:
            self._writing -= 1
            if not self._writing:
                self._session_ends(completed)
            if self.change_token is not None:
                self._token = self.change_token()

    def _session_starts(self) -> None:
        """Called as each write session opens."""

    def _session_ends(self, completed: bool) -> None:
        """Called when the outermost write session closes (``completed``: without an exception)."""

    # -- search --------------------------------------------------------------------------------------
    def _search(self, queries: Sequence[Any], k: int, where: Filter | None, with_text: bool) -> list[list[Document]]:
        """What every search does before the index's own: ``k`` must be positive, no queries get no
        answers, and the active collection is followed; then :meth:`_search_collection` answers
        each query, best first, ``metadata['score']`` set."""
        if k <= 0:
            raise ConfigError(f"retriever.k must be positive, got {k}")
        if len(queries) == 0:
            return []
        self.refresh_if_changed()
        return self._search_collection(queries, k, where, with_text)

    def _search_collection(self, queries: Sequence[Any], k: int, where: Filter | None, with_text: bool) -> list[list[Document]]:
        raise NotImplementedError


class TableIndex(GenerationsBase):
    """An index whose truth is one :class:`ChunkTable` per physical collection, under ``root``
    (``<root>/<collection>/chunks.sqlite``; in memory when ``root`` is None). A subclass names its
    table type, searches one table (:meth:`_search_table`) and keeps whatever it derives from the
    table in step (:meth:`_delete_rows` and its own writes)."""

    table_type: type[ChunkTable] = ChunkTable

    def __init__(self, root: Path | None = None, collection_name: str | None = None):
        super().__init__(collection_name)
        self.root = root
        # one table object per collection, shared by every view of the same storage (for_collection)
        self._tables: dict[str, ChunkTable] = {}

    # -- where ---------------------------------------------------------------------------------------
    def folder(self, name: str | None = None) -> Path | None:
        return self.root / (name or self.collection_name) if self.root is not None else None

    def _table(self, create: bool = False, name: str | None = None) -> ChunkTable | None:
        """The table of ``name`` (default: the served collection); None when it was never written
        and ``create`` is not asked (a reader creates nothing)."""
        name = name or self.collection_name
        table = self._tables.get(name)
        if table is None:
            folder = self.folder(name)
            if not create and (folder is None or not (folder / CHUNKS_FILENAME).is_file()):
                return None
            table = self._tables[name] = self.table_type(folder / CHUNKS_FILENAME if folder is not None else None)
        return table

    def collection_names(self) -> set[str]:
        """Every physical collection the storage holds (generations included)."""
        if self.root is None:
            return set(self._tables)
        if not self.root.is_dir():
            return set()
        return {p.parent.name for p in self.root.glob(f"*/{CHUNKS_FILENAME}")}

    def exists_named(self, name: str) -> bool:
        return name in self.collection_names()

    def exists(self) -> bool:
        return self.exists_named(self.collection_name)

    def drop_collection(self, name: str) -> None:
        """Remove a physical collection (a retired or half-built generation); nothing when it is gone."""
        self._writes += 1  # a table made again later starts its version again
        table = self._tables.pop(name, None)
        if table is not None:
            table.close()
        folder = self.folder(name)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if name == self._collection_name:
            self._served_changed()

    def check(self) -> None:
        """Refuse a collection this index cannot serve as configured (nothing to check here)."""

    # -- reads ---------------------------------------------------------------------------------------
    def count(self) -> int:
        table = self._table()
        return table.count() if table is not None else 0

    def ids(self, where: Filter | None = None) -> set[str]:
        self.refresh_if_changed()
        table = self._table()
        return table.ids(where) if table is not None else set()

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        table = self._table()
        return table.existing(ids) if table is not None else set()

    def documents(self, ids: Sequence[str]) -> list[Document]:
        """The stored chunks (text and metadata), in ``ids`` order."""
        table = self._table()
        found = table.documents(ids) if table is not None else {}
        return [found[i] for i in ids]

    def content_version(self) -> Any:
        """Something that changes whenever the served collection's chunks may have changed, cheap
        to ask before every query (what exact search compares to know its copy is current): the
        collection served, this index's own changes, and the table's version, which every write
        bumps in one transaction with it and every process reads as it is now."""
        self.refresh_if_changed()
        table = self._table()
        return (self.collection_name, self._writes, table.version() if table is not None else None)

    # -- writes ----------------------------------------------------------------------------------------
    def delete(self, ids: Sequence[str]) -> None:
        table = self._table()
        if table is None or not ids:
            return
        self._delete_rows(table, list(ids))
        self._writes += 1

    def _delete_rows(self, table: ChunkTable, ids: list[str]) -> None:
        table.delete(ids)

    def clear(self) -> None:
        """Remove every chunk of the served collection."""
        table = self._table()
        if table is not None:
            table.clear()
            self._writes += 1

    # -- search --------------------------------------------------------------------------------------
    def _search_collection(self, queries: Sequence[Any], k: int, where: Filter | None, with_text: bool) -> list[list[Document]]:
        self.check()
        table = self._table()
        if table is None or table.is_empty():
            return [[] for _ in queries]
        return self._search_table(table, queries, k, where, with_text)

    def _search_table(
        self, table: ChunkTable, queries: Sequence[Any], k: int, where: Filter | None, with_text: bool
    ) -> list[list[Document]]:
        """The index's own search of a table that holds chunks."""
        raise NotImplementedError
