"""``retriever.type: bge-m3`` — BGE-M3's three outputs combined, as its authors combine them.

    dense arm (vector store)  ─┐
                               ├─ union of candidates ─> each rescored: dense, sparse, ColBERT
    sparse arm (m3-sparse)    ─┘    score = (w_d * dense + w_s * sparse + w_c * colbert) / (w_d + w_s + w_c)

Each arm is searched ``depth`` deep; every candidate then gets all three of its raw scores (not
only those of the arms that found it), so the final score is exactly what
``BGEM3FlagModel.compute_score(..., weights_for_different_modes=[w_d, w_s, w_c])`` reports as
``colbert+sparse+dense`` for that pair. The query is encoded once (one forward pass gives all
three outputs). Default weights ``[0.4, 0.2, 0.4]``, from the FlagEmbedding README. A reranker,
when configured, reranks the combined list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from langchain_core.documents import Document
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..contracts import Filter, VectorIndex
from ..embeddings.bge_m3 import BgeM3Embeddings, M3Output
from ..errors import ConfigError
from ..lexical.m3_sparse import M3SparseIndex, colbert_scores
from ..registry import register
from ..stage_config import StageConfig
from .first_stage import DenseArm, rescored
from .path import RetrievalPath
from .retriever import PipelineRetriever, _result_count


@dataclass
class SparseArm:
    """Chunks by BGE-M3's learned lexical weights (the ``m3-sparse`` index)."""

    embedder: BgeM3Embeddings
    index: M3SparseIndex
    where: Filter | None = None
    name: str = "sparse"

    def encode(self, queries: Sequence[str]) -> M3Output:
        return self.embedder.encode_m3(list(queries), is_query=True)

    def search_batch(
        self, queries: Sequence[str], k: int, *, encoded: Any = None, with_text: bool = True
    ) -> list[list[Document]]:
        outputs = self.encode(queries) if encoded is None else encoded
        return rescored(self.index.search_weights(outputs.sparse, k, self.where, with_text=with_text))

    def size(self) -> int:
        return len(self.index.ids(self.where)) if self.where else self.index.count()


