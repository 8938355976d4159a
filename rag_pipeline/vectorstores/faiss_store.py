"""``vectorstore.type: faiss`` — a FAISS index (any ``index_factory`` string) beside a SQLite table
of the chunks it holds, for collections past what Chroma's in-RAM HNSW graph serves well.

One folder per physical collection, ``<persist_directory>/<collection>/``:

    chunks.sqlite   id, text, metadata and float32 vector of every chunk, each with the int64 id
                    FAISS knows it by (never reused), plus the embedding fingerprint and a version
                    that every write bumps
    index.faiss     the ANN index over those vectors (an ``IndexIDMap2``), saved when a write
                    session ends, with the version it reflects

The table is the truth and the FAISS index is derived from it: a write commits to the table first,
so a killed ingest leaves a table that the next writer rebuilds the index from, and changing
``index_factory`` rebuilds the index without re-embedding anything. An index that needs training
(IVF, PQ) is trained on a random sample of the stored vectors (``train_size``); until a collection
holds enough vectors to train on, it is searched exactly. Deletes go through the id map; an index
that cannot delete in place (HNSW) skips the removed ids at query time and is rebuilt when more
than a tenth of it is dead.

Readers in other processes search the saved index and skip ids the table no longer holds; chunks
a writer adds appear to them when its session ends (as with an embedded Chroma folder).
``faiss-cpu`` is an optional extra (``pip install -e ".[faiss]"``), imported only when this store
is built.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
from langchain_core.documents import Document
from pydantic import Field

from ..errors import ConfigError, IndexMismatchError, first_line
from ..metadata import matches, read_stored_metadata, stored_metadata_json
from ..registry import register
from ..stage_config import ConfigPath, StageConfig
from .shared import batches, fingerprint_mismatch, fingerprint_text
from .scores import normalized, similarity

logger = logging.getLogger(__name__)

CHUNKS_FILENAME = "chunks.sqlite"
INDEX_FILENAME = "index.faiss"
DEAD_FRACTION_REBUILD = 0.1
RETRAIN_GROWTH = 10  # retrain an IVF/PQ index once the collection is this many times what it was trained on
EXACT_FILTER_LIMIT = 50_000  # a filter matching at most this many chunks is searched exactly


def build_faiss_store(config: "FaissStoreConfig", embeddings) -> "FaissStore":
    return FaissStore(config, embeddings)


@register("vectorstore", "faiss", build_faiss_store)
class FaissStoreConfig(StageConfig):
    """A FAISS index in a local folder (or in memory when ``persist_directory`` is null)."""

    type: Literal["faiss"] = "faiss"
    persist_directory: ConfigPath | None = None
    collection: str = Field("rag_pipeline", min_length=3, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]$")
    distance: Literal["cosine", "ip", "l2"] = "cosine"
    index_factory: str = Field(
        "Flat", min_length=1, description="A FAISS index_factory string: Flat, HNSW32, IVF1024,Flat, IVF1024,PQ48, ..."
    )
    nprobe: int | None = Field(None, gt=0, description="IVF lists searched per query (FAISS's default: 1).")
    ef_search: int | None = Field(None, gt=0, description="HNSW candidates kept per query (FAISS's default: 16).")
    train_size: int = Field(100_000, gt=0, description="Stored vectors sampled to train an IVF/PQ index.")
    refine_factor: int = Field(
        1, ge=1, description="Fetch k x this many candidates and re-score them with the exact stored vectors "
        "(recovers what PQ compression loses; 1 = off).",
    )
    write_batch_size: int = Field(256, gt=0, description="Chunks embedded and written per step.")


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "vectorstore.type: faiss needs the faiss-cpu package; install it with `pip install -e \".[faiss]\"`"
        ) from None
    return faiss


class _ChunkTable:
    """The chunks of one collection (SQLite; ``:memory:`` for an in-memory store)."""

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
            # AUTOINCREMENT: a replaced chunk gets a new FAISS id, never one a stale index still holds.
            c.execute(
                "CREATE TABLE IF NOT EXISTS chunks (faiss_id INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,"
                " text TEXT NOT NULL, metadata TEXT NOT NULL, vector BLOB NOT NULL)"
            )
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")

    def close(self) -> None:
        self._connection.close()

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._connection as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def version(self) -> int:
        return int(self.meta("version") or 0)

    def count(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def faiss_ids(self, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._lock:
            for part in batches(list(ids), 500):
                marks = ",".join("?" * len(part))
                found.update(self._connection.execute(f"SELECT id, faiss_id FROM chunks WHERE id IN ({marks})", part))
        return found

    def upsert(self, rows: list[tuple[str, str, str, bytes]]) -> tuple[list[int], np.ndarray]:
        """Write the rows in one transaction; returns the FAISS ids they replaced and their new ones."""
        with self._lock, self._connection as c:
            replaced = list(self.faiss_ids([r[0] for r in rows]).values())
            new_ids = []
            for row in rows:
                c.execute("DELETE FROM chunks WHERE id = ?", (row[0],))
                new_ids.append(c.execute("INSERT INTO chunks (id, text, metadata, vector) VALUES (?, ?, ?, ?)", row).lastrowid)
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        return replaced, np.asarray(new_ids, dtype=np.int64)

    def delete(self, ids: Sequence[str]) -> list[int]:
        with self._lock, self._connection as c:
            removed = list(self.faiss_ids(ids).values())
            c.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in ids])
            c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        return removed

    def rows(self, columns: str, where_ids: Sequence[Any] | None = None, key: str = "id") -> list[tuple]:
        with self._lock:
            if where_ids is None:
                return self._connection.execute(f"SELECT {columns} FROM chunks ORDER BY faiss_id").fetchall()
            found = []
            for part in batches(list(where_ids), 500):
                marks = ",".join("?" * len(part))
                found += self._connection.execute(f"SELECT {columns} FROM chunks WHERE {key} IN ({marks})", part).fetchall()
            return found

    def vector_pages(self, page: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(faiss ids, vectors) of every chunk, a page at a time (a large index never sits in RAM twice)."""
        last = -1
        while True:
            with self._lock:
                rows = self._connection.execute(
                    "SELECT faiss_id, vector FROM chunks WHERE faiss_id > ? ORDER BY faiss_id LIMIT ?", (last, page)
                ).fetchall()
            if not rows:
                return
            yield np.asarray([r[0] for r in rows], dtype=np.int64), np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            last = rows[-1][0]

    def sample_vectors(self, size: int, seed: int = 0) -> np.ndarray:
        with self._lock:
            (total,) = self._connection.execute("SELECT COUNT(*) FROM chunks").fetchone()
            ids = [r[0] for r in self._connection.execute("SELECT faiss_id FROM chunks").fetchall()]
        chosen = np.random.default_rng(seed).choice(ids, size=min(size, total), replace=False) if total else []
        rows = self.rows("vector", [int(i) for i in chosen], key="faiss_id")
        return np.vstack([np.frombuffer(r[0], dtype=np.float32) for r in rows])


