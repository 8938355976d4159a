"""First-stage arms: each turns a batch of queries into ranked chunk lists from one index.

:class:`DenseArm` searches a ``VectorIndex`` by embedding; :class:`LexicalArm` a ``LexicalIndex``
(BM25) by the query's words. Both have the same shape (``encode``, ``search_batch``, ``size``), so
the path, fusion and evaluation treat them alike.

An arm is exact or approximate. ``ann`` asks the index's own search (Chroma's HNSW graph), as
serving does. ``exact`` scores every chunk that passes the filter with the index's own similarity
(reading the vectors back once), as BEIR and MTEB do: two HNSW builds of the same SciFact vectors
gave nDCG@10 64.51 and 64.17, so an approximate index puts build-to-build noise into every A/B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from langchain_core.documents import Document

from ..contracts import Embedder, Filter, LexicalIndex, VectorIndex, with_score

SearchMode = Literal["ann", "exact"]


@dataclass
class _Snapshot:
    """The filtered collection as exact search reads it: ids, vectors and documents, read once."""

    ids: list[str]
    vectors: np.ndarray
    documents: dict[str, Document]


@dataclass
class DenseArm:
    """Nearest chunks by embedding: the query instruction is applied by the embedder."""

    embedder: Embedder
    index: VectorIndex
    where: Filter | None = None
    search: SearchMode = "ann"
    name: str = "dense"
    _snapshot: _Snapshot | None = field(default=None, init=False, repr=False)

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder.embed_queries(list(queries)), dtype=np.float32)

    def search_batch(
        self, queries: Sequence[str], k: int, *, encoded: Any = None, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-``k`` chunks per query, best first, ``metadata['score']`` = similarity."""
        vectors = self.encode(queries) if encoded is None else encoded
        if self.search == "exact":
            return self._exact(vectors, k)
        return self.index.search_batch(vectors, k, self.where, with_text=with_text)

    def size(self) -> int:
        """How many chunks this arm can return at most (the filtered collection)."""
        if self.search == "exact":
            return len(self._corpus().ids)
        return len(self.index.ids(self.where)) if self.where else self.index.count()

    def _corpus(self) -> _Snapshot:
        if self._snapshot is None:
            ids = sorted(self.index.ids(self.where))
            documents = {d.id: d for d in self.index.documents(ids)}
            self._snapshot = _Snapshot(ids, self.index.vectors(ids), documents)
        return self._snapshot

    def _exact(self, queries: np.ndarray, k: int, block: int = 64) -> list[list[Document]]:
        corpus = self._corpus()
        n = len(corpus.ids)
        if n == 0:  # a filter that matches no chunk (or an empty index): nothing to score
            return [[] for _ in queries]
        keep = min(k, n)
        results: list[list[Document]] = []
        for start in range(0, len(queries), block):
            scores = self.index.similarity(queries[start : start + block], corpus.vectors)
            for row in scores:
                top = np.argpartition(-row, keep - 1)[:keep] if keep < n else np.arange(n)
                # best first; ties by id, descending, as trec_eval breaks them
                order = sorted(top, key=lambda j: (float(row[j]), corpus.ids[j]), reverse=True)
                results.append([with_score(corpus.documents[corpus.ids[j]], float(row[j])) for j in order])
        return results


@dataclass
class LexicalArm:
    """Chunks by the words they share with the query (BM25): always exact, nothing to encode."""

    index: LexicalIndex
    where: Filter | None = None
    name: str = "bm25"

    def encode(self, queries: Sequence[str]) -> None:
        return None  # the index tokenizes the query text itself

    def search_batch(
        self, queries: Sequence[str], k: int, *, encoded: Any = None, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-``k`` chunks per query, best first, ``metadata['score']`` = BM25 score (> 0)."""
        return self.index.search_batch_text(queries, k, self.where, with_text=with_text)

    def size(self) -> int:
        """How many chunks this arm can return at most (the filtered collection)."""
        return len(self.index.ids(self.where)) if self.where else self.index.count()