class M3Weights(BaseModel):
    """The weight of each BGE-M3 score in the combined one (divided by their sum, as FlagEmbedding does)."""

    model_config = ConfigDict(extra="forbid")

    dense: float = Field(0.4, ge=0)
    sparse: float = Field(0.2, ge=0)
    colbert: float = Field(0.4, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> "M3Weights":
        if self.dense + self.sparse + self.colbert <= 0:
            raise ValueError("at least one of dense, sparse, colbert must have a positive weight")
        return self


@dataclass
class M3RetrievalPath(RetrievalPath):
    """The retrieval path whose fusion step is BGE-M3's weighted sum of its three scores."""

    store: Any = None  # VectorIndex: the dense scores of candidates the dense arm did not return
    sparse_index: Any = None  # M3SparseIndex: sparse scores and ColBERT vectors of the candidates
    weights: M3Weights = None  # type: ignore[assignment]

    def encode(self, queries: Sequence[str]) -> list[Any]:
        outputs = self.arms[1].encode(queries)  # one forward pass: the dense arm gets its part
        return [outputs.dense, outputs]

    def first_stage(
        self, queries: Sequence[str], k: int, *, encoded: list[Any] | None = None, with_text: bool = True
    ) -> list[list[Document]]:
        encoded = encoded if encoded is not None else self.encode(queries)
        outputs: M3Output = encoded[1]
        depths = self.depths or [k] * len(self.arms)
        per_arm = [
            arm.search_batch(queries, max(k, depth), encoded=vectors, with_text=with_text)
            for arm, vectors, depth in zip(self.arms, encoded, depths)
        ]
        return [
            self._combine([lists[i] for lists in per_arm], outputs[[i]], k) for i in range(len(queries))
        ]

    def _combine(self, lists: list[list[Document]], query: M3Output, k: int) -> list[Document]:
        documents: dict[str, Document] = {}
        ranks: dict[str, dict[str, int]] = {}
        for arm, ranked in zip(self.arms, lists):
            for rank, document in enumerate(ranked, start=1):
                kept = documents.get(document.id)
                if kept is None or (not kept.page_content and document.page_content):
                    documents[document.id] = document
                ranks.setdefault(document.id, {}).setdefault(f"{arm.name}_rank", rank)
        if not documents:
            return []
        ids = sorted(documents)
        w = self.weights
        dense = self.store.similarity(query.dense, self.store.vectors(ids))[0] if w.dense else np.zeros(len(ids))
        sparse = self.sparse_index.sparse_scores(query.sparse[0], ids) if w.sparse else np.zeros(len(ids))
        colbert = colbert_scores(query.colbert[0], self.sparse_index.colbert_vectors(ids)) if w.colbert else np.zeros(len(ids))
        combined = (w.dense * dense + w.sparse * sparse + w.colbert * colbert) / (w.dense + w.sparse + w.colbert)
        order = sorted(range(len(ids)), key=lambda j: (float(combined[j]), ids[j]), reverse=True)[:k]
        return [
            Document(
                page_content=documents[ids[j]].page_content,
                metadata={
                    **documents[ids[j]].metadata,
                    **ranks[ids[j]],
                    "dense_score": float(dense[j]),
                    "sparse_score": float(sparse[j]),
                    "colbert_score": float(colbert[j]),
                    "score": float(combined[j]),
                },
                id=ids[j],
            )
            for j in order
        ]


NEEDS_M3_EMBEDDER = "retriever.type: bge-m3 combines BGE-M3's own outputs; set embeddings.type: bge-m3"
NEEDS_M3_SPARSE = "retriever.type: bge-m3 needs BGE-M3's sparse index; set lexical: {type: m3-sparse}"


def build_m3_retriever(
    config: "M3RetrieverConfig",
    embeddings,
    store: VectorIndex,
    reranker=None,
    lexical=None,
    *,
    k: int | None = None,
    k_name: str = "k",
) -> PipelineRetriever:
    if not isinstance(embeddings, BgeM3Embeddings):
        raise ConfigError(NEEDS_M3_EMBEDDER)
    if not isinstance(lexical, M3SparseIndex):
        raise ConfigError(NEEDS_M3_SPARSE)
    k = _result_count(config, reranker, k, k_name)
    path = M3RetrievalPath(
        arms=[
            DenseArm(embeddings, store, where=config.filter, search=config.search),
            SparseArm(embeddings, lexical, where=config.filter),
        ],
        reranker=reranker,
        fetch_k=max(config.fetch_k, k),
        depths=[config.depth, config.depth],
        store=store,
        sparse_index=lexical,
        weights=config.weights,
    )
    return PipelineRetriever(path=path, k=k)


@register("retriever", "bge-m3", build_m3_retriever)
class M3RetrieverConfig(StageConfig):
    """BGE-M3 hybrid: dense and sparse candidates, rescored by the weighted dense/sparse/ColBERT sum."""

    type: Literal["bge-m3"] = "bge-m3"
    k: int = Field(5, gt=0)
    fetch_k: int = Field(20, gt=0, description="With a reranker: combined candidates it reranks down to k.")
    filter: dict[str, Any] | None = Field(None, description="Chroma metadata filter, applied by both arms.")
    search: Literal["ann", "exact"] = Field("ann", description="The dense arm's search (see retriever.type: dense).")
    depth: int = Field(100, gt=0, description="Candidates each arm (dense, sparse) returns before rescoring.")
    weights: M3Weights = Field(default_factory=M3Weights, description="dense/sparse/colbert, default 0.4/0.2/0.4.")

    def required_stages(self) -> dict[str, str]:
        return {"lexical": NEEDS_M3_SPARSE}

    def required_types(self) -> dict[str, tuple[tuple[str, ...], str]]:
        return {"embeddings": (("bge-m3",), NEEDS_M3_EMBEDDER), "lexical": (("m3-sparse",), NEEDS_M3_SPARSE)}
