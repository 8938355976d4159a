"""Composition only: a validated config in, stages built through the registry, a retriever out."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from .config import PipelineConfig, load_config
from .embeddings.cache import EmbeddingCache
from .errors import ConfigError
from .indexing.lock import index_lock
from .indexing.record import IndexRecord
from .indexing.report import IngestReport, SyncPlan
from .indexing.sync import Indexer, collect_garbage, ingest_settings, next_collection_name, plan_sync, warn_truncated, write_chunks
from .registry import lookup

logger = logging.getLogger(__name__)


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
                EmbeddingCache(path, self.embeddings.cache_identity()) if path is not None else None
            )
        return self._stages["embedding_cache"]

    @property
    def reranker(self):
        return None if self.config.reranker is None else self._stage("reranker")

    # -- work --------------------------------------------------------------------------------------
    def ingest(self, show_progress: bool | None = None) -> IngestReport:
        """Bring the index in step with the sources: new files added, changed files' chunks
        replaced, deleted files' chunks removed (``ingest.cleanup``). Unchanged files are skipped
        unread, so running it twice adds nothing and costs little. Safe to kill at any point: the
        next run finishes the job (see :mod:`rag_pipeline.indexing.sync`). One ingest at a time
        per index folder; queries keep answering meanwhile.
        """
        started = time.perf_counter()
        store = self.store
        with index_lock(store.lock_path, self.config.ingest.lock_timeout), self._index_record() as record:
            logical = store.config.collection
            active = record.active_collection(logical) or logical
            if active != store.collection_name:  # another process reindexed since we opened it
                store.use_collection(active)
            if active not in record.collections(logical):  # an index from before the record, or a new one
                record.add_collection(active, logical, "active")
            collect_garbage(record, store, logical, keep=active)
            report = self._indexer(store, record, self.config.ingest.cleanup, show_progress).sync()
        report.seconds = time.perf_counter() - started
        return report

    def plan(self) -> SyncPlan:
        """What ``ingest()`` would add, update and remove, by file (``ingest --dry-run``).

        Reads the record and the files' stat (hashing files whose stat changed); writes nothing,
        creates nothing, loads no model.
        """
        store = self.store
        record = IndexRecord.open_existing(store.record_path) if store.record_path else self._stages.get("record")
        try:
            return plan_sync(self.loader, record, store.collection_name, self._settings(), self.config.ingest.cleanup)
        finally:
            if record is not None and store.record_path is not None:
                record.close()

    def reindex(self, show_progress: bool | None = None) -> IngestReport:
        """Re-embed every source with the configured model into a new collection, then switch
        ``vectorstore.collection`` to it in one step and drop the old one.

        The old collection keeps serving queries until the new one is complete; a reindex that is
        killed leaves the old one in service, and its half-built collection is dropped by the next
        ingest or reindex. Vectors already in the embedding cache for this model are not recomputed.
        The new collection mirrors the sources as they are now (``cleanup: full``).
        """
        started = time.perf_counter()
        store = self.store
        with index_lock(store.lock_path, self.config.ingest.lock_timeout), self._index_record() as record:
            logical = store.config.collection
            current = record.active_collection(logical) or (logical if store.exists_named(logical) else None)
            if current is not None:
                record.add_collection(current, logical, "active")
            collect_garbage(record, store, logical, keep=current)
            new = next_collection_name(logical, store.collection_names() | record.known_collection_names())
            record.add_collection(new, logical, "building")
            building = lookup("vectorstore", store.config.type).builder(store.config, self.embeddings)
            building.use_collection(new)
            report = self._indexer(building, record, "full", show_progress).sync()
            retired = record.switch(logical, new)
            store.use_collection(new)
            for old in retired:
                store.drop_collection(old)
                record.forget_collection(old)
        report.seconds = time.perf_counter() - started
        return report

    def index_chunks(self, chunks: list[Document], show_progress: bool | None = None) -> IngestReport:
        """Embed and write the chunks the collection does not hold yet, batch by batch.

        A primitive for collections you manage yourself (evaluation): it keeps no record and takes
        no lock. Chunks written this way are not ingest's: an ``ingest()`` into the same collection
        removes them.
        """
        if show_progress is None:
            show_progress = self.embeddings.config.show_progress
        report = IngestReport(chunks=len(chunks), collection=self.store.collection_name)
        write_chunks(
            self.store, self.embeddings, lambda: self.embedding_cache, chunks, report, show_progress=show_progress
        )
        warn_truncated(report, self.embeddings.max_seq_length if report.truncated else 0)
        report.collection_count = self.store.count()
        return report

    # -- indexing helpers --------------------------------------------------------------------------
    def _settings(self) -> str:
        return ingest_settings(self.config.loader, self.config.chunker)

    def _indexer(self, store, record: IndexRecord, cleanup: str, show_progress: bool | None) -> Indexer:
        return Indexer(
            loader=self.loader,
            chunker=lambda: self.chunker,
            embeddings=self.embeddings,
            store=store,
            cache=lambda: self.embedding_cache,
            record=record,
            settings=self._settings(),
            cleanup=cleanup,
            show_progress=self.config.loader.show_progress if show_progress is None else show_progress,
        )

    @contextmanager
    def _index_record(self) -> Iterator[IndexRecord]:
        """The writable record: a file beside a persistent index, or this pipeline's own in memory."""
        path = self.store.record_path
        if path is None:
            if "record" not in self._stages:
                self._stages["record"] = IndexRecord(None)
            yield self._stages["record"]
            return
        with IndexRecord(path) as record:
            yield record

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
