"""What the lexical indexes share: a chunk table per physical collection, and a matrix derived
from it that every search scores.

The table (:class:`~rag_pipeline.index_storage.ChunkTable`) is written under ingest's own
protocol, one SQLite transaction per batch, so a kill leaves it consistent and the record's
reconcile and sweep repair it. The matrix is derived data, keyed by the index's settings and the
table's version: rebuilt from the table when a write session that changed it ends (or, if that
session was killed, by the first reader), and, for an index that saves it, memory-mapped by the
next reader instead of rebuilt. A lexical index of this kind writes how it builds its matrix from
the table, how it encodes a query and how it scores one against the matrix; the rest is here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from langchain_core.documents import Document

from ..contracts import Filter, with_score
from ..index_storage import ChunkTable, TableIndex


@dataclass
class Built:
    """The matrix of one version of the table, and the chunk id of each of its rows."""

    key: str
    model: Any  # what the index scores queries against; None for an empty table
    ids: list[str]


class MatrixIndex(TableIndex):
    """A ``LexicalIndex`` over a chunk table and the matrix derived from it (see the module
    docstring). ``config.settings_key()`` names what decides the matrix besides the table's
    version. A subclass writes :meth:`upsert_texts`, :meth:`_build`, :meth:`_encode`,
    :meth:`_scores` and :meth:`_new_view`, and :meth:`_load`, :meth:`_save` and
    :meth:`_collect_built` if it keeps its matrix on disk."""

    max_batch_size = 100_000  # no limit of its own: the dense index's batch size governs

    def __init__(self, config: Any):
        super().__init__(root=None)  # <state>/lexical once placed; in memory until then
        self.config = config
        self._built: Built | None = None
        self._mask_cache: dict[str, np.ndarray] = {}

    # -- where ---------------------------------------------------------------------------------------
    def place(self, root: Path | None, collection: str) -> None:
        """Keep the index under ``root`` (None: in memory) and serve ``collection``."""
        self.root = Path(root) if root is not None else None
        self.use_collection(collection)

    def for_collection(self, name: str) -> "MatrixIndex":
        """Another view of this index's storage, serving ``name``: where ``reindex`` builds the new
        generation (in memory too, where the two must share their tables)."""
        other = self._new_view()
        other.root, other._tables = self.root, self._tables
        other.use_collection(name)
        return other

    def _new_view(self) -> "MatrixIndex":
        """A new index of this type and settings (its storage is set by :meth:`for_collection`)."""
        raise NotImplementedError

    def _served_changed(self) -> None:
        super()._served_changed()
        self._built = None
        self._mask_cache.clear()

    # The name these indexes' callers (tests, benchmarks) have always read their table by.
    _store = TableIndex._table

    # -- writing ---------------------------------------------------------------------------------------
    def _session_starts(self) -> None:
        self._table(create=True)  # an ingest of an empty corpus still leaves an (empty) index

    def _session_ends(self, completed: bool) -> None:
        """The matrix is rebuilt from the table (if it changed) and saved, so the next reader
        loads it instead of rebuilding."""
        if not completed:
            return  # a failed session leaves the rebuild to the next reader
        table = self._table(create=True)  # (the session may have switched collections: prepare_ingest)
        if self._built is None or self._built.key != self._key(table.version()):
            self._current()
        self._collect_built()

    def upsert_texts(self, chunks: Sequence[Document]) -> None:
        raise NotImplementedError

    # -- search --------------------------------------------------------------------------------------
    def _search_table(
        self, table: ChunkTable, queries: Sequence[Any], k: int, where: Filter | None, with_text: bool
    ) -> list[list[Document]]:
        """``_encode`` turns the queries into what ``_scores(model, encoded)`` scores against every
        chunk, as ``(scores, matched)`` with ``matched`` the chunks that are hits (None: no chunk
        is); chunks outside ``where`` are no hits."""
        built = self._current()
        if built.model is None:
            return [[] for _ in queries]
        mask = self._mask(built, table, where) if where is not None else None
        hits: list[list[tuple[str, float]]] = []
        for encoded in self._encode(queries):
            scored = self._scores(built.model, encoded)
            if scored is None:
                hits.append([])
                continue
            scores, matched = np.asarray(scored[0], dtype=np.float64), np.asarray(scored[1], dtype=bool)
            if mask is not None:
                matched = matched & mask
            hits.append(top_hits(scores, np.flatnonzero(matched), built.ids, k))
        found = table.documents([i for row in hits for i, _ in row], with_text=with_text)
        return [
            [with_score(found[i], score) for i, score in row if i in found]  # (a chunk deleted meanwhile is skipped)
            for row in hits
        ]

    def _encode(self, queries: Sequence[Any]) -> Iterable[Any]:
        raise NotImplementedError

    def _scores(self, model: Any, encoded: Any) -> tuple[np.ndarray, np.ndarray] | None:
        raise NotImplementedError

    def _mask(self, built: Built, table: ChunkTable, where: Filter) -> np.ndarray:
        cache_key = json.dumps(where, sort_keys=True, default=str)
        if cache_key not in self._mask_cache:
            keep = table.ids(where)
            self._mask_cache[cache_key] = np.fromiter((i in keep for i in built.ids), dtype=bool, count=len(built.ids))
        return self._mask_cache[cache_key]

    # -- the matrix ------------------------------------------------------------------------------------
    def _key(self, version: int) -> str:
        return f"{self.config.settings_key()}-{version}"

    def _current(self) -> Built:
        """The matrix of the table as it is now: in memory, loaded from disk, or rebuilt (and
        saved, for the next reader)."""
        table = self._table(create=True)
        key = self._key(table.version())
        if self._built is not None and self._built.key == key:
            return self._built
        folder = self.folder()
        built = self._load(folder, key) if folder is not None else None
        if built is None:
            built = self._build(table)
            if folder is not None and built.model is not None:
                self._save(built, folder)
        self._built = built
        self._mask_cache.clear()
        return built

    def _build(self, table: ChunkTable) -> Built:
        raise NotImplementedError

    def _load(self, folder: Path, key: str) -> Built | None:
        """The matrix saved under the collection's ``folder`` for ``key``, if any (none by default:
        a matrix read from the table without a model call is rebuilt in memory, not saved)."""
        return None

    def _save(self, built: Built, folder: Path) -> None:
        """Save the matrix under the collection's ``folder`` for the next reader (nothing by default)."""

    def _collect_built(self) -> None:
        """Remove saved matrices of older versions (nothing by default)."""


def top_hits(scores: np.ndarray, candidates: np.ndarray, ids: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` best scores among ``candidates`` (row numbers), negative ones included; every
    chunk tied with the k-th is considered, so the cut is the same whatever order the matrix rows
    are in. Ties are broken by id, descending, as trec_eval breaks them."""
    if len(candidates) > k:
        kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[scores[candidates] >= kth]
    order = sorted(candidates, key=lambda j: (float(scores[j]), ids[j]), reverse=True)[:k]
    return [(ids[j], float(scores[j])) for j in order]
