"""``embeddings.type: bge-m3`` — BGE-M3 through FlagEmbedding's ``BGEM3FlagModel``.

One forward pass gives the three outputs BGE-M3 was trained for: a dense vector (CLS, normalised:
into the vector store, as with any embedder), learned lexical weights per token (the sparse index,
``lexical.type: m3-sparse``) and one normalised vector per token (ColBERT multi-vectors, stored by the
sparse index to rescore candidates, ``retriever.type: bge-m3``). BGE-M3 takes no query instruction.

The dense sink and the sparse index ask for the same passages one after the other in each ingest
batch; the sparse and ColBERT outputs of the last :meth:`encode` call are kept so the model runs
once per passage, not twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from ..models import load_bge_m3
from ..registry import register
from ..stage_config import ModelReference
from .bge import BgeEmbeddings, BgeEmbeddingsConfig

# FlagEmbedding's own limit for bge-m3 is 8192 tokens; at that length one passage's ColBERT
# vectors alone are 16 MB in float16, so the default is BGE-M3's 512-token training length.
DEFAULT_MAX_LENGTH = 512
# The largest encode() whose sparse and ColBERT outputs are kept for the sparse index: the size
# of an ingest batch with ``lexical: m3-sparse`` (its max_batch_size).
KEEP_OUTPUTS_UP_TO = 256


@dataclass
class M3Output:
    """What BGE-M3 makes of a batch of texts, one entry per text."""

    dense: np.ndarray  # (texts, dimension) float32, unit length
    sparse: list[dict[int, float]]  # token id -> weight (> 0), special tokens left out
    colbert: list[np.ndarray]  # per text (tokens after CLS, dimension) float32, unit length rows

    def __getitem__(self, rows: Any) -> "M3Output":
        """The outputs of some texts (``rows``: a list of positions), as evaluation slices them."""
        rows = list(rows)
        return M3Output(self.dense[rows], [self.sparse[i] for i in rows], [self.colbert[i] for i in rows])

    def __len__(self) -> int:
        return len(self.sparse)


def build_bge_m3_embeddings(config: "BgeM3EmbeddingsConfig") -> "BgeM3Embeddings":
    return BgeM3Embeddings(config)


@register("embeddings", "bge-m3", build_bge_m3_embeddings)
class BgeM3EmbeddingsConfig(BgeEmbeddingsConfig):
    """BGE-M3 (dense + sparse + ColBERT). Needs the ``m3`` extra (FlagEmbedding)."""

    type: Literal["bge-m3"] = "bge-m3"  # type: ignore[assignment]
    model: ModelReference = "BAAI/bge-m3"
    query_instruction: str | None = Field(None, description="Must stay empty: BGE-M3 takes no query instruction.")
    normalize: Literal[True] = Field(True, description="BGE-M3's dense and ColBERT vectors are unit length.")
    max_seq_length: int | None = Field(
        DEFAULT_MAX_LENGTH, gt=0, description="Tokens per passage and query (bge-m3 allows 8192)."
    )

    @field_validator("precision")
    @classmethod
    def _no_int8(cls, value: Any) -> Any:
        # the int8 path swaps a sentence-transformers model's transformer for ONNX Runtime;
        # BGEM3FlagModel is not one, and its sparse and ColBERT heads would stay fp32 anyway
        if value == "int8":
            raise ValueError("bge-m3 runs in fp32, bf16 or fp16 (auto picks); int8 is offered for the bge type only")
        return value

    @field_validator("query_instruction")
    @classmethod
    def _no_instruction(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("BGE-M3 takes no query instruction (it was trained without one); remove it or set it to null")
        return value


class BgeM3Embeddings(BgeEmbeddings):
    """The embedder contract on ``BGEM3FlagModel``; :meth:`encode_m3` gives all three outputs."""

    config: BgeM3EmbeddingsConfig

    def __init__(self, config: BgeM3EmbeddingsConfig | None = None, **kwargs: Any):
        super().__init__(config if config is not None else BgeM3EmbeddingsConfig(**kwargs))
        self._last: dict[str, tuple[dict[int, float], np.ndarray]] = {}

    @property
    def query_instruction(self) -> str:
        return ""

    @property
    def client(self):
        """The loaded ``BGEM3FlagModel`` (loaded once per process, on first use)."""
        return self._loaded(load_bge_m3, max_seq_length=self.max_seq_length, batch_size=self.config.batch_size)

    @property
    def dimension(self) -> int:
        return int(self.client.model.model.config.hidden_size)

    @property
    def max_seq_length(self) -> int:
        return int(self.config.max_seq_length or DEFAULT_MAX_LENGTH)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.client.tokenizer
        return self._tokenizer

    def fingerprint(self, *, load_model: bool = True) -> dict[str, Any]:
        return {**super().fingerprint(load_model=load_model), "outputs": "bge-m3"}

    # -- the three outputs -------------------------------------------------------------------------
    def encode_m3(self, texts: Sequence[str], *, is_query: bool = False) -> M3Output:
        """Dense, sparse and ColBERT outputs of ``texts`` (queries and passages are encoded alike:
        no instruction, the same length limit)."""
        texts = list(texts)
        if not texts:
            return M3Output(np.zeros((0, self.dimension), dtype=np.float32), [], [])
        model = self.client
        encode = model.encode_queries if is_query else model.encode_corpus
        out = encode(
            texts,
            batch_size=self.config.batch_size,
            max_length=self.max_seq_length,
            return_dense=True,
            return_sparse=True,
            return_colbert_vecs=True,
        )
        sparse = [{int(token): float(weight) for token, weight in weights.items()} for weights in out["lexical_weights"]]
        colbert = [np.asarray(vectors, dtype=np.float32) for vectors in out["colbert_vecs"]]
        return M3Output(np.asarray(out["dense_vecs"], dtype=np.float32).reshape(len(texts), -1), sparse, colbert)

    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """The dense vectors (what the vector store holds). For an ingest batch, the other two
        outputs of the same pass are kept for :meth:`passage_outputs`, which the sparse index asks
        next; a larger call (a whole corpus at once: ``Pipeline.index_chunks``) asks the model for
        dense vectors only, since its ColBERT vectors (a float32 vector of the model's dimension per
        token) would not fit in memory."""
        if len(texts) > KEEP_OUTPUTS_UP_TO:
            self._last = {}
            out = self.client.encode_corpus(
                list(texts), batch_size=self.config.batch_size, max_length=self.max_seq_length,
                return_dense=True, return_sparse=False, return_colbert_vecs=False,
            )
            return np.asarray(out["dense_vecs"], dtype=np.float32).reshape(len(texts), -1)
        output = self.encode_m3(texts)
        self._last = {text: (weights, vectors) for text, weights, vectors in zip(texts, output.sparse, output.colbert)}
        return output.dense

    def passage_outputs(self, texts: Sequence[str]) -> tuple[list[dict[int, float]], list[np.ndarray]]:
        """Sparse weights and ColBERT vectors of passages: from the last :meth:`encode` where it
        had them (same batch of the same ingest), the model for the rest (the dense vector came
        from the embedding cache, or a reindex)."""
        known = dict(self._last)
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            fresh = self.encode_m3(missing)
            known.update(zip(missing, zip(fresh.sparse, fresh.colbert)))
        self._last = {}
        return [known[t][0] for t in texts], [known[t][1] for t in texts]

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_m3(texts, is_query=True).dense

    def embed_query(self, text: str) -> list[float]:
        return self.embed_queries([text])[0].tolist()

    def __repr__(self) -> str:
        return f"BgeM3Embeddings(model={self.config.model!r}, device={self.config.device!r})"
