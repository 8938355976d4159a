"""``embeddings.type: bge`` — a LangChain ``Embeddings`` for BGE (and any sentence-transformers) models.

Equivalent to LangChain's ``HuggingFaceBgeEmbeddings`` with ``normalize_embeddings=True`` (a test
checks the vectors are identical), with what that class lacks: the right instruction per model
(LangChain's default says "question", wrong for v1.5), fail-fast offline resolution, fp16 only on
a GPU, and access to the tokenizer so chunkers can count tokens the way the model does.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from langchain_core.embeddings import Embeddings
from pydantic import Field

from ..stage_config import ConfigPath, ModelReference, StageConfig
from ..models import (
    Precision,
    PrecisionSetting,
    ResolvedModel,
    default_query_instruction,
    load_bi_encoder,
    load_tokenizer,
    ReadsPrecisionAliases,
    model_identity,
    resolve_model,
    resolve_precision,
)
from ..registry import register


def build_bge_embeddings(config: "BgeEmbeddingsConfig") -> "BgeEmbeddings":
    return BgeEmbeddings(config)


@register("embeddings", "bge", build_bge_embeddings)
class BgeEmbeddingsConfig(ReadsPrecisionAliases, StageConfig):
    """A bi-encoder: hub id, local folder, or ``package:<name>`` for a model shipped in a package."""

    type: Literal["bge"] = "bge"
    model: ModelReference = "BAAI/bge-small-en-v1.5"
    query_instruction: str | None = Field(
        None, description="Prefix for queries only; null picks the model's own from the known-models table."
    )
    normalize: bool = True
    device: str = "auto"
    precision: PrecisionSetting = Field(
        "auto",
        description="auto = fp16 on a GPU, bf16 on a CPU with bf16 matrix instructions, else fp32; "
        "int8 = ONNX Runtime, dynamically quantised (extra `onnx`). `dtype` is read as its old name.",
    )
    batch_size: int = Field(32, gt=0)
    max_seq_length: int | None = Field(None, gt=0, description="Tokens; null keeps the model's own limit.")
    trust_remote_code: bool = False
    cache_folder: ConfigPath | None = Field(None, description="Where hub models are downloaded (HF cache).")
    embedding_cache: bool = Field(
        True, description="Keep passage vectors on disk (next to a persistent index) so re-runs do not re-embed."
    )
    show_progress: bool = True



class BgeEmbeddings(Embeddings):
    """LangChain embeddings on a sentence-transformers model; the model loads on first use
    (or at :meth:`warm_up`), the tokenizer alone when only tokens are counted."""

    def __init__(self, config: BgeEmbeddingsConfig | None = None, **kwargs: Any):
        self.config = config if config is not None else BgeEmbeddingsConfig(**kwargs)
        self._resolved: ResolvedModel | None = None
        self._identity: str | None = None
        self._precision: Precision | None = None
        self._model = None
        self._tokenizer = None

    # -- what the model is -------------------------------------------------------------------
    @property
    def resolved(self) -> ResolvedModel:
        if self._resolved is None:
            self._resolved = resolve_model(self.config.model, cache_folder=self._cache_folder)
        return self._resolved

    @property
    def model_id(self) -> str:
        return self.resolved.model_id

    @property
    def identity(self) -> str:
        """The model's files, not its folder's name: ``ORG/NAME@commit`` or ``sha256:…``."""
        if self._identity is None:
            self._identity = model_identity(self.resolved)
        return self._identity

    @property
    def precision(self) -> Precision:
        """Device and precision as the config and the hardware decide them (see models/precision.py)."""
        if self._precision is None:
            self._precision = resolve_precision(self.config.device, self.config.precision, "embeddings")
        return self._precision

    @property
    def query_instruction(self) -> str:
        if self.config.query_instruction is not None:
            return self.config.query_instruction
        return default_query_instruction(self.model_id)

    @property
    def _cache_folder(self) -> str | None:
        return str(self.config.cache_folder) if self.config.cache_folder else None

    @property
    def client(self):
        """The loaded ``SentenceTransformer`` (loaded once per process, on first use)."""
        return self._loaded(
            load_bi_encoder, max_seq_length=self.config.max_seq_length, show_progress=self.config.show_progress
        )

    def _loaded(self, load: Any, **settings: Any) -> Any:
        """The model ``load`` gives for this config, loaded on the first ask (the loader shares
        one per process between every caller that asks for the same)."""
        if self._model is None:
            self._model = load(
                self.resolved, self.precision, identity=self.identity,
                trust_remote_code=self.config.trust_remote_code, cache_folder=self._cache_folder, **settings,
            )
        return self._model

    def warm_up(self) -> "BgeEmbeddings":
        """Load the model now (it otherwise loads at the first embedding)."""
        self.client
        return self

    @property
    def dimension(self) -> int:
        model = self.client
        # sentence-transformers 6 renamed the method; 5.x only has the old name.
        get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dimension())

    @property
    def max_seq_length(self) -> int:
        """The model's token limit; read from its tokenizer, so it needs no weights."""
        if self._model is not None:
            return int(self._model.max_seq_length)
        return int(self.tokenizer.model_max_length)

    @property
    def tokenizer(self):
        """The model's tokenizer, loaded on its own when the model is not loaded."""
        if self._tokenizer is None:
            if self._model is None:
                self._tokenizer = load_tokenizer(
                    self.resolved,
                    identity=self.identity,
                    max_seq_length=self.config.max_seq_length,
                    trust_remote_code=self.config.trust_remote_code,
                )
            if self._tokenizer is None:
                self._tokenizer = self.client.tokenizer
        return self._tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts including the special tokens, as the model will see them (untruncated)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def fingerprint(self, *, load_model: bool = True) -> dict[str, Any]:
        """What makes two indexes' vectors comparable; stored with each collection.

        ``load_model=False`` leaves out the dimension unless the model is already loaded: enough to
        check an existing index (the dimension follows from the model and its identity) without a
        model load.
        """
        fingerprint: dict[str, Any] = {"model": self.model_id, "identity": self.identity}
        if load_model or self._model is not None:
            fingerprint["dimension"] = self.dimension
        fingerprint["normalize"] = self.config.normalize
        fingerprint["query_instruction"] = self.query_instruction
        return fingerprint

    def cache_identity(self) -> dict[str, Any]:
        """What decides a passage's vector: the fingerprint plus the settings that change vectors
        without making them incomparable (truncation length, precision). The embedding cache is
        keyed by this, so an A/B of ``max_seq_length`` or ``precision`` never reuses the other's vectors.
        The precision is the resolved one, not read back from weights (the int8 backend has none).
        The fingerprint leaves precision out on purpose: bf16/fp16 vectors are within 0.999 cosine of
        fp32 (tests/embeddings/test_precision_vectors.py), so an index built in one serves queries
        embedded in another; int8 warns at load when its measured tolerance is worse."""
        return {
            **self.fingerprint(),
            "max_seq_length": self.max_seq_length,
            "dtype": self.precision.dtype,
        }

    # -- the LangChain Embeddings interface -----------------------------------------------------
    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.client.encode(
            list(texts),
            batch_size=self.config.batch_size,
            normalize_embeddings=self.config.normalize,
            show_progress_bar=self.config.show_progress if show_progress is None else show_progress,
            convert_to_numpy=True,
        ).astype(np.float32, copy=False)
        if self.config.normalize and self.precision.dtype in ("bfloat16", "float16"):
            # Normalised in 16 bits, the norms keep 16-bit rounding error; unit length again in fp32.
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

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
