"""Composition only: a validated config in, stages built through the registry, a retriever out."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from tqdm.auto import tqdm

from .config import PipelineConfig, load_config
from .embeddings.cache import EmbeddingCache, encode_with_cache
from .errors import ConfigError
from .loaders.base import FileError
from .registry import lookup

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ``ingest()`` did. ``errors`` holds each unreadable source with its reason."""

    files_seen: int = 0
    files_loaded: int = 0
    documents: int = 0
    chunks: int = 0
    added: int = 0
    skipped: int = 0  # already in the collection (same id): not embedded again
    embedded: int = 0  # chunks that went through the model (the rest came from the embedding cache)
    truncated: int = 0  # chunks longer than the model's max_seq_length
    errors: list[FileError] = field(default_factory=list)
    collection_count: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = [{"source": e.source, "reason": e.reason} for e in self.errors]
        return data

    def summary(self) -> str:
        text = (
            f"{self.files_loaded}/{self.files_seen} files, {self.documents} documents, {self.chunks} chunks: "
            f"{self.added} added ({self.embedded} embedded, {self.added - self.embedded} from the embedding cache), "
            f"{self.skipped} already indexed; collection holds {self.collection_count} "
            f"({self.seconds:.1f}s)"
        )
        if self.errors:
            text += f"; {len(self.errors)} error(s)"
        return text


class Pipeline:
    """The configured pipeline: ``ingest()`` fills the index, ``as_retriever()`` searches it.

    >>> pipe = Pipeline.from_yaml("configs/quickstart.yaml")       # doctest: +SKIP
    >>> pipe.ingest().added                                         # doctest: +SKIP
    >>> pipe.as_retriever().invoke("how do I proof sourdough?")     # doctest: +SKIP

    Stages are built on first use, so building a pipeline only validates its config.
    """

    def __init__(self, config: PipelineConfig):
        self.config = config
        self._stages: dict[str, Any] = {}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "Pipeline":
        return cls(load_config(path, overrides))

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig | Mapping[str, Any],
        overrides: Mapping[str, Any] | None = None,
        base_dir: str | Path | None = None,
    ) -> "Pipeline":
        if isinstance(config, PipelineConfig):
            if overrides:
                return cls(load_config(config.to_dict(), overrides, base_dir or config.base_dir))
            return cls(config)
        return cls(load_config(config, overrides, base_dir))

    def _stage(self, kind: str, *dependencies: Any) -> Any:
        if kind not in self._stages:
            stage_config = getattr(self.config, kind)
            self._stages[kind] = lookup(kind, stage_config.type).builder(stage_config, *dependencies)
        return self._stages[kind]

    # -- stages ------------------------------------------------------------------------------------
    @property
    def loader(self):
        return self._stage("loader")

    @property
    def embeddings(self):
        """The LangChain ``Embeddings`` in use (query instruction on queries only)."""
        return self._stage("embeddings")

    @property
    def chunker(self):
        return self._stage("chunker", self.embeddings)

    @property
    def store(self):
        return self._stage("vectorstore", self.embeddings)

    @property
    def vectorstore(self):
        """LangChain's ``Chroma`` over the pipeline's collection."""
        return self.store.vectorstore

    @property
    def embedding_cache(self) -> EmbeddingCache | None:
        if "embedding_cache" not in self._stages:
            path = self.store.embedding_cache_path if self.embeddings.config.embedding_cache else None
            self._stages["embedding_cache"] = (
                EmbeddingCache(path, self.embeddings.fingerprint()) if path is not None else None
            )
        return self._stages["embedding_cache"]

    @property
    def reranker(self):
        return None if self.config.reranker is None else self._stage("reranker")

    # -- work --------------------------------------------------------------------------------------
    def ingest(self, show_progress: bool | None = None) -> IngestReport:
        """Load, chunk, embed what is new, and upsert it. Running it twice adds nothing."""
        started = time.perf_counter()
        loaded = self.loader.load(show_progress=show_progress)
        chunks = self.chunker.split_documents(loaded.documents)
        report = self.index_chunks(chunks, show_progress=show_progress)
        report.files_seen, report.files_loaded = loaded.files_seen, loaded.files_loaded
        report.documents, report.errors = len(loaded.documents), loaded.errors
        report.seconds = time.perf_counter() - started
        return report

    def index_chunks(self, chunks: list[Document], show_progress: bool | None = None) -> IngestReport:
        """Embed and write the chunks the collection does not hold yet, batch by batch."""
        unique = list({c.id: c for c in chunks}.values())  # the same chunk listed twice is one chunk
        existing = self.store.existing_ids([c.id for c in unique]) if unique else set()
        new = [c for c in unique if c.id not in existing]
        report = IngestReport(chunks=len(chunks), skipped=len(unique) - len(new))
        if new:
            report.truncated = self._count_truncated(new)
        if show_progress is None:
            show_progress = self.embeddings.config.show_progress
        batch = self.store.max_batch_size
        with tqdm(total=len(new), desc="Embedding", unit="chunk", disable=not show_progress or not new) as bar:
            for start in range(0, len(new), batch):
                part = new[start : start + batch]
                vectors, embedded = encode_with_cache(
                    self.embeddings, [c.page_content for c in part], self.embedding_cache
                )
                self.store.upsert(part, vectors)
                report.embedded += embedded
                report.added += len(part)
                bar.update(len(part))
        report.collection_count = self.store.count()
        return report

    def _count_truncated(self, chunks: list[Document]) -> int:
        limit = self.embeddings.max_seq_length
        counts = self.embeddings.count_tokens([c.page_content for c in chunks])
        truncated = sum(1 for n in counts if n > limit)
        if truncated:
            logger.warning(
                "%d of %d chunks are longer than the model's max_seq_length (%d tokens) and will be truncated; "
                "use chunker.type: tokens (or a smaller chunk_size) so every word stays searchable",
                truncated,
                len(chunks),
                limit,
            )
        return truncated

    def as_retriever(self, k: int | None = None) -> BaseRetriever:
        """A LangChain ``BaseRetriever``: ``invoke``, ``batch``, ``ainvoke`` and ``|`` all work.

        ``k`` overrides the number of results (``retriever.k``, or ``reranker.top_n``).
        """
        retriever_config = self.config.retriever
        return lookup("retriever", retriever_config.type).builder(retriever_config, self.store, self.reranker, k)

    def query(self, text: str, k: int | None = None) -> list[Document]:
        return self.as_retriever(k).invoke(text)

    def sample_queries(self) -> list[str]:
        """The queries the config lists for ``rag-pipeline run`` (inline, or a .txt/.jsonl file)."""
        source = self.config.sample_queries
        if source is None:
            return []
        if isinstance(source, list):
            return source
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"sample_queries: file not found: {path}")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.suffix == ".jsonl":
            return [json.loads(line)["query"] for line in lines]
        return lines
