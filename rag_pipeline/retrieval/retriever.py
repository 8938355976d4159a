"""``retriever.type: dense`` — the pipeline's LangChain retriever over the retrieval path.

How many results: ``k`` passed to ``as_retriever(k)`` (the CLI's ``--k``), else, with a reranker,
``reranker.top_n`` when set, else ``retriever.k``. ``load_config`` makes the user's latest word win
between the last two: ``--set retriever.k=N`` clears a ``reranker.top_n`` the file set.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from ..errors import ConfigError, QueryError
from ..registry import register
from ..stage_config import StageConfig
from .first_stage import DenseArm
from .path import RetrievalPath


def positive_count(value: Any, name: str) -> int:
    """``value`` as a result count, or a one-line ConfigError naming ``name`` as the user wrote it."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: must be a positive number of results, got {value!r}")
    return value


def build_dense_retriever(
    config: "DenseRetrieverConfig", embeddings, store, reranker=None, *, k: int | None = None, k_name: str = "k"
) -> "PipelineRetriever":
    if k is None:
        k = reranker.top_n if reranker is not None and reranker.top_n else config.k
    else:
        k = positive_count(k, k_name)
    path = RetrievalPath(
        arms=[DenseArm(embeddings, store, where=config.filter, search=config.search)],
        reranker=reranker,
        fetch_k=max(config.fetch_k, k),
    )
    return PipelineRetriever(path=path, k=k)


@register("retriever", "dense", build_dense_retriever)
class DenseRetrieverConfig(StageConfig):
    """``k`` results; with a reranker, ``fetch_k`` candidates are reranked down to ``k``.

    A ``fetch_k`` below ``k`` is raised to ``k`` (so ``--set retriever.k=50`` just works)."""

    type: Literal["dense"] = "dense"
    k: int = Field(5, gt=0)
    fetch_k: int = Field(20, gt=0)
    filter: dict[str, Any] | None = Field(None, description="Chroma metadata filter, e.g. {file_type: pdf}.")
    search: Literal["ann", "exact"] = Field(
        "ann", description="ann: the index's own (HNSW) search; exact: score every chunk (small indexes, evaluation)."
    )


class PipelineRetriever(BaseRetriever):
    """A LangChain retriever over a :class:`RetrievalPath`: ``invoke``, ``batch``, ``ainvoke``, ``|``.

    Unlike ``Chroma.as_retriever()`` it keeps the similarity of each hit in ``metadata['score']``
    (and the cross-encoder's in ``metadata['rerank_score']``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Any
    k: int = 5

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query is empty: give the text to search for")
        return self.path.retrieve([query], self.k)[0]

    def candidates(self, query: str) -> list[Document]:
        """What the reranker chooses from: the first stage's top ``fetch_k`` (for inspection)."""
        return self.path.first_stage([query], self.path.fetch_k)[0]
