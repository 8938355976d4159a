"""Where an ingest writes chunks: a list of sinks, all under the one write -> record -> delete order
that makes ingest crash-safe (see :mod:`rag_pipeline.indexing.sync`).

A sink holds chunks by id. The dense sink embeds them (through the embedding cache) into a
``VectorIndex``; the lexical sink indexes their text in a ``LexicalIndex`` (BM25) beside it, so hybrid
retrieval gets both indexes from one ingest, recorded, reconciled and swept together.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from langchain_core.documents import Document

from ..contracts import Embedder, LexicalIndex, VectorIndex
from .cache import EmbeddingCache, encode_with_cache
from .faults import crash_point
from .report import IngestReport


@runtime_checkable
class Sink(Protocol):
    """One index an ingest keeps in step with the record."""

    name: str

    @property
    def max_batch_size(self) -> int: ...

    def exists(self) -> bool: ...

    def count(self) -> int: ...

    def ids(self) -> set[str]: ...

    def existing_ids(self, ids: Sequence[str]) -> set[str]: ...

    def write(self, chunks: Sequence[Document], report: IngestReport) -> None:
        """Upsert ``chunks`` (each id once), whether or not the sink holds them already: a chunk's
        id is derived from its text and position, and its metadata may have changed."""
        ...

    def delete(self, ids: Sequence[str]) -> None: ...


class _IndexSink:
    """What every sink answers from the index it writes to; subclasses say how chunks get in."""

    def __init__(self, index: Any):
        self.index = index

    @property
    def max_batch_size(self) -> int:
        return self.index.max_batch_size

    def exists(self) -> bool:
        return self.index.exists()

    def count(self) -> int:
        return self.index.count()

    def ids(self) -> set[str]:
        return self.index.ids()

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        return self.index.existing_ids(ids)

    def delete(self, ids: Sequence[str]) -> None:
        self.index.delete(ids)


class DenseSink(_IndexSink):
    """Chunks -> vectors (embedding only what the cache lacks) -> a vector index."""

    name = "dense"

    def __init__(self, index: VectorIndex, embedder: Embedder, cache: Callable[[], EmbeddingCache | None]):
        super().__init__(index)
        self.embedder = embedder
        self._cache_factory = cache
        self._cache: EmbeddingCache | None = None
        self._cache_opened = False

    @property
    def cache(self) -> EmbeddingCache | None:
        # Opened on the first write: an ingest with nothing to embed never loads the model.
        if not self._cache_opened:
            self._cache, self._cache_opened = self._cache_factory(), True
        return self._cache

    def write(self, chunks: Sequence[Document], report: IngestReport) -> None:
        if not chunks:
            return
        report.truncated += count_truncated(self.embedder, chunks)
        # Longest first: the model pads each of its batches to the longest text in it.
        ordered = sorted(chunks, key=lambda chunk: len(chunk.page_content), reverse=True)
        vectors, embedded = encode_with_cache(self.embedder, [c.page_content for c in ordered], self.cache)
        crash_point("embedding")
        self.index.upsert(ordered, vectors)
        crash_point("writing")
        report.embedded += embedded
        report.added += len(ordered)


class LexicalSink(_IndexSink):
    """Chunks -> their texts -> a lexical index (nothing to embed)."""

    name = "lexical"

    def __init__(self, index: LexicalIndex):
        super().__init__(index)


    def write(self, chunks: Sequence[Document], report: IngestReport) -> None:
        if not chunks:
            return
        self.index.upsert_texts(chunks)
        crash_point("lexical")


def count_truncated(embedder: Any, chunks: Sequence[Document]) -> int:
    """Chunks longer than the model's ``max_seq_length``: the model would cut their tails."""
    limit = embedder.max_seq_length
    return sum(1 for n in embedder.count_tokens([c.page_content for c in chunks]) if n > limit)
