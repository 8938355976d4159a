"""``reranker.type: bge-reranker`` — a cross-encoder as a LangChain ``BaseDocumentCompressor``.

A cross-encoder reads (query, passage) together and scores their relevance; it is slower than
the bi-encoder and more accurate, so it reorders the first stage's top ``retriever.fetch_k`` and
keeps the best ``reranker.top_n`` (null: ``retriever.k``). Scores go into
``metadata['rerank_score']``; the first stage's ``score`` is kept beside it.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr

from ..models import (
    Precision, PrecisionSetting, ReadsPrecisionAliases, ResolvedModel, load_cross_encoder, model_identity,
    resolve_model, resolve_precision,
)
from ..registry import register
from ..stage_config import ModelReference, StageConfig


def build_bge_reranker(config: "BgeRerankerConfig") -> "BgeReranker":
    return BgeReranker(config)


@register("reranker", "bge-reranker", build_bge_reranker)
class BgeRerankerConfig(ReadsPrecisionAliases, StageConfig):
    """A cross-encoder reranker: hub id (``BAAI/bge-reranker-base``), local folder or ``package:``."""

    precision_section = "reranker"

    type: Literal["bge-reranker"] = "bge-reranker"
    model: ModelReference = "BAAI/bge-reranker-base"
    top_n: int | None = Field(None, gt=0, description="Documents kept; null = retriever.k.")
    max_length: int = Field(512, gt=0)
    batch_size: int = Field(32, gt=0)
    normalize: bool = Field(False, description="Map scores to 0..1 with a sigmoid.")
    device: str = "auto"
    precision: PrecisionSetting = Field(
        "auto", description="As embeddings.precision: auto | fp32 | bf16 | fp16 | int8 (`dtype` is its old name)."
    )
    trust_remote_code: bool = False
    blend: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Weight on the first stage's score, both min-max normalised over the candidates; 0 = pure rerank. "
        "Choose it on a dev split (benchmarks/finetune_scifact.py).",
    )


class BgeReranker(BaseDocumentCompressor):
    """Rerank documents with a BGE cross-encoder (via sentence-transformers' ``CrossEncoder``).

    Built from its config (``BgeReranker(config)``) or from the config's settings
    (``BgeReranker(model=..., top_n=3)``); either way the settings live in ``self.config``, so each
    is declared, defaulted and validated once, in :class:`BgeRerankerConfig`.
    """

    model_config = ConfigDict(protected_namespaces=())

    config: BgeRerankerConfig
    # A holder rather than the model itself: copies made with model_copy(update={"top_n": ...})
    # share it, so they resolve and hash the model once; the loader shares the model itself with
    # every other reranker on the same files in this process. Entries are keyed by the settings they
    # depend on, so a copy with another model or max_length does not reuse the original's.
    _loaded: dict[tuple, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, config: BgeRerankerConfig | None = None, **settings: Any):
        if config is not None and settings:
            raise TypeError("BgeReranker takes a config or its settings, not both")
        super().__init__(config=config if config is not None else BgeRerankerConfig(**settings))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> "BgeReranker":
        """A copy with some settings changed (``update={"top_n": 1}``), validated as the config
        validates them; it shares the loaded-model holder (see ``_loaded``)."""
        update = dict(update or {})
        settings = {name: update.pop(name) for name in list(update) if name in BgeRerankerConfig.model_fields}
        copied = super().model_copy(update=update, deep=deep)
        if settings:
            copied.config = BgeRerankerConfig.model_validate({**self.config.model_dump(), **settings})
        return copied

    # -- the settings the rest of the package reads off the stage -----------------------------------
    @property
    def model(self) -> str:
        return self.config.model

    @property
    def top_n(self) -> int | None:
        """Documents :meth:`compress_documents` keeps (null: all; the retriever then cuts at ``k``)."""
        return self.config.top_n

    @property
    def precision(self) -> PrecisionSetting:
        """The configured precision (``auto``, ``fp32``, ...); :attr:`resolved_precision` is what it becomes."""
        return self.config.precision

    @property
    def resolved(self) -> ResolvedModel:
        key = ("resolved", self.config.model)
        if key not in self._loaded:
            self._loaded[key] = resolve_model(self.config.model, what="reranker.model")
        return self._loaded[key]

    @property
    def identity(self) -> str:
        """The model's files, not its folder's name: ``ORG/NAME@commit`` or ``sha256:…``."""
        key = ("identity", self.config.model)
        if key not in self._loaded:
            self._loaded[key] = model_identity(self.resolved)
        return self._loaded[key]

    @property
    def resolved_precision(self) -> Precision:
        """What ``precision`` becomes on this machine (``auto`` decided, fallbacks applied)."""
        return resolve_precision(self.config.device, self.config.precision, "reranker")

    @property
    def cross_encoder(self):
        settings = self.config
        key = ("model", settings.model, settings.device, settings.precision, settings.max_length, settings.trust_remote_code)
        if key not in self._loaded:
            self._loaded[key] = load_cross_encoder(
                self.resolved,
                self.resolved_precision,
                identity=self.identity,
                max_length=settings.max_length,
                trust_remote_code=settings.trust_remote_code,
            )
        return self._loaded[key]

    def warm_up(self) -> "BgeReranker":
        """Load the model now (it otherwise loads at the first reranking)."""
        self.cross_encoder
        return self

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Relevance of each passage to the query: raw logits, or sigmoid(logit) with ``normalize``."""
        return self.score_pairs([(query, passage) for passage in passages])

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Relevance of each (query, passage) pair, the pairs of several queries in one ``predict``
        call: what a service that batches concurrent requests scores at once. A pair's score is
        the one :meth:`score` gives it alone (up to the float rounding of another batch shape)."""
        if not pairs:
            return []
        import torch

        activation = torch.nn.Sigmoid() if self.config.normalize else torch.nn.Identity()
        scores = self.cross_encoder.predict(
            [(query, passage) for query, passage in pairs],
            batch_size=self.config.batch_size,
            activation_fn=activation,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(s) for s in scores]

    def rank(self, query: str, documents: Sequence[Document]) -> list[Document]:
        """All ``documents``, best first by the cross-encoder, each with ``metadata['rerank_score']``
        beside the first stage's ``score`` (ties keep the first stage's order)."""
        return self.ranked(documents, self.score(query, [d.page_content for d in documents]))

    def ranked(self, documents: Sequence[Document], scores: Sequence[float]) -> list[Document]:
        """``documents`` ordered by their cross-encoder ``scores`` (blended with the first stage's
        when ``blend`` is set), each with ``metadata['rerank_score']``: :meth:`rank` once the
        scores are known, for a caller that scored the pairs itself (:meth:`score_pairs`)."""
        scores = list(scores)
        if self.config.blend > 0:
            scores = blend_scores([float(d.metadata.get("score", 0.0)) for d in documents], scores, self.config.blend)
        ranked = sorted(zip(documents, scores), key=lambda pair: pair[1], reverse=True)
        return [
            Document(page_content=d.page_content, metadata={**d.metadata, "rerank_score": s}, id=d.id)
            for d, s in ranked
        ]

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """LangChain's compressor interface (``ContextualCompressionRetriever``): the best ``top_n``."""
        ranked = self.rank(query, documents)
        return ranked[: self.config.top_n] if self.config.top_n is not None else ranked


def blend_scores(first_stage: Sequence[float], reranked: Sequence[float], weight: float) -> list[float]:
    """``weight * minmax(first_stage) + (1 - weight) * minmax(reranked)`` over one query's candidates.

    Min-max per list because the two scales have nothing in common (a cosine or fused score, a
    logit); a list whose scores are all equal contributes 0 (it cannot tell the candidates apart)."""

    def minmax(values: Sequence[float]) -> list[float]:
        low, high = min(values), max(values)
        return [0.0] * len(values) if high == low else [(v - low) / (high - low) for v in values]

    if not reranked:
        return []
    return [weight * f + (1 - weight) * r for f, r in zip(minmax(first_stage), minmax(reranked))]
