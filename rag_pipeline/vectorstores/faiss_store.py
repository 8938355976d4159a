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

import logging
import os
import re
from typing import Literal, Sequence

import numpy as np
from langchain_core.documents import Document
from pydantic import Field

from ..contracts import Filter
from ..errors import ConfigError, first_line
from ..metadata import read_stored_metadata
from ..registry import register
from ..stage_config import ConfigPath, StageConfig
from .scores import normalized
from .shared import TableVectorStore, VectorTable

logger = logging.getLogger(__name__)

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


class FaissStore(TableVectorStore):
    """A FAISS index derived from its chunk table (a ``VectorIndex``); see the module docstring.
    The table, the collections, the guard and the reads by id are :class:`TableVectorStore`'s;
    this class keeps the FAISS index in step with the table and searches it."""

    def __init__(self, config: FaissStoreConfig, embeddings, collection_name: str | None = None):
        self.faiss = _import_faiss()
        super().__init__(config, embeddings, collection_name)
        self._index = None  # the served collection's FAISS index, in step with _index_version
        self._index_version = -1
        self._exact = False  # the index is a flat stand-in until there are enough vectors to train on
        self._trained_on = 0  # how many vectors the collection held when the index was trained

    def _served_changed(self) -> None:
        super()._served_changed()
        self._index, self._index_version = None, -1

    # -- the FAISS index -------------------------------------------------------------------------------
    def _metric(self) -> int:
        return self.faiss.METRIC_L2 if self.config.distance == "l2" else self.faiss.METRIC_INNER_PRODUCT

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return normalized(vectors) if self.config.distance == "cosine" else vectors

    def _new_index(self, dimension: int, table: VectorTable):
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

    def _rebuild(self, table: VectorTable) -> None:
        version = table.version()
        index = None
        for faiss_ids, vectors in table.vector_pages():
            if index is None:
                index = self._new_index(vectors.shape[1], table)
            index.add_with_ids(self._prepare(vectors), faiss_ids)
        self._index, self._index_version = index, version

    def _load_saved(self, table: VectorTable) -> bool:
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

    def _current_index(self, table: VectorTable, for_writing: bool = False):
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

    def _saved_is_newer(self, table: VectorTable) -> bool:
        return int(table.meta("index_version") or -1) > self._index_version

    def _save(self, table: VectorTable) -> None:
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

    # -- keeping the index in step with the table ---------------------------------------------------
    def _session_ends(self, completed: bool) -> None:
        """When a write session ends (however it ends), the index is trained (if it can be now),
        compacted (if many chunks were removed) and saved."""
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

    def _store_vectors(self, table: VectorTable, chunks: Sequence[Document], vectors: np.ndarray) -> None:
        index = self._current_index(table, for_writing=True) if table.count() else None
        replaced, new_ids = table.upsert_vectors(chunks, vectors)
        if index is None:
            self._rebuild(table)
            return
        self._remove_from_index(index, replaced)
        index.add_with_ids(self._prepare(vectors), new_ids)
        self._index_version = table.version()

    def _delete_rows(self, table: VectorTable, ids: list[str]) -> None:  # type: ignore[override]
        index = self._current_index(table, for_writing=True)
        removed = table.delete(ids)
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

    # -- search ------------------------------------------------------------------------------------------
    def _score(self, raw: np.ndarray) -> np.ndarray:
        # FAISS's L2 metric gives squared distances; the others are already the similarity.
        return 1.0 - raw / 2.0 if self.config.distance == "l2" else raw

    def _search_table(
        self, table: VectorTable, queries: np.ndarray, k: int, where: Filter | None, with_text: bool
    ) -> list[list[Document]]:
        if where:
            allowed = table.ids(where)
            if len(allowed) <= EXACT_FILTER_LIMIT:
                return self._exact_search(table, queries, k, sorted(allowed), with_text)
        index = self._current_index(table)
        dead = max(index.ntotal - table.count(), 0)  # removed (HNSW) or stale (another process's session)
        params = None
        if where:
            faiss_ids = np.asarray(sorted(table.numbers(sorted(allowed)).values()), dtype=np.int64)
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
        results = []
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
            results.append(hits)
        return results

    def _exact_scores(self, table: VectorTable, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
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

    def _exact_search(self, table: VectorTable, queries: np.ndarray, k: int, ids: list[str], with_text: bool) -> list[list[Document]]:
        if not ids:
            return [[] for _ in queries]
        scores = self.similarity(queries, table.vectors(ids))
        documents = table.documents(ids)
        results = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            results.append([
                Document(
                    page_content=documents[ids[j]].page_content if with_text else "",
                    metadata={**documents[ids[j]].metadata, "score": float(row[j])}, id=ids[j],
                )
                for j in top
            ])
        return results
