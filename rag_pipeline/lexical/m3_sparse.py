"""``lexical.type: m3-sparse`` — BGE-M3's learned sparse weights and ColBERT vectors, per chunk.

The same storage and write protocol as the BM25 index (:mod:`.matrix_index`), so ingest keeps it
in step through the same ``LexicalSink``, chunk ids, record, reconcile and sweep: one SQLite file
per physical collection,

    <state>/lexical/<physical collection>/chunks.sqlite
      chunks   id, text, metadata                      (as for BM25)
      m3       id, token ids, weights, ColBERT vectors (float16), their dimension

written in one transaction per batch with the chunks' texts, so a kill leaves both consistent.

Search: the query's sparse weights against every chunk's (a scipy CSR matrix built in memory from
the table when its version changes; a read of the stored arrays, no model call, so it is not saved).
Score = sum over shared tokens of query weight x chunk weight, exactly FlagEmbedding's
``compute_lexical_matching_score``.

ColBERT vectors are stored rather than recomputed for the candidates at query time: recomputing
means one bge-m3 forward pass per candidate per query, orders of magnitude slower than reading the
stored vectors back and scoring them (``benchmarks/results/bge-m3-colbert.md`` has the figures).
The price is disk: tokens x dimension x 2 bytes per chunk.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Sequence

import numpy as np
import scipy.sparse
from langchain_core.documents import Document

from ..errors import ConfigError
from ..index_storage import ChunkTable
from ..registry import register
from ..stage_config import StageConfig
from .matrix_index import Built, MatrixIndex

FORMAT_VERSION = "m3-sparse-1"  # names the in-memory matrices; bump when the stored layout changes


NEEDS_M3_EMBEDDER = "lexical.type: m3-sparse holds BGE-M3's own outputs; set embeddings.type: bge-m3"


def build_m3_sparse(config: "M3SparseConfig", embeddings: Any = None) -> "M3SparseIndex":
    if embeddings is None or not hasattr(embeddings, "passage_outputs"):
        raise ConfigError(NEEDS_M3_EMBEDDER)
    return M3SparseIndex(config, embeddings)


@register("lexical", "m3-sparse", build_m3_sparse)
class M3SparseConfig(StageConfig):
    """BGE-M3's learned lexical weights (and its ColBERT vectors), computed by ``embeddings: bge-m3``."""

    type: Literal["m3-sparse"] = "m3-sparse"

    def settings_key(self) -> str:
        return hashlib.sha256(FORMAT_VERSION.encode("utf-8")).hexdigest()[:12]

    def required_types(self) -> dict[str, tuple[tuple[str, ...], str]]:
        return {"embeddings": (("bge-m3",), NEEDS_M3_EMBEDDER)}


