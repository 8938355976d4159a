"""What the vector stores share: the embedding fingerprint in the one text form a collection
records it in, and the guards that compare it and the distance; the members every
``VectorIndex`` answers the same way (:class:`VectorStoreBase`); and a store whose chunks and
vectors live in a chunk table (:class:`VectorTable`, :class:`TableVectorStore`): a new store of
that kind writes its search and whatever it derives from the stored vectors, nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from langchain_core.documents import Document

from ..contracts import Filter
from ..errors import IndexMismatchError
from ..index_storage import ChunkTable, TableIndex
from .scores import similarity


def fingerprint_text(fingerprint: dict[str, Any]) -> str:
    # sorted keys: the same fingerprint is always the same text, so stored ones compare as text too
    return json.dumps(fingerprint, sort_keys=True, ensure_ascii=False)


def fingerprint_mismatch(collection: str, stored: dict[str, Any], expected: dict[str, Any]) -> IndexMismatchError | None:
    """The error for a collection whose recorded embedding setup differs from the configured one
    (each differing key named, both values), or None when every configured key matches."""
    differing = [key for key in sorted(expected) if stored.get(key) != expected.get(key)]
    if not differing:
        return None
    differences = ", ".join(f"{key}: index has {stored.get(key)!r}, config gives {expected.get(key)!r}" for key in differing)
    return IndexMismatchError(
        f"collection {collection!r} was built with another embedding setup ({differences}); "
        "vectors of different models cannot be mixed: run `rag-pipeline reindex CONFIG` to re-embed the "
        "corpus with the configured model (the current index serves until the new one is complete), or set vectorstore.collection to a new name"
    )


def distance_mismatch(collection: str, stored: str | None, configured: str) -> IndexMismatchError | None:
    """The error for a collection built with another distance than the configured one (its scores
    would be computed for the wrong space), or None when they agree or none was recorded."""
    if stored is None or stored == configured:
        return None
    return IndexMismatchError(
        f"vectorstore.distance: collection {collection!r} was built with distance {stored!r}, "
        f"the config says {configured!r}; set distance: {stored}, or run `rag-pipeline reindex "
        "CONFIG` to rebuild the index with the new distance"
    )


class VectorStoreBase:
    """What every vector store answers the same way from its config (``persist_directory``,
    ``collection``, ``distance``, ``write_batch_size``) and embedder: where it lives, what it
    serves by default, its scores, and the search entry points (checked by
    :meth:`~rag_pipeline.index_storage.GenerationsBase._search`). Mixed in before a
    :class:`~rag_pipeline.index_storage.GenerationsBase`."""

    config: Any
    embeddings: Any

    @property
    def local_directory(self) -> Path | None:
        """The folder that holds the index on this machine (None: in memory, or on a server)."""
        return self.config.persist_directory

    @property
    def location(self) -> str | None:
        """Where the index lives, for messages (None: in memory)."""
        folder = self.local_directory
        return str(folder) if folder is not None else None

    @property
    def max_batch_size(self) -> int:
        return self.config.write_batch_size

    def _default_collection(self) -> str:
        return self.config.collection  # the logical name, served when no owner resolves the active one

    def similarity(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Scores of every (query, vector) pair exactly as :meth:`search_batch` reports them
        (:func:`rag_pipeline.vectorstores.scores.similarity` for the configured distance)."""
        return similarity(self.config.distance, queries, vectors)

    def search_batch(
        self, queries: np.ndarray, k: int, where: Filter | None = None, *, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-k chunks per query vector, best first, ``metadata['score']`` = similarity."""
        return self._search(np.asarray(queries, dtype=np.float32), k, where, with_text)  # type: ignore[attr-defined]

    def search(self, query: str, k: int, where: Filter | None = None) -> list[Document]:
        """Top-k chunks for a query text (embedded with the query instruction)."""
        return self.search_batch(np.asarray([self.embeddings.embed_query(query)]), k, where)[0]


class VectorTable(ChunkTable):
    """A chunk table that also holds each chunk's float32 vector, and gives each row a number that
    is never reused (``AUTOINCREMENT``): an index derived from the table knows a chunk by it, and a
    replaced chunk gets a new one, never one a stale derived index still holds. (The column is
    named ``faiss_id``, as in the tables the FAISS store has always written.)"""

    CHUNK_COLUMNS = (
        "faiss_id INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,"
        " text TEXT NOT NULL, metadata TEXT NOT NULL, vector BLOB NOT NULL"
    )

    def numbers(self, ids: Sequence[str]) -> dict[str, int]:
        """The row number of each of ``ids`` held."""
        return dict(self.rows("id, faiss_id", ids))

    def upsert_vectors(self, chunks: Sequence[Document], vectors: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Write the chunks with their vectors in one transaction; returns the row numbers they
        replaced and their new ones."""
        with self.transaction() as c:
            replaced = list(self.numbers([chunk.id for chunk in chunks]).values())
            numbers = []
            for chunk, vector in zip(chunks, vectors):
                c.execute("DELETE FROM chunks WHERE id = ?", (chunk.id,))
                row = (*self.chunk_row(chunk), np.asarray(vector, dtype=np.float32).tobytes())
                numbers.append(c.execute("INSERT INTO chunks (id, text, metadata, vector) VALUES (?, ?, ?, ?)", row).lastrowid)
        return replaced, np.asarray(numbers, dtype=np.int64)

    def delete(self, ids: Sequence[str]) -> list[int]:  # type: ignore[override]
        """Delete in one transaction; returns the row numbers removed."""
        with self._lock:
            removed = list(self.numbers(ids).values())
            super().delete(ids)
        return removed

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors, in ``ids`` order (every id must be held)."""
        rows = dict(self.rows("id, vector", ids))
        return np.vstack([np.frombuffer(rows[i], dtype=np.float32) for i in ids])

    def vector_pages(self, page: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row numbers, vectors) of every chunk, a page at a time (a large index never sits in RAM twice)."""
        last = -1
        while True:
            rows = self.query("SELECT faiss_id, vector FROM chunks WHERE faiss_id > ? ORDER BY faiss_id LIMIT ?", (last, page))
            if not rows:
                return
            yield np.asarray([r[0] for r in rows], dtype=np.int64), np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            last = rows[-1][0]

    def sample_vectors(self, size: int, seed: int = 0) -> np.ndarray:
        numbers = [r[0] for r in self.query("SELECT faiss_id FROM chunks")]
        chosen = np.random.default_rng(seed).choice(numbers, size=min(size, len(numbers)), replace=False) if numbers else []
        rows = self.rows("vector", [int(i) for i in chosen], key="faiss_id")
        return np.vstack([np.frombuffer(r[0], dtype=np.float32) for r in rows])


class TableVectorStore(VectorStoreBase, TableIndex):
    """A ``VectorIndex`` whose chunks and vectors live in a :class:`VectorTable` per physical
    collection (``<persist_directory>/<collection>/chunks.sqlite``; in memory when
    ``persist_directory`` is null), with the embedding fingerprint and distance recorded in the
    table and checked as Chroma checks its own.

    A subclass writes its search of one table (``_search_table``, handed a table that holds
    chunks) and, if it derives a structure from the stored vectors (an ANN index), keeps it in step
    through ``_store_vectors``, ``_delete_rows``, ``_served_changed`` and ``_session_ends``.
    """

    table_type = VectorTable

    def __init__(self, config: Any, embeddings: Any, collection_name: str | None = None):
        self.config = config
        self.embeddings = embeddings
        super().__init__(config.persist_directory, collection_name)
        self._checked = False  # the served collection's fingerprint and distance were checked

    def _served_changed(self) -> None:
        super()._served_changed()
        self._checked = False

    def index_exists(self) -> bool:
        """Whether anything was ever written where the config points (asked without creating it)."""
        return bool(self.collection_names())

    # -- the guard -------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a collection built with another embedding setup or distance (as Chroma does)."""
        table = self._table()
        if table is None or self._checked:
            return
        stored_text = table.meta("fingerprint")
        if stored_text is not None:
            expected = self.embeddings.fingerprint(load_model=False)
            mismatch = fingerprint_mismatch(self.config.collection, json.loads(stored_text), expected)
            if mismatch is not None:
                raise mismatch
        mismatch = distance_mismatch(self.config.collection, table.meta("distance"), self.config.distance)
        if mismatch is not None:
            raise mismatch
        self._checked = True

    def _writable_table(self) -> VectorTable:
        table = self._table(create=True)
        assert table is not None
        self.check()
        if table.meta("fingerprint") is None:
            table.set_meta("fingerprint", fingerprint_text(self.embeddings.fingerprint()))
            table.set_meta("distance", self.config.distance)
        return table

    def stored_fingerprint(self) -> dict[str, Any] | None:
        """The embedding fingerprint the served collection records (``rag-pipeline stats``)."""
        table = self._table()
        stored = table.meta("fingerprint") if table is not None else None
        return json.loads(stored) if stored else None

    # -- writes ----------------------------------------------------------------------------------------
    def upsert(self, chunks: Sequence[Document], vectors: np.ndarray) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        if not chunks:
            return
        table = self._writable_table()
        self._store_vectors(table, chunks, np.ascontiguousarray(vectors, dtype=np.float32))
        self._writes += 1

    def _store_vectors(self, table: VectorTable, chunks: Sequence[Document], vectors: np.ndarray) -> None:
        table.upsert_vectors(chunks, vectors)

    def clear(self) -> None:
        """Drop the served collection (fingerprint and distance too); the next write creates it afresh."""
        self.drop_collection(self.collection_name)

    # -- reads -----------------------------------------------------------------------------------------
    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors, in ``ids`` order."""
        if not ids:
            return np.zeros((0, 0), dtype=np.float32)
        table = self._table()
        if table is None:
            raise KeyError(ids[0])
        return table.vectors(ids)

    def documents_in(self, collection: str, ids: Sequence[str]) -> list[Document]:
        """The stored chunks of another physical collection, in ``ids`` order, read without the
        model check (``reindex`` copies the texts added from code out of the collection it
        replaces); an id it does not hold is left out."""
        table = self._table(name=collection)
        found = table.documents(ids) if table is not None else {}
        return [found[i] for i in ids if i in found]
