"""Models in their own room: where a model comes from, what it is, on which device and in which
precision it runs, and one shared loader. A low layer: it imports ``rag_pipeline.errors`` and
third-party libraries only, never config, registry or the stages that use it."""

from .identity import model_identity
from .loading import load_bge_m3, load_bi_encoder, load_cross_encoder, load_tokenizer
from .precision import (
    DType,
    Precision,
    PrecisionSetting,
    ReadsPrecisionAliases,
    describe_precision,
    migrate_dtype,
    normalise_precision,
    resolve_precision,
)
from .resolution import (
    BGE_EN_INSTRUCTION,
    BGE_ZH_INSTRUCTION,
    ResolvedModel,
    default_query_instruction,
    remedy_for,
    resolve_model,
)

__all__ = [
    "BGE_EN_INSTRUCTION",
    "BGE_ZH_INSTRUCTION",
    "DType",
    "Precision",
    "PrecisionSetting",
    "ReadsPrecisionAliases",
    "ResolvedModel",
    "default_query_instruction",
    "describe_precision",
    "load_bge_m3",
    "load_bi_encoder",
    "load_cross_encoder",
    "load_tokenizer",
    "migrate_dtype",
    "model_identity",
    "normalise_precision",
    "remedy_for",
    "resolve_model",
    "resolve_precision",
]