class M3Table(ChunkTable):
    """The chunks plus their BGE-M3 outputs (``m3``), written, deleted and cleared in the same
    transactions."""

    PER_CHUNK_TABLES = {
        "m3": "id TEXT PRIMARY KEY, tokens BLOB NOT NULL, weights BLOB NOT NULL, colbert BLOB NOT NULL, dimension INTEGER NOT NULL"
    }

    def upsert_outputs(
        self, chunks: Sequence[Document], sparse: Sequence[dict[int, float]], colbert: Sequence[np.ndarray]
    ) -> None:
        rows = []
        for chunk, weights, vectors in zip(chunks, sparse, colbert):
            tokens = np.fromiter(weights.keys(), dtype=np.int32, count=len(weights))
            values = np.fromiter(weights.values(), dtype=np.float32, count=len(weights))
            vectors = np.asarray(vectors, dtype=np.float16)
            rows.append((chunk.id, tokens.tobytes(), values.tobytes(), vectors.tobytes(), int(vectors.shape[-1])))
        self.upsert(chunks, m3=rows)

    def colbert(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {
            chunk_id: np.frombuffer(blob, dtype=np.float16).reshape(-1, dimension)
            for chunk_id, blob, dimension in self.rows("id, colbert, dimension", list(dict.fromkeys(ids)), table="m3")
        }


class M3SparseIndex(MatrixIndex):
    """A ``LexicalIndex`` of BGE-M3 sparse weights (searched by query text, or by query weights),
    which also serves the chunks' ColBERT vectors for rescoring. The table, collections and write
    sessions are :class:`~.matrix_index.MatrixIndex`'s; the matrix is built in memory from the
    stored weights (a read, no model call), so it is not saved."""

    # BGE-M3's outputs of a batch are held in memory until written (ColBERT: tokens x 1024 floats
    # per chunk), so ingest writes batches of this size at most (the smallest sink's size governs).
    max_batch_size = 256  # = embeddings.bge_m3.KEEP_OUTPUTS_UP_TO (stages do not import each other)
    table_type = M3Table

    def __init__(self, config: M3SparseConfig, embeddings: Any):
        super().__init__(config)
        self.embeddings = embeddings

    def _new_view(self) -> "M3SparseIndex":
        return M3SparseIndex(self.config, self.embeddings)

    # -- writing -----------------------------------------------------------------------------------
    def upsert_texts(self, chunks: Sequence[Document]) -> None:
        # In slices: a caller may hand over a whole corpus (Pipeline.index_chunks), and a slice's
        # ColBERT vectors are held in memory until written.
        for start in range(0, len(chunks), self.max_batch_size):
            part = chunks[start : start + self.max_batch_size]
            sparse, colbert = self.embeddings.passage_outputs([c.page_content for c in part])
            self._table(create=True).upsert_outputs(part, sparse, colbert)

    # -- reading -----------------------------------------------------------------------------------
    def search_batch_text(
        self, queries: Sequence[str], k: int, where: Any = None, *, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-``k`` chunks per query by BGE-M3's lexical matching score (> 0), best first."""
        weights = self.embeddings.encode_m3(list(queries), is_query=True).sparse if queries else []
        return self.search_weights(weights, k, where, with_text=with_text)

    def search_weights(
        self, queries: Sequence[dict[int, float]], k: int, where: Any = None, *, with_text: bool = True
    ) -> list[list[Document]]:
        """As :meth:`search_batch_text`, for queries already encoded (token id -> weight)."""
        return self._search(queries, k, where, with_text)

    def _encode(self, queries: Sequence[dict[int, float]]) -> list[dict[int, float]]:
        return list(queries)

    def _scores(self, model: Any, weights: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
        return _sparse_scores(model, weights)

    def sparse_scores(self, weights: dict[int, float], ids: Sequence[str]) -> np.ndarray:
        """The lexical matching score of one query with each of ``ids`` (0 for a chunk not held)."""
        built = self._current()
        if built.model is None or not ids:
            return np.zeros(len(ids))
        position = {chunk_id: row for row, chunk_id in enumerate(built.ids)}
        rows = [position.get(i, -1) for i in ids]
        present = [r for r in rows if r >= 0]
        scores = np.zeros(len(ids))
        if present:
            values = built.model[present] @ _query_vector(weights, built.model.shape[1])
            scores[[j for j, r in enumerate(rows) if r >= 0]] = values
        return scores

    def colbert_vectors(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        """Each chunk's stored ColBERT vectors (float16, one row per token after CLS), in ``ids`` order."""
        table = self._table()
        found = table.colbert(ids) if table is not None else {}
        return [found.get(i) for i in ids]

    # -- the matrix --------------------------------------------------------------------------------
    def _build(self, table: M3Table) -> Built:  # type: ignore[override]
        version, rows = table.snapshot("id, tokens, weights", table="m3")
        key = self._key(version)
        if not rows:
            return Built(key, None, [])
        tokens = [np.frombuffer(t, dtype=np.int32) for _, t, _ in rows]
        weights = [np.frombuffer(w, dtype=np.float32) for _, _, w in rows]
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        columns = np.concatenate(tokens) if len(indptr) > 1 and indptr[-1] else np.zeros(0, dtype=np.int32)
        values = np.concatenate(weights) if indptr[-1] else np.zeros(0, dtype=np.float32)
        width = int(columns.max()) + 1 if len(columns) else 1
        matrix = scipy.sparse.csr_matrix((values, columns, indptr), shape=(len(rows), width))
        return Built(key, matrix, [chunk_id for chunk_id, _, _ in rows])


def _sparse_scores(model: Any, weights: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Every chunk's lexical matching score, and the hits: BGE-M3's weights are never negative,
    so a chunk matches when it shares a weighted token, which is when its score is above 0."""
    scores = np.asarray(model @ _query_vector(weights, model.shape[1]), dtype=np.float64)
    return scores, scores > 0


def _query_vector(weights: dict[int, float], width: int) -> np.ndarray:
    """A query's weights as a dense vector over the matrix's columns (tokens no chunk has drop out)."""
    vector = np.zeros(width, dtype=np.float32)
    for token, weight in weights.items():
        if 0 <= token < width:
            vector[token] = weight
    return vector


def colbert_scores(query: np.ndarray, passages: Sequence[np.ndarray | None]) -> np.ndarray:
    """Late interaction as BGE-M3 scores it, for one query against many passages: each query
    token's best match in the passage, averaged over the query's tokens (0 for a passage without
    vectors). One float16 -> float32 conversion and one matrix product for all passages (torch:
    numpy's float16 conversion is several times slower)."""
    import torch

    scores = np.zeros(len(passages))
    present = [j for j, vectors in enumerate(passages) if vectors is not None and len(vectors)]
    if not present or len(query) == 0:
        return scores
    lengths = [len(passages[j]) for j in present]
    stacked = torch.from_numpy(np.concatenate([passages[j] for j in present])).float()
    similarities = torch.from_numpy(np.asarray(query, dtype=np.float32)) @ stacked.T
    for j, part in zip(present, torch.split(similarities, lengths, dim=1)):
        scores[j] = float(part.max(dim=1).values.sum()) / len(query)
    return scores
