"""``retriever.type: dense`` — nearest chunks from the vector store, reranked when configured."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from ..config import StageConfig
from ..registry import register


def build_dense_retriever(config: "DenseRetrieverConfig", store, reranker=None, k: int | None = None) -> BaseRetriever:
    """``k`` (when given) is the number of results; otherwise ``reranker.top_n`` or ``retriever.k``."""
    if k is None:
        k = reranker.top_n if reranker is not None and reranker.top_n else config.k
    if reranker is None:
        return DenseRetriever(store=store, k=k, where=config.filter)
    from langchain_classic.retrievers import ContextualCompressionRetriever

    first_stage = DenseRetriever(store=store, k=max(config.fetch_k, k), where=config.filter)
    return ContextualCompressionRetriever(
        base_compressor=reranker.model_copy(update={"top_n": k}), base_retriever=first_stage
    )


@register("retriever", "dense", build_dense_retriever)
class DenseRetrieverConfig(StageConfig):
    """``k`` results; with a reranker, ``fetch_k`` candidates are reranked down to ``k``.

    A ``fetch_k`` below ``k`` is raised to ``k`` (so ``--set retriever.k=50`` just works)."""

    type: Literal["dense"] = "dense"
    k: int = Field(5, gt=0)
    fetch_k: int = Field(20, gt=0)
    filter: dict[str, Any] | None = Field(None, description="Chroma metadata filter, e.g. {file_type: pdf}.")


class DenseRetriever(BaseRetriever):
    """A LangChain retriever over a :class:`~rag_pipeline.vectorstores.ChromaStore`.

    Unlike ``Chroma.as_retriever()`` it keeps the similarity of each hit in ``metadata['score']``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 5
    where: dict[str, Any] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.store.search(query, k=self.k, where=self.where)
