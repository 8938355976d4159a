"""``embeddings.type: bge`` — a LangChain ``Embeddings`` for BGE (and any sentence-transformers) models.

Equivalent to LangChain's ``HuggingFaceBgeEmbeddings`` with ``normalize_embeddings=True`` (a test
checks the vectors are identical), with what that class lacks: the right instruction per model
(LangChain's default says "question", wrong for v1.5), fail-fast offline resolution, fp16 only on
a GPU, and access to the tokenizer so chunkers can count tokens the way the model does.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Sequence

import numpy as np
from langchain_core.embeddings import Embeddings
from pydantic import Field

from ..stage_config import ConfigPath, ModelReference, StageConfig
from ..errors import ModelNotAvailableError, first_line
from ..registry import register
from .devices import DType, resolve_device, resolve_dtype
from .models import ResolvedModel, default_query_instruction, remedy_for, resolve_model

logger = logging.getLogger(__name__)


def build_bge_embeddings(config: "BgeEmbeddingsConfig") -> "BgeEmbeddings":
    return BgeEmbeddings(config)


@register("embeddings", "bge", build_bge_embeddings)
class BgeEmbeddingsConfig(StageConfig):
    """A bi-encoder: hub id, local folder, or ``package:<name>`` for a model shipped in a package."""

    type: Literal["bge"] = "bge"
    model: ModelReference = "BAAI/bge-small-en-v1.5"
    query_instruction: str | None = Field(
        None, description="Prefix for queries only; null picks the model's own from the known-models table."
    )
    normalize: bool = True
    device: str = "auto"
    dtype: DType = "auto"
    batch_size: int = Field(32, gt=0)
    max_seq_length: int | None = Field(None, gt=0, description="Tokens; null keeps the model's own limit.")
    trust_remote_code: bool = False
    cache_folder: ConfigPath | None = Field(None, description="Where hub models are downloaded (HF cache).")
    embedding_cache: bool = Field(
        True, description="Keep passage vectors on disk (next to a persistent index) so re-runs do not re-embed."
    )
    show_progress: bool = True


class BgeEmbeddings(Embeddings):
    """LangChain embeddings on a sentence-transformers model; the model loads on first use."""

    def __init__(self, config: BgeEmbeddingsConfig | None = None, **kwargs: Any):
        self.config = config if config is not None else BgeEmbeddingsConfig(**kwargs)
        self._resolved: ResolvedModel | None = None
        self._model = None

    # -- what the model is -------------------------------------------------------------------
    @property
    def resolved(self) -> ResolvedModel:
        if self._resolved is None:
            self._resolved = resolve_model(self.config.model)
        return self._resolved

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    @property
    def query_instruction(self) -> str:
        if self.config.query_instruction is not None:
            return self.config.query_instruction
        return default_query_instruction(self.model_id)

    def warm_up(self) -> None:
        """Load the model now (it otherwise loads on first use)."""
        self.client

    @property
    def client(self):
        """The loaded ``SentenceTransformer`` (loaded once, on first use)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        from sentence_transformers import SentenceTransformer

        resolved = self.resolved
        device = resolve_device(self.config.device)
        dtype = resolve_dtype(self.config.dtype, device, "embeddings")
        try:
            model = SentenceTransformer(
                resolved.path or resolved.model_id,
                device=device,
                trust_remote_code=self.config.trust_remote_code,
                local_files_only=resolved.local_files_only,
                cache_folder=str(self.config.cache_folder) if self.config.cache_folder else None,
                model_kwargs={"dtype": dtype},
            )
        except OSError as exc:
            raise ModelNotAvailableError(
                f"embeddings.model: cannot load {self.config.model!r} ({first_line(exc, limit=200)}); "
                + remedy_for(resolved.model_id)
            ) from None
        if self.config.max_seq_length is not None:
            model.max_seq_length = self.config.max_seq_length
        model.eval()
        return model

    @property
    def dimension(self) -> int:
        model = self.client
        # sentence-transformers 6 renamed the method; 5.x only has the old name.
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dimension())

    @property
    def max_seq_length(self) -> int:
        return int(self.client.max_seq_length)

    @property
    def tokenizer(self):
        return self.client.tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts including the special tokens, as the model will see them (untruncated)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def fingerprint(self, *, load_model: bool = True) -> dict[str, Any]:
        """What makes two indexes' vectors comparable; stored with each collection.

        ``load_model=False`` leaves out the dimension unless the model is already loaded: enough to
        check an existing index (the dimension follows from the model) without a model load.
        """
        fingerprint: dict[str, Any] = {"model": self.model_id}
        if load_model or self._model is not None:
            fingerprint["dimension"] = self.dimension
        fingerprint["normalize"] = self.config.normalize
        fingerprint["query_instruction"] = self.query_instruction
        return fingerprint

    def cache_identity(self) -> dict[str, Any]:
        """What decides a passage's vector: the fingerprint plus the settings that change vectors
        without making them incomparable (truncation length, precision). The embedding cache is
        keyed by this, so an A/B of ``max_seq_length`` or ``dtype`` never reuses the other's vectors."""
        return {
            **self.fingerprint(),
            "max_seq_length": self.max_seq_length,
            "dtype": str(next(self.client.parameters()).dtype).removeprefix("torch."),
        }

    # -- the LangChain Embeddings interface -----------------------------------------------------
    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.client.encode(
            list(texts),
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            show_progress_bar=self.config.show_progress if show_progress is None else show_progress,
            convert_to_numpy=True,
        ).astype(np.float32, copy=False)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Passages are embedded as they are: the BGE instruction is for queries only."""
        return self.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([self.query_instruction + text], show_progress=False)[0].tolist()

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Many queries at once (evaluation); each gets the instruction."""
        return self.encode([self.query_instruction + t for t in texts], show_progress=False)

    def __repr__(self) -> str:
        return f"BgeEmbeddings(model={self.config.model!r}, device={self.config.device!r})"
