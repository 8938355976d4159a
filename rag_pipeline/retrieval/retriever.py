"""``retriever.type: dense`` and ``hybrid`` — the pipeline's LangChain retriever over the retrieval path.

``dense``: the embedding arm alone. ``hybrid``: the arms ``retriever.arms`` lists (``dense``,
``bm25``; one alone is fine), each searched ``fusion.depth`` deep, fused by ``fusion.method``
(``convex`` or ``rrf``, :mod:`.fusion`), then reranked when a reranker is configured.

How many results: ``k`` passed to ``as_retriever(k)`` (the CLI's ``--k``), else, with a reranker,
``reranker.top_n`` when set, else ``retriever.k``. ``load_config`` makes the user's latest word win
between the last two: ``--set retriever.k=N`` clears a ``reranker.top_n`` the file set.

Per call, ``k``, ``filter`` and ``top_n`` (:data:`PER_CALL_SETTINGS`) can be given as keyword
arguments (``invoke(query, k=1)``, as LangChain's standard retriever tests expect) or in
``config={"configurable": {...}}`` (so they reach a retriever inside a chain); they apply to that
call only and share the loaded models.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError, QueryError, positive_count
from .filters import filter_problem
from ..registry import register
from ..stage_config import StageConfig
from .first_stage import DenseArm, LexicalArm
from .fusion import convex, fuse_single, reciprocal_rank
from .path import RetrievalPath


def _checked_filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    problem = filter_problem(value) if value is not None else None
    if problem is not None:
        raise ValueError(problem)
    return value


def _result_count(config: Any, reranker: Any, k: int | None, k_name: str) -> int:
    if k is None:
        return reranker.top_n if reranker is not None and reranker.top_n else config.k
    return positive_count(k, k_name)


ARM_NAMES = ("dense", "bm25")


class FusionConfig(BaseModel):
    """``retriever.fusion``: how the arms' lists become one.

    The defaults (convex, min-max, equal weights, 100 deep) are meant for any collection, not fitted
    to one: min-max puts both arms on [0, 1] whatever their score scales, and equal weights assume
    neither arm is known to be the better one (on SciFact the train split's best weight is 0.5
    too; ``benchmarks/results/scifact-hybrid.md``).
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["convex", "rrf"] = Field(
        "convex", description="convex: weighted sum of normalised scores; rrf: reciprocal rank fusion."
    )
    weights: dict[str, float] | None = Field(
        None,
        description="Per arm, e.g. {dense: 0.5, bm25: 0.5}. Default equal (convex: 1/arms each; rrf: 1 each). "
        "In a convex combination an arm left out gets what remains of 1.",
    )
    k: float = Field(60.0, gt=0, description="rrf: the rank constant (60, as in Cormack et al.).")
    normalize: Literal["minmax", "zscore", "none"] = Field("minmax", description="convex: per-arm score normalisation.")
    depth: int | dict[str, int] = Field(
        100, description="Chunks each arm returns before fusion (one number, or per arm); at least retriever.k."
    )

    @field_validator("weights")
    @classmethod
    def _weights_are_known_and_non_negative(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, weight in (value or {}).items():
            if name not in ARM_NAMES:
                raise ValueError(f"unknown arm {name!r}; arms are {', '.join(ARM_NAMES)}")
            if weight < 0:
                raise ValueError(f"the weight of {name} must not be negative, got {weight}")
        return value

    @field_validator("depth")
    @classmethod
    def _depth_is_positive(cls, value: int | dict[str, int]) -> int | dict[str, int]:
        for name, depth in (value.items() if isinstance(value, dict) else [("depth", value)]):
            if name != "depth" and name not in ARM_NAMES:
                raise ValueError(f"unknown arm {name!r}; arms are {', '.join(ARM_NAMES)}")
            if depth <= 0:
                raise ValueError(f"must be a positive number of chunks, got {depth}")
        return value

    def arm_weights(self, arms: list[str]) -> dict[str, float]:
        given = dict(self.weights or {})
        missing = [arm for arm in arms if arm not in given]
        if self.method == "rrf":
            return {arm: given.get(arm, 1.0) for arm in arms}
        if not given:
            return {arm: 1.0 / len(arms) for arm in arms}
        rest = max(0.0, 1.0 - sum(given[arm] for arm in arms if arm in given))
        return {arm: given.get(arm, rest / len(missing) if missing else 0.0) for arm in arms}

    def arm_depth(self, arm: str) -> int:
        return self.depth.get(arm, 100) if isinstance(self.depth, dict) else self.depth


def build_retriever(
    config: "DenseRetrieverConfig | HybridRetrieverConfig",
    embeddings,
    store,
    reranker=None,
    lexical=None,
    *,
    k: int | None = None,
    k_name: str = "k",
) -> "PipelineRetriever":
    """The retriever of ``dense`` and ``hybrid`` configs: ``dense`` is the embedding arm alone."""
    k = _result_count(config, reranker, k, k_name)
    arms: list[Any] = []
    for name in config.arms:
        if name == "dense":
            arms.append(DenseArm(embeddings, store, where=config.filter, search=config.search))
        else:
            if lexical is None:
                raise ConfigError("retriever.arms: the bm25 arm needs a `lexical:` section (lexical: {type: bm25})")
            arms.append(LexicalArm(lexical, where=config.filter, name=name))
    fusion = config.fusion
    if len(arms) == 1:
        fuse = fuse_single
    elif fusion.method == "rrf":
        fuse = partial(reciprocal_rank, names=config.arms, weights=fusion.arm_weights(config.arms), constant=fusion.k)
    else:
        fuse = partial(convex, names=config.arms, weights=fusion.arm_weights(config.arms), normalize=fusion.normalize)
    path = RetrievalPath(
        arms=arms,
        fuse=fuse,
        reranker=reranker,
        fetch_k=max(config.fetch_k, k),
        depths=[fusion.arm_depth(name) for name in config.arms],
    )
    return PipelineRetriever(path=path, k=k)


class _FirstStageConfig(StageConfig):
    """What ``dense`` and ``hybrid`` share: ``k`` results; with a reranker, ``fetch_k`` candidates
    are reranked down to ``k`` (a ``fetch_k`` below ``k`` is raised to ``k``, so
    ``--set retriever.k=50`` just works)."""

    k: int = Field(5, gt=0)
    fetch_k: int = Field(20, gt=0, description="With a reranker: candidates it reranks down to k.")
    filter: dict[str, Any] | None = Field(None, description="Chroma metadata filter, e.g. {file_type: pdf}; every arm applies it.")
    search: Literal["ann", "exact"] = Field(
        "ann", description="ann: the index's own (HNSW) search; exact: score every chunk (small indexes, evaluation)."
    )

    @field_validator("filter")
    @classmethod
    def _filter_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _checked_filter(value)

    def indexes_searched(self) -> frozenset[str]:
        return frozenset({"vectorstore"} if "dense" in self.arms else set()) | (
            frozenset({"lexical"}) if "bm25" in self.arms else frozenset()
        )


@register("retriever", "dense", build_retriever)
class DenseRetrieverConfig(_FirstStageConfig):
    """The embedding index alone: a hybrid retriever with the one arm ``dense``."""

    type: Literal["dense"] = "dense"

    @property
    def arms(self) -> list[str]:
        return ["dense"]

    @property
    def fusion(self) -> FusionConfig:
        return FusionConfig()


@register("retriever", "hybrid", build_retriever)
class HybridRetrieverConfig(_FirstStageConfig):
    """Several first-stage arms fused into one list (then reranked, with a reranker).

    ``arms``: ``dense`` (the embedding index) and/or ``bm25`` (the ``lexical:`` index); one arm
    alone is that arm's retrieval (``configs/scifact-bm25.yaml``)."""

    type: Literal["hybrid"] = "hybrid"
    arms: list[Literal["dense", "bm25"]] = Field(default_factory=lambda: ["dense", "bm25"], min_length=1)
    fusion: FusionConfig = Field(default_factory=FusionConfig)

    @model_validator(mode="after")
    def _arms_once_each(self) -> "HybridRetrieverConfig":
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms: each arm once, got {self.arms}")
        return self

    def required_stages(self) -> dict[str, str]:
        """The optional stage sections this retriever cannot work without, and why."""
        if "bm25" in self.arms:
            return {"lexical": "retriever.arms: the bm25 arm needs a `lexical:` section (lexical: {type: bm25})"}
        return {}


PER_CALL_SETTINGS = ("k", "filter", "top_n")
"""What one call may set: result count, metadata filter, and the reranker's cut."""


def _from_configurable(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus the per-call settings in ``config["configurable"]`` (a keyword wins)."""
    configurable = (config or {}).get("configurable") or {}
    given = {name: configurable[name] for name in PER_CALL_SETTINGS if name in configurable}
    return {**given, **kwargs}


class PipelineRetriever(BaseRetriever):
    """A LangChain retriever over a :class:`RetrievalPath`: ``invoke``, ``batch``, ``ainvoke``, ``|``.

    Unlike ``Chroma.as_retriever()`` it keeps the similarity of each hit in ``metadata['score']``
    (and the cross-encoder's in ``metadata['rerank_score']``).

    ``k`` and ``filter`` are the defaults of every call (``filter``: None keeps the configured
    ``retriever.filter``, ``{}`` searches without one); a call may override them, and the
    reranker's ``top_n``, with keyword arguments or ``config={"configurable": {...}}``. Being
    fields, they also work with LangChain's ``configurable_fields``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    path: Any
    k: int = 5
    filter: dict[str, Any] | None = None

    @field_validator("filter")
    @classmethod
    def _filter_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = filter_problem(value) if value is not None else None
        if problem is not None:
            raise ConfigError(f"filter: {problem}")
        return value

    def invoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        return super().invoke(input, config, **_from_configurable(config, kwargs))

    async def ainvoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        return await super().ainvoke(input, config, **_from_configurable(config, kwargs))

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        top_n: int | None = None,
    ) -> list[Document]:
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query is empty: give the text to search for")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise QueryError(
                f"the query is not valid text: a lone surrogate {query[exc.start]!r} at position {exc.start}"
            ) from None
        return self.path_for(filter).retrieve([query], self.result_count(k, top_n))[0]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **settings: Any
    ) -> list[Document]:
        # the models compute synchronously: off the event loop, as BaseRetriever's default does
        return await run_in_executor(None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **settings)

    def result_count(self, k: int | None = None, top_n: int | None = None) -> int:
        """How many results one call returns: its ``k``, else its ``top_n``, else the retriever's ``k``."""
        if top_n is not None and self.path.reranker is None:
            raise QueryError("top_n: is the reranker's cut and this retriever has no reranker; pass k instead")
        for name, value in (("k", k), ("top_n", top_n)):
            if value is not None:
                return positive_count(value, name)
        return self.k

    def path_for(self, filter: dict[str, Any] | None = None) -> Any:
        """The retrieval path under the call's filter (else this retriever's, else the configured one)."""
        where = filter if filter is not None else self.filter
        if where is None:
            return self.path
        problem = filter_problem(where)
        if problem is not None:
            raise QueryError(f"filter: {problem}")
        return self.path.filtered(where)

    def active_filter(self, filter: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The filter a call with ``filter`` searches under (None: none)."""
        where = filter if filter is not None else self.filter
        if where is None:
            where = self.path.arms[0].where if self.path.arms else None
        return where or None

    def empty_reason(self, filter: dict[str, Any] | None = None) -> str:
        """Why a call with ``filter`` found nothing, in one line (for a user facing an empty list)."""
        if all(arm.size() == 0 for arm in self.path.filtered({}).arms):
            return "the index is empty: run `rag-pipeline ingest CONFIG` first"
        where = self.active_filter(filter)
        if where and all(arm.size() == 0 for arm in self.path_for(filter).arms):
            return f"no chunk matches filter {where!r}; check its field names and values against `query --json` output"
        return "no chunk shares a word with the query (BM25 finds only those)"

    def candidates(self, query: str) -> list[Document]:
        """What the reranker chooses from: the first stage's top ``fetch_k`` (for inspection)."""
        return self.path_for().first_stage([query], self.path.fetch_k)[0]
