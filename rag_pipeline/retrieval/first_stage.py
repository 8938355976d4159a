"""First-stage arms: each turns a batch of queries into ranked chunk lists from one index.

:class:`DenseArm` searches a ``VectorIndex`` by embedding; :class:`LexicalArm` a ``LexicalIndex``
(BM25) by the query's words. Both have the same shape (``encode``, ``search_batch``, ``size``), so
the path, fusion and evaluation treat them alike.

An arm is exact or approximate. ``ann`` asks the index's own search (Chroma's HNSW graph), as
serving does. ``exact`` scores every chunk that passes the filter with the index's own similarity,
as BEIR and MTEB do: two HNSW builds of the same SciFact vectors gave nDCG@10 64.51 and 64.17, so
an approximate index puts build-to-build noise into every A/B. It reads the vectors back once and
keeps them, and reads them again when the index has changed since (a write in this process or
another, a reindex), so a long-lived retriever answers from the index as it is now.

Every arm's hits carry the chunk's stored metadata and the arm's own ``score``, nothing else: a
stored field named like a score (:data:`~rag_pipeline.metadata.SCORE_KEYS`) is dropped, since
scores come from the retrieval path alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from langchain_core.documents import Document

from ..contracts import Embedder, Filter, LexicalIndex, VectorIndex
from ..metadata import SCORE_KEYS

SearchMode = Literal["ann", "exact"]


def scored(document: Document, score: float) -> Document:
    """A hit as an arm returns it: the chunk's stored metadata less any field named like a score
    (a document may carry ``rerank_score`` or ``bm25_rank`` of its own), plus the arm's score."""
    metadata = {key: value for key, value in document.metadata.items() if key not in SCORE_KEYS}
    metadata["score"] = score
    return Document(page_content=document.page_content, metadata=metadata, id=document.id)


def rescored(hits: list[list[Document]]) -> list[list[Document]]:
    """An index's hits (``metadata['score']`` set by the index) as an arm returns them."""
    return [[scored(hit, float(hit.metadata["score"])) for hit in row] for row in hits]


@dataclass
class _Snapshot:
    """The filtered collection as exact search reads it: ids, vectors and documents, and the
    index's ``content_version`` when they were read (None: the index gives none)."""

    ids: list[str]
    vectors: np.ndarray
    documents: dict[str, Document]
    version: Any = None


# Past this depth an arm asks how many chunks its index holds and searches no deeper: an index
# cannot be asked for more results than it has room to count (a k of 10**18 overflows it).
_DEEP = 10_000


class _Arm:
    def _within_index(self, k: int) -> int:
        return k if k <= _DEEP else max(1, min(k, self.size()))


@dataclass
class DenseArm(_Arm):
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
        return rescored(self.index.search_batch(vectors, self._within_index(k), self.where, with_text=with_text))

    def size(self) -> int:
        """How many chunks this arm can return at most (the filtered collection)."""
        if self.search == "exact":
            return len(self._corpus().ids)
        return len(self.index.ids(self.where)) if self.where else self.index.count()

    def _corpus(self) -> _Snapshot:
        """The snapshot, read again when the index's ``content_version`` moved since it was read."""
        # asked before the read, so that a write landing during the read shows next time
        version = self.index.content_version()
        snapshot = self._snapshot
        if snapshot is None or snapshot.version != version:
            ids = sorted(self.index.ids(self.where))
            documents = {d.id: d for d in self.index.documents(ids)}
            snapshot = _Snapshot(ids, self.index.vectors(ids), documents, version)
            self._snapshot = snapshot  # (one assignment: a thread mid-query keeps the one it took)
        return snapshot

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
                results.append([scored(corpus.documents[corpus.ids[j]], float(row[j])) for j in order])
        return results


@dataclass
class LexicalArm(_Arm):
    """Chunks by the words they share with the query (BM25): always exact, nothing to encode."""

    index: LexicalIndex
    where: Filter | None = None
    name: str = "bm25"

    def encode(self, queries: Sequence[str]) -> None:
        return None  # the index tokenizes the query text itself

    def search_batch(
        self, queries: Sequence[str], k: int, *, encoded: Any = None, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-``k`` chunks per query, best first, ``metadata['score']`` = BM25 score (each hit
        holds a term of the query; its score may be 0 or below, see ``lexical.method``)."""
        return rescored(self.index.search_batch_text(queries, self._within_index(k), self.where, with_text=with_text))

    def size(self) -> int:
        """How many chunks this arm can return at most (the filtered collection)."""
        return len(self.index.ids(self.where)) if self.where else self.index.count()
