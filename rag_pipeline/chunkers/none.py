"""``chunker.type: none`` — one chunk per document (short texts, or evaluation on whole documents)."""

from __future__ import annotations

from typing import Literal

from ..stage_config import StageConfig
from ..registry import register
from .base import Chunker


def build_no_chunker(config: "NoChunkerConfig", embeddings=None) -> "NoChunker":
    return NoChunker()


@register("chunker", "none", build_no_chunker)
class NoChunkerConfig(StageConfig):
    type: Literal["none"] = "none"


class NoChunker(Chunker):
    def split_text(self, text: str) -> list[tuple[str, int]]:
        return [(text, 0)]
