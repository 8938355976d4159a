"""``chunker.type: recursive`` — LangChain's RecursiveCharacterTextSplitter, sizes in characters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ..stage_config import StageConfig
from ..registry import register
from .base import Chunker, _start_indices


def build_recursive_chunker(config: "RecursiveChunkerConfig", embeddings=None) -> "RecursiveChunker":
    return RecursiveChunker(config)


def overlap_problem(overlap: int, size: int) -> str | None:
    """The overlap check's one wording, whether the size comes from the config (at validation) or
    from the model's limit (the tokens chunker with ``chunk_size: null``, when the model is known)."""
    if overlap >= size:
        return f"chunk_overlap ({overlap}) must be smaller than chunk_size ({size})"
    return None


class _SizedChunkerConfig(StageConfig):
    chunk_size: int = Field(1000, gt=0)
    chunk_overlap: int = Field(100, ge=0)
    separators: list[str] | None = None

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, overlap: int, info: ValidationInfo) -> int:
        # A field validator, so the error names chunker.chunk_overlap. chunk_size is validated
        # first (absent here when it was itself invalid); it may be None for the tokens chunker:
        # the model's limit, checked when the model loads.
        size = info.data.get("chunk_size")
        problem = overlap_problem(overlap, size) if size is not None else None
        if problem is not None:
            raise ValueError(problem)
        return overlap


@register("chunker", "recursive", build_recursive_chunker)
class RecursiveChunkerConfig(_SizedChunkerConfig):
    """Split on paragraphs, then lines, then words, into chunks of at most ``chunk_size`` characters."""

    type: Literal["recursive"] = "recursive"


class RecursiveChunker(Chunker):
    def __init__(self, config: RecursiveChunkerConfig):
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.config = config
        kwargs = {"separators": config.separators} if config.separators else {}
        self.splitter = RecursiveCharacterTextSplitter(
            chunk_size=config.chunk_size, chunk_overlap=config.chunk_overlap, **kwargs
        )

    def split_text(self, text: str) -> list[tuple[str, int]]:
        return _start_indices(text, self.splitter.split_text(text))