class FaissStore:
    """A FAISS index plus its chunk table (a ``VectorIndex``); see the module docstring.

    ``collection_name``, ``resolve_collection`` and ``change_token`` mean what they mean for
    :class:`~rag_pipeline.vectorstores.chroma.ChromaStore`.
    """

    def __init__(self, config: FaissStoreConfig, embeddings, collection_name: str | None = None):
        self.config = config
        self.embeddings = embeddings
        self.faiss = _import_faiss()
        self._collection_name = collection_name
        self.resolve_collection: Callable[[], str] | None = None
        self.change_token: Callable[[], Any] | None = None
        self._token: Any = None
        self._writing = 0
        self._writes = 0  # this store's own writes and collection switches (see content_version)
        self._tables: dict[str, _ChunkTable] = {}
        self._index = None  # the served collection's FAISS index, in step with _index_version
        self._index_version = -1
        self._exact = False  # the index is a flat stand-in until there are enough vectors to train on
        self._trained_on = 0  # how many vectors the collection held when the index was trained
        self._checked = False

    # -- where ---------------------------------------------------------------------------------------
    @property
    def collection_name(self) -> str:
        if self._collection_name is None:
            self._collection_name = self.resolve_collection() if self.resolve_collection else self.config.collection
        return self._collection_name

    def use_collection(self, name: str) -> None:
        if name != self._collection_name:
            self._writes += 1
            self._collection_name = name
            self._index, self._index_version, self._checked = None, -1, False

    @property
    def local_directory(self) -> Path | None:
        return self.config.persist_directory

    @property
    def location(self) -> str | None:
        return str(self.config.persist_directory) if self.config.persist_directory is not None else None

    def folder(self, name: str) -> Path | None:
        return self.config.persist_directory / name if self.config.persist_directory is not None else None

    def _table(self, create: bool = False, name: str | None = None) -> _ChunkTable | None:
        name = name or self.collection_name
        table = self._tables.get(name)
        if table is None:
            folder = self.folder(name)
            if folder is None:
                if not create:
                    return None
            elif not create and not (folder / CHUNKS_FILENAME).is_file():
                return None
            table = self._tables[name] = _ChunkTable(folder / CHUNKS_FILENAME if folder is not None else None)
        return table

    def index_exists(self) -> bool:
        return bool(self.collection_names())

    def collection_names(self) -> set[str]:
        if self.config.persist_directory is None:
            return set(self._tables)
        if not self.config.persist_directory.is_dir():
            return set()
        return {p.parent.name for p in self.config.persist_directory.glob(f"*/{CHUNKS_FILENAME}")}

    def exists(self) -> bool:
        return self.exists_named(self.collection_name)

    def exists_named(self, name: str) -> bool:
        return name in self.collection_names()

    def drop_collection(self, name: str) -> None:
        self._writes += 1  # a table made again later starts its version again
        table = self._tables.pop(name, None)
        if table is not None:
            table.close()
        folder = self.folder(name)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if name == self.collection_name:
            self._index, self._index_version, self._checked = None, -1, False

    def clear(self) -> None:
        self.drop_collection(self.collection_name)

    # -- the guard -------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a collection built with another embedding setup or distance (as Chroma does)."""
        table = self._table()
        if table is None or self._checked:
            return
        stored_text = table.meta("fingerprint")
        if stored_text is not None:
            stored = json.loads(stored_text)
            expected = self.embeddings.fingerprint(load_model=False)
            mismatch = fingerprint_mismatch(self.config.collection, stored, expected)
            if mismatch is not None:
                raise mismatch
        distance = table.meta("distance")
        if distance is not None and distance != self.config.distance:
            raise IndexMismatchError(
                f"vectorstore.distance: collection {self.config.collection!r} was built with distance {distance!r}, "
                f"the config says {self.config.distance!r}; set distance: {distance}, or run `rag-pipeline reindex "
                "CONFIG` to rebuild the index with the new distance"
            )
        self._checked = True

    def _writable_table(self) -> _ChunkTable:
        table = self._table(create=True)
        self.check()
        if table.meta("fingerprint") is None:
            table.set_meta("fingerprint", fingerprint_text(self.embeddings.fingerprint()))
            table.set_meta("distance", self.config.distance)
        return table

    # -- the FAISS index -------------------------------------------------------------------------------
    def _metric(self) -> int:
        return self.faiss.METRIC_L2 if self.config.distance == "l2" else self.faiss.METRIC_INNER_PRODUCT

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return normalized(vectors) if self.config.distance == "cosine" else vectors

    def _new_index(self, dimension: int, table: _ChunkTable):
        """An empty id-mapped index of the configured kind, trained if it needs training; a flat
        one (exact search) while the collection is too small to train on."""
        faiss = self.faiss
        try:
            inner = faiss.index_factory(dimension, self.config.index_factory, self._metric())
        except RuntimeError as exc:
            raise ConfigError(
                f"vectorstore.index_factory: FAISS cannot build {self.config.index_factory!r} for {dimension}-d vectors "
                f"({first_line(exc, 120).split('Error: ')[-1]}); see the FAISS index_factory documentation"
            ) from None
        self._exact, self._trained_on = False, 0
        if not inner.is_trained:
            count = table.count()
            if count < self._training_minimum():
                logger.info(
                    "collection %s holds %d vectors, too few to train %s on (%d); searched exactly until it holds more",
                    self.collection_name, count, self.config.index_factory, self._training_minimum(),
                )
                inner, self._exact = faiss.IndexFlat(dimension, self._metric()), True
            else:
                sample = self._prepare(table.sample_vectors(self.config.train_size))
                inner.train(sample)
                self._trained_on = count
        self._apply_search_settings(inner)
        return faiss.IndexIDMap2(inner)

    def _training_minimum(self) -> int:
        """FAISS's own advice: 39 training vectors per centroid (IVF lists; 2^bits PQ codes)."""
        factory = self.config.index_factory
        centroids = [int(n) for n in re.findall(r"IVF(\d+)", factory)]
        centroids += [2 ** int(bits or 8) for _, bits in re.findall(r"PQ(\d+)(?:x(\d+))?", factory)]
        return 39 * max(centroids, default=1)

    def _apply_search_settings(self, index) -> None:
        if self._exact:
            return  # the flat stand-in has no search settings
        space = self.faiss.ParameterSpace()
        if self.config.nprobe is not None and "IVF" in self.config.index_factory:
            space.set_index_parameter(index, "nprobe", self.config.nprobe)
        if self.config.ef_search is not None and "HNSW" in self.config.index_factory:
            space.set_index_parameter(index, "efSearch", self.config.ef_search)

    def _rebuild(self, table: _ChunkTable) -> None:
        version = table.version()
        index = None
        for faiss_ids, vectors in table.vector_pages():
            if index is None:
                index = self._new_index(vectors.shape[1], table)
            index.add_with_ids(self._prepare(vectors), faiss_ids)
        self._index, self._index_version = index, version

    def _load_saved(self, table: _ChunkTable) -> bool:
        """Serve the saved index if it was built with this index_factory (however old it is)."""
        folder = self.folder(self.collection_name)
        if folder is None or not (folder / INDEX_FILENAME).is_file():
            return False
        if table.meta("index_factory") != self.config.index_factory:
            return False
        index = self.faiss.read_index(str(folder / INDEX_FILENAME))
        self._index, self._index_version = index, int(table.meta("index_version") or -1)
        self._exact = table.meta("index_exact") == "1"
        self._trained_on = int(table.meta("index_trained_on") or 0)
        self._apply_search_settings(self.faiss.downcast_index(index.index))
        return True

    def _current_index(self, table: _ChunkTable, for_writing: bool = False):
        """The index to search or write. A writer's is in step with the table (rebuilt from it if
        need be: after a killed ingest, or a new index_factory). A reader takes the newest saved
        one and skips, at query time, chunks removed since it was saved."""
        if self._index is not None and self._index_version == table.version():
            return self._index
        if not (for_writing or self._writing):
            if self._index is not None and not self._saved_is_newer(table):
                return self._index
            if self._load_saved(table):
                return self._index
        self._rebuild(table)
        return self._index

    def _saved_is_newer(self, table: _ChunkTable) -> bool:
        return int(table.meta("index_version") or -1) > self._index_version

    def _save(self, table: _ChunkTable) -> None:
        folder = self.folder(self.collection_name)
        if folder is None or self._index is None:
            return
        partial = folder / f"{INDEX_FILENAME}.partial"
        self.faiss.write_index(self._index, str(partial))
        os.replace(partial, folder / INDEX_FILENAME)  # a reader never opens a half-written index
        table.set_meta("index_factory", self.config.index_factory)
        table.set_meta("index_exact", "1" if self._exact else "0")
        table.set_meta("index_trained_on", str(self._trained_on))
        table.set_meta("index_version", str(self._index_version))

    # -- writes ----------------------------------------------------------------------------------------
    @property
    def max_batch_size(self) -> int:
        return self.config.write_batch_size

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A write session: the index is kept in step with every write and, when the session ends,
        trained (if it can be now), compacted (if many chunks were removed) and saved."""
        self.refresh_if_changed()
        # no model check here: a write session is also how reindex switches the served collection
        # (built with the old model) to the new one; every write checks (_writable_table)
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
            if not self._writing:
                self._finish_session()
            if self.change_token is not None:
                self._token = self.change_token()

    def _finish_session(self) -> None:
        table = self._table()
        if table is None:
            return
        index = self._current_index(table, for_writing=True)
        count = table.count()
        if index is not None and (
            (self._exact and count >= self._training_minimum())
            or index.ntotal - count > DEAD_FRACTION_REBUILD * max(index.ntotal, 1)
            or (self._trained_on and count >= RETRAIN_GROWTH * self._trained_on)
        ):
            # train now that there are enough vectors, drop dead entries, or retrain on a sample of
            # a collection that outgrew the one its centroids were learnt from
            self._rebuild(table)
        self._save(table)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        table = self._table()
        return set(table.faiss_ids(ids)) if table is not None else set()

    def upsert(self, chunks: Sequence[Document], vectors: np.ndarray) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        if not chunks:
            return
        table = self._writable_table()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = self._current_index(table, for_writing=True) if table.count() else None
        rows = [
            (c.id, c.page_content, stored_metadata_json(c.metadata), v.tobytes())
            for c, v in zip(chunks, vectors)
        ]
        replaced, new_ids = table.upsert(rows)
        self._writes += 1
        if index is None:
            self._rebuild(table)
            return
        self._remove_from_index(index, replaced)
        index.add_with_ids(self._prepare(vectors), new_ids)
        self._index_version = table.version()

    def delete(self, ids: Sequence[str]) -> None:
        table = self._table()
        if table is None or not ids:
            return
        index = self._current_index(table, for_writing=True)
        removed = table.delete(list(ids))
        self._writes += 1
        if index is not None:
            self._remove_from_index(index, removed)
            self._index_version = table.version()

    def _remove_from_index(self, index, faiss_ids: list[int]) -> None:
        if not faiss_ids:
            return
        try:
            index.remove_ids(np.asarray(faiss_ids, dtype=np.int64))
        except RuntimeError:
            pass  # HNSW cannot remove: the dead ids are skipped at query time and compacted later

    # -- reads -----------------------------------------------------------------------------------------
    def refresh_if_changed(self) -> bool:
        """Serve the active collection (another process may have reindexed) and pick up the index
        another process saved; the table itself is always read as it is now."""
        if self.change_token is None or self._writing:
            return False
        token = self.change_token()
        if token == self._token:
            return False
        self._token = token
        if self.resolve_collection is not None:
            self.use_collection(self.resolve_collection())
        return True

    def count(self) -> int:
        table = self._table()
        return table.count() if table is not None else 0

    def content_version(self) -> Any:
        """Something that changes whenever the served collection's chunks may have changed (see
        :meth:`ChromaStore.content_version`): the table's version, which every write bumps in one
        transaction with it and every process reads as it is now, and the collection served."""
        self.refresh_if_changed()
        table = self._table()
        return (self.collection_name, self._writes, table.version() if table is not None else None)

    def ids(self, where: dict[str, Any] | None = None) -> set[str]:
        self.refresh_if_changed()
        table = self._table()
        if table is None:
            return set()
        if not where:
            return {r[0] for r in table.rows("id")}
        return {i for i, metadata in table.rows("id, metadata") if matches(read_stored_metadata(metadata), where)}

    def stored_fingerprint(self) -> dict[str, Any] | None:
        """The embedding fingerprint the served collection records (``rag-pipeline stats``)."""
        table = self._table()
        stored = table.meta("fingerprint") if table is not None else None
        return json.loads(stored) if stored else None

    def documents_in(self, collection: str, ids: Sequence[str]) -> list[Document]:
        """The stored chunks of another physical collection, in ``ids`` order, read without the
        model check (``reindex`` copies the texts added from code out of the collection it replaces)."""
        table = self._table(name=collection)
        found = {
            i: Document(page_content=text, metadata=read_stored_metadata(metadata), id=i)
            for i, text, metadata in (table.rows("id, text, metadata", ids) if table is not None else [])
        }
        return [found[i] for i in ids if i in found]

    def documents(self, ids: Sequence[str]) -> list[Document]:
        table = self._table()
        found = {
            i: Document(page_content=text, metadata=read_stored_metadata(metadata), id=i)
            for i, text, metadata in (table.rows("id, text, metadata", ids) if table is not None else [])
        }
        return [found[i] for i in ids]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        table = self._table()
        rows = dict(table.rows("id, vector", ids)) if table is not None else {}
        if not ids:
            return np.zeros((0, 0), dtype=np.float32)
        return np.vstack([np.frombuffer(rows[i], dtype=np.float32) for i in ids])

    def similarity(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Scores as :meth:`search_batch` reports them (:func:`rag_pipeline.vectorstores.scores.similarity`)."""
        return similarity(self.config.distance, queries, vectors)

    def _score(self, raw: np.ndarray) -> np.ndarray:
        # FAISS's L2 metric gives squared distances; the others are already the similarity.
        return 1.0 - raw / 2.0 if self.config.distance == "l2" else raw

    def search_batch(
        self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None, *, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-k chunks per query vector, ``metadata['score']`` = similarity (as Chroma reports it)."""
        if k <= 0:
            raise ConfigError(f"retriever.k must be positive, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if len(queries) == 0:
            return []
        self.refresh_if_changed()
        self.check()
        table = self._table()
        if table is None or table.count() == 0:
            return [[] for _ in queries]
        if where:
            allowed = self.ids(where)
            if len(allowed) <= EXACT_FILTER_LIMIT:
                return self._exact_search(queries, k, sorted(allowed), with_text)
        index = self._current_index(table)
        dead = max(index.ntotal - table.count(), 0)  # removed (HNSW) or stale (another process's session)
        params = None
        if where:
            faiss_ids = np.asarray(sorted(table.faiss_ids(sorted(allowed)).values()), dtype=np.int64)
            params = self.faiss.SearchParameters(sel=self.faiss.IDSelectorBatch(faiss_ids))
        fetch = min(k * self.config.refine_factor + dead, max(index.ntotal, 1))
        raw, found = index.search(self._prepare(queries), fetch, params=params)
        if self.config.refine_factor > 1:
            raw = self._exact_scores(table, queries, found)
        rows = {
            f: (i, text, metadata)
            for f, i, text, metadata in table.rows(
                f"faiss_id, id, {'text' if with_text else 'NULL'}, metadata",
                sorted({int(f) for f in found.ravel() if f >= 0}), key="faiss_id",
            )
        }
        scores = self._score(raw) if self.config.refine_factor == 1 else raw
        batches = []
        for row_ids, row_scores in zip(found, scores):
            hits = []
            order = np.argsort(-row_scores, kind="stable") if self.config.refine_factor > 1 else range(len(row_ids))
            for faiss_id, score in ((row_ids[j], row_scores[j]) for j in order):
                if faiss_id < 0 or int(faiss_id) not in rows:
                    continue  # no hit, or a chunk removed since the index was saved
                chunk_id, text, metadata = rows[int(faiss_id)]
                hits.append(Document(page_content=text or "", metadata={**read_stored_metadata(metadata), "score": float(score)}, id=chunk_id))
                if len(hits) == k:
                    break
            batches.append(hits)
        return batches

    def _exact_scores(self, table: _ChunkTable, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
        """The similarity of each candidate to its query from the stored float32 vectors (-inf for none)."""
        wanted = sorted({int(f) for f in found.ravel() if f >= 0})
        stored = {f: np.frombuffer(v, dtype=np.float32) for f, v in table.rows("faiss_id, vector", wanted, key="faiss_id")}
        scores = np.full(found.shape, -np.inf, dtype=np.float32)
        for row, (query, candidates) in enumerate(zip(queries, found)):
            present = [j for j, f in enumerate(candidates) if int(f) in stored]
            if present:
                vectors = np.vstack([stored[int(candidates[j])] for j in present])
                scores[row, present] = self.similarity(query[None, :], vectors)[0]
        return scores

    def _exact_search(self, queries: np.ndarray, k: int, ids: list[str], with_text: bool) -> list[list[Document]]:
        if not ids:
            return [[] for _ in queries]
        scores = self.similarity(queries, self.vectors(ids))
        documents = self.documents(ids)
        batches = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            batches.append([
                Document(
                    page_content=documents[j].page_content if with_text else "",
                    metadata={**documents[j].metadata, "score": float(row[j])}, id=ids[j],
                )
                for j in top
            ])
        return batches

    def search(self, query: str, k: int, where: dict[str, Any] | None = None) -> list[Document]:
        return self.search_batch(np.asarray([self.embeddings.embed_query(query)]), k, where)[0]
