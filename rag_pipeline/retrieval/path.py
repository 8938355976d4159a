"""The retrieval path: first-stage arms, fusion, then the reranker once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from langchain_core.documents import Document

from ..contracts import Reranker
from .first_stage import DenseArm, LexicalArm
from .fusion import FusionFunction, fuse_single


def encoded_part(encoded: list[Any], rows: Sequence[int]) -> list[Any]:
    """The rows ``rows`` of each arm's encoded queries (None for an arm that encodes nothing)."""
    return [vectors[list(rows)] if vectors is not None else None for vectors in encoded]


def document_key(document: Document) -> str:
    """What a result list counts as one item: a source document (its chunks share it)."""
    return str(document.metadata.get("doc_id", document.id))


@dataclass
class RetrievalPath:
    """``retrieve(queries, k)``: the ``k`` best chunks per query, reranked when a reranker is set.

    With a reranker, ``fetch_k`` fused candidates go to the cross-encoder and its best ``k`` come
    out, each with ``metadata['rerank_score']`` beside the first stage's ``score``.

    ``depths``: with several arms, how deep each arm is searched before fusion (at least the ``k``
    asked for): a document the other arm ranks first may sit deep in this one's list, and fusion
    can only credit what it sees. One arm is searched exactly ``k`` deep.
    """

    arms: list[DenseArm | LexicalArm]
    fuse: FusionFunction = fuse_single
    reranker: Reranker | None = None
    fetch_k: int = 20
    depths: list[int] | None = None

    def arm_path(self, index: int) -> "RetrievalPath":
        """The path through one arm alone (no fusion, no reranker): what evaluation reports per arm."""
        return RetrievalPath(arms=[self.arms[index]], fetch_k=self.fetch_k)

    def filtered(self, where: Any) -> "RetrievalPath":
        """The same path with every arm searching under ``where`` instead of its configured filter
        (``{}``: no filter). The arms share their embedder, indexes and reranker with this path,
        so nothing is loaded again."""
        return replace(self, arms=[replace(arm, where=where or None) for arm in self.arms])

    def encode(self, queries: Sequence[str]) -> list[Any]:
        """The queries as each arm searches with them (embedded once, reusable across calls)."""
        return [arm.encode(queries) for arm in self.arms]

    def first_stage(
        self, queries: Sequence[str], k: int, *, encoded: list[Any] | None = None, with_text: bool = True
    ) -> list[list[Document]]:
        """The fused top ``k`` chunks per query, before reranking."""
        encoded = encoded if encoded is not None else [None] * len(self.arms)
        depths = self.depths if self.depths is not None and len(self.arms) > 1 else [k] * len(self.arms)
        per_arm = [
            arm.search_batch(queries, max(k, depth), encoded=vectors, with_text=with_text)
            for arm, vectors, depth in zip(self.arms, encoded, depths)
        ]
        return [self.fuse([lists[i] for lists in per_arm], k) for i in range(len(queries))]

    def covering(
        self,
        queries: Sequence[str],
        depth: int,
        *,
        encoded: list[Any] | None = None,
        with_text: bool = True,
        key: Callable[[Document], str] = document_key,
    ) -> list[list[Document]]:
        """Enough first-stage chunks per query that they cover ``depth`` distinct documents (or
        the whole index): evaluation scores documents, and one document can have many chunks.
        A query short of documents is asked again with twice as many chunks."""
        encoded = encoded if encoded is not None else self.encode(queries)
        size = max(arm.size() for arm in self.arms)
        if size == 0:
            return [[] for _ in queries]
        n = min(size, depth)
        results: list[list[Document]] = [[] for _ in queries]
        pending = list(range(len(queries)))
        while pending:
            part_encoded = encoded_part(encoded, pending)
            found = self.first_stage([queries[i] for i in pending], n, encoded=part_encoded, with_text=with_text)
            short = []
            for index, documents in zip(pending, found):
                results[index] = documents
                if len({key(d) for d in documents}) < depth and n < size:
                    short.append(index)
            pending, n = short, min(size, n * 2)
        return results

    def rerank(self, query: str, candidates: Sequence[Document], top_n: int | None) -> list[Document]:
        """The candidates by the cross-encoder's score, best first, cut to ``top_n``."""
        if self.reranker is None:
            return list(candidates[:top_n] if top_n is not None else candidates)
        ranked = self.reranker.rank(query, candidates)
        return ranked[:top_n] if top_n is not None else ranked

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[Document]]:
        depth = k if self.reranker is None else max(self.fetch_k, k)
        if len(self.arms) == 1:
            candidates = self.first_stage(queries, depth)
        else:
            # Each arm is searched deep and fusion keeps few of its hits: the arms hand over scores
            # and metadata only, and the texts of what fusion kept are read once, by id.
            candidates = self.with_texts(self.first_stage(queries, depth, with_text=False))
        if self.reranker is None:
            return candidates
        return [self.rerank(query, found, k) for query, found in zip(queries, candidates)]

    def with_texts(self, results: list[list[Document]]) -> list[list[Document]]:
        """``results`` with each chunk's stored text read back: from a lexical arm's index when
        there is one (its chunk table, read by key), else from the vector index. A chunk that no
        index holds any more (removed by another process since the search) is dropped."""
        wanted = list(dict.fromkeys(d.id for row in results for d in row))
        texts: dict[str, str] = {}
        for arm in sorted(self.arms, key=lambda arm: not isinstance(arm, LexicalArm)):
            missing = [i for i in wanted if i not in texts]
            if not missing:
                break
            texts.update(_stored_texts(arm.index, missing))
        return [
            [Document(page_content=texts[d.id], metadata=d.metadata, id=d.id) for d in row if d.id in texts]
            for row in results
        ]


def _stored_texts(index: Any, ids: list[str]) -> dict[str, str]:
    """The texts ``index`` holds of ``ids`` (one read; an id it lacks, one by one, left out)."""
    try:
        return {d.id: d.page_content for d in index.documents(ids)}
    except KeyError:
        texts = {}
        for chunk_id in ids:
            try:
                texts.update((d.id, d.page_content) for d in index.documents([chunk_id]))
            except KeyError:
                pass
        return texts
