"""``chunker.type: tokens`` — sizes counted with the embedding model's own tokenizer.

A chunk longer than the model's ``max_seq_length`` would be cut silently by the model, and its
tail would never be searchable. So the size is checked against the model's limit when the chunker
is built, and every chunk is measured after splitting; one that still does not fit is split again.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..errors import ConfigError
from ..registry import register
from .base import Chunker, _start_indices
from .recursive import _SizedChunkerConfig, overlap_problem


def build_token_chunker(config: "TokenChunkerConfig", embeddings=None) -> "TokenChunker":
    if embeddings is None:
        raise ConfigError("chunker.type tokens needs the embedding model's tokenizer (an embeddings section)")
    return TokenChunker(config, embeddings)


@register("chunker", "tokens", build_token_chunker)
class TokenChunkerConfig(_SizedChunkerConfig):
    """Chunks of at most ``chunk_size`` model tokens (special tokens included); null = the model's limit."""

    type: Literal["tokens"] = "tokens"
    chunk_size: int | None = Field(None, gt=0)  # type: ignore[assignment]
    chunk_overlap: int = Field(32, ge=0)


class TokenChunker(Chunker):
    def __init__(self, config: TokenChunkerConfig, embeddings):
        self.config = config
        self.embeddings = embeddings
        self._splitter = None

    @property
    def token_budget(self) -> int:
        """Largest chunk in tokens, special tokens ([CLS], [SEP]) included."""
        limit = self.embeddings.max_seq_length
        size = self.config.chunk_size if self.config.chunk_size is not None else limit
        if size > limit:
            raise ConfigError(
                f"chunker.chunk_size: {size} tokens is over the model's max_seq_length ({limit}); "
                "the model would silently truncate every longer chunk"
            )
        problem = overlap_problem(self.config.chunk_overlap, size)
        if problem is not None:
            # worded as config validation words it, with where a null chunk_size took its size from
            where = "" if self.config.chunk_size is not None else " (chunk_size null: the model's max_seq_length)"
            raise ConfigError(f"chunker.chunk_overlap: {problem}{where}")
        return size

    @property
    def splitter(self):
        if self._splitter is None:
            from langchain_text_splitters import RecursiveCharacterTextSplitter

            tokenizer = self.embeddings.tokenizer
            special = len(tokenizer("", add_special_tokens=True)["input_ids"])
            kwargs = {"separators": self.config.separators} if self.config.separators else {}
            self._special_tokens = special
            self._splitter = RecursiveCharacterTextSplitter(
                chunk_size=self.token_budget - special,
                chunk_overlap=self.config.chunk_overlap,
                length_function=lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]),
                **kwargs,
            )
        return self._splitter

    def split_text(self, text: str) -> list[tuple[str, int]]:
        pieces = self.splitter.split_text(text)
        fitted: list[str] = []
        for piece in pieces:
            fitted.extend(self._fit(piece))
        return _start_indices(text, fitted)

    def _fit(self, piece: str) -> list[str]:
        """Guarantee the limit: a piece the separators could not cut small enough is halved."""
        if self.embeddings.count_tokens([piece])[0] <= self.token_budget or len(piece) < 2:
            return [piece]
        middle = len(piece) // 2
        space = piece.rfind(" ", 0, middle)
        cut = space if space > 0 else middle
        return self._fit(piece[:cut]) + self._fit(piece[cut:].lstrip())
