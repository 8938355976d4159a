"""Composition only: a validated config in, stages built through the registry, a retriever out.

Which stages exist and what each builder receives come from ``registry.STAGE_KINDS``; index state
(record, lock, embedding cache, collection generations) is :mod:`rag_pipeline.indexing`'s; the
retrieval path is :mod:`rag_pipeline.retrieval`'s. This module wires them together.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from .config import PipelineConfig, load_config
from .errors import ConfigError, DocumentError, IndexNotFoundError
from .indexing.cache import EmbeddingCache
from .indexing import inventory
from .indexing.documents import DocumentWriter, copy_sources_from_code
from .indexing.inventory import SourceInfo
from .indexing.vectorstore import IndexedDocumentIndex, IndexedVectorStore
from .jsonl import read_json_objects
from .indexing.generations import begin_reindex, finish_reindex, prepare_ingest
from .indexing.record import IndexRecord
from .indexing.report import IngestReport, SyncPlan
from .indexing.state import IndexState
from .indexing.sinks import DenseSink, LexicalSink
from .indexing.sync import Indexer, ingest_settings, plan_sync, warn_truncated, write_chunks
from .models import ResolvedModel, resolve_model
from .registry import KINDS, STAGE_KINDS, lookup
from .stage_config import named_models


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
        self._state: IndexState | None = None
        self._embedding_cache: EmbeddingCache | None | bool = False  # False: not opened yet

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

    def stage(self, kind: str) -> Any:
        """The built stage of a kind (None for an optional kind the config leaves out), built once
        with the stages it needs (``registry.STAGE_KINDS``)."""
        if kind not in self._stages:
            stage_config = self.config.stage_config(kind)
            if stage_config is None:
                self._stages[kind] = None
            else:
                needed = [self.stage(name) for name in KINDS[kind].needs]
                self._stages[kind] = lookup(kind, stage_config.type).builder(stage_config, *needed)
                if kind == "vectorstore":
                    self._serve_active_collection(self._stages[kind])
                elif kind == "lexical":
                    self._place_lexical(self._stages[kind], self.store.collection_name)
        return self._stages[kind]

    def _follow_active_collection(self, index: Any) -> None:
        """An index serves the physical collection the record names active for
        ``vectorstore.collection``, and asks again when the record changes (another process)."""
        logical = self.stage("vectorstore").config.collection
        index.resolve_collection = lambda: self.state.active_collection(logical)
        index.change_token = self.state.change_token

    def _serve_active_collection(self, store: Any) -> None:
        self._follow_active_collection(store)
        store.use_collection(store.resolve_collection())

    def _place_lexical(self, lexical: Any, collection: str) -> None:
        """The lexical index lives under the state directory, one per physical collection
        (``<state>/lexical/<collection>/``), and follows the active one as the vector store does."""
        self._follow_active_collection(lexical)
        directory = self.state.directory
        lexical.place(directory / "lexical" if directory is not None else None, collection)

    # -- stages ------------------------------------------------------------------------------------
    @property
    def loader(self):
        return self.stage("loader")

    @property
    def embeddings(self):
        """The LangChain ``Embeddings`` in use (query instruction on queries only)."""
        return self.stage("embeddings")

    @property
    def chunker(self):
        return self.stage("chunker")

    @property
    def store(self):
        """The vector index (``vectorstore:`` section)."""
        return self.stage("vectorstore")

    @property
    def vectorstore(self) -> IndexedVectorStore:
        """A LangChain ``VectorStore`` over the pipeline's index whose writes are recorded (kept by
        ``ingest``): see :meth:`as_vectorstore`. LangChain's own ``Chroma`` over the same
        collection is ``pipe.store.vectorstore``; writes through that one are not recorded, and
        the next ingest removes them."""
        return self.as_vectorstore()

    @property
    def reranker(self):
        return self.stage("reranker")

    @property
    def lexical(self):
        """The lexical (BM25) index (``lexical:`` section), or None."""
        return self.stage("lexical")

    @property
    def state(self) -> IndexState:
        """Record, lock and embedding cache: in ``ingest.state_directory``, else beside the index."""
        if self._state is None:
            directory = self.config.ingest.state_directory
            if directory is None:
                directory = self.stage("vectorstore").local_directory
            # (building the store above may already have asked for the state: keep that one)
            if self._state is None:
                self._state = IndexState(directory)
        return self._state

    @property
    def embedding_cache(self) -> EmbeddingCache | None:
        if self._embedding_cache is False:
            enabled = getattr(self.embeddings.config, "embedding_cache", True)
            self._embedding_cache = self.state.embedding_cache(self.embeddings.cache_identity()) if enabled else None
        return self._embedding_cache

    # -- work --------------------------------------------------------------------------------------
    def preflight(self) -> dict[str, ResolvedModel]:
        """Find the files of every model the config names (embedder, reranker, any stage's
        ``ModelReference``), loading none, by dotted key: a missing one raises
        ``ModelNotAvailableError`` with its remedy in seconds, before any source file is read."""
        found: dict[str, ResolvedModel] = {}
        for kind in STAGE_KINDS:
            stage_config = self.config.stage_config(kind.name)
            if stage_config is None:
                continue
            cache_folder = getattr(stage_config, "cache_folder", None)
            for field, reference in named_models(stage_config).items():
                key = f"{kind.name}.{field}"
                found[key] = resolve_model(reference, what=key, cache_folder=cache_folder)
        return found

    def ingest(self, show_progress: bool | None = None, *, prune_api: bool = False) -> IngestReport:
        """Bring the index in step with the sources: new files added, changed files' chunks
        replaced, deleted files' chunks removed (``ingest.cleanup``). Unchanged files are skipped
        unread, so running it twice adds nothing and costs little. Safe to kill at any point: the
        next run finishes the job (see :mod:`rag_pipeline.indexing.sync`). One ingest at a time
        per index folder; queries keep answering meanwhile. Documents added from code
        (:meth:`add_documents`, :attr:`vectorstore`) are kept unless ``prune_api``.
        """
        started = time.perf_counter()
        self.preflight()
        self._check_engine()
        store, lexical = self.store, self.lexical
        with (
            self.state.lock(self.config.ingest.lock_timeout),
            store.writing(),
            lexical.writing() if lexical is not None else nullcontext(),
            self.state.record() as record,
        ):
            prepare_ingest(record, store, store.config.collection, beside=[lexical] if lexical is not None else ())
            if store.exists():
                store.check()  # a model or distance change is refused before any file is read, even if none changed
            report = self._indexer(store, record, self.config.ingest.cleanup, show_progress, lexical, prune_api=prune_api).sync()
        warn_truncated(report, self.embeddings.max_seq_length if report.truncated else 0)
        report.seconds = time.perf_counter() - started
        return report

    def plan(self, *, prune_api: bool = False) -> SyncPlan:
        """What ``ingest()`` would add, update and remove, by file (``ingest --dry-run``).

        Reads the record and the files' stat (hashing files whose stat changed) and checks that the
        index was built with this embedding setup, as ``ingest`` would; writes nothing, creates
        nothing, loads no model.
        """
        store = self.store
        if store.index_exists() and store.exists():
            store.check()  # a model or distance change is refused here as the real ingest would
        record = self.state.read_record()
        try:
            return plan_sync(
                self.loader, record, store.collection_name, self._settings(), self.config.ingest.cleanup, prune_api
            )
        finally:
            if record is not None and self.state.record_path is not None:
                record.close()

    def reindex(self, show_progress: bool | None = None) -> IngestReport:
        """Re-embed every source with the configured model into a new collection, then switch
        ``vectorstore.collection`` to it in one step; the old one is retired and dropped by the next
        ingest or reindex (a reader in another process may be mid-query on it).

        The old collection keeps serving queries until the new one is complete; a reindex that is
        killed leaves the old one in service, and its half-built collection is dropped by the next
        ingest or reindex. Vectors already in the embedding cache for this model are not recomputed.
        The new collection mirrors the sources as they are now (``cleanup: full``).
        """
        started = time.perf_counter()
        self.preflight()
        self._check_engine()
        store, lexical = self.store, self.lexical
        beside = [lexical] if lexical is not None else []
        logical = store.config.collection
        with self.state.lock(self.config.ingest.lock_timeout), self.state.record() as record:
            new = begin_reindex(record, store, logical, beside=beside)
            building = lookup("vectorstore", store.config.type).builder(store.config, self.embeddings)
            building.use_collection(new)
            # the new generation's own lexical index, beside the serving one
            building_lexical = lexical.for_collection(new) if lexical is not None else None
            with building.writing(), building_lexical.writing() if building_lexical is not None else nullcontext():
                report = self._indexer(building, record, "full", show_progress, building_lexical).sync()
                copy_sources_from_code(
                    record, store, store.collection_name, new, self._document_sinks(building, building_lexical), report
                )
            with store.writing():
                finish_reindex(record, store, logical, new, beside=beside)
        warn_truncated(report, self.embeddings.max_seq_length if report.truncated else 0)
        report.seconds = time.perf_counter() - started
        return report

    def index_chunks(
        self, chunks: list[Document], show_progress: bool | None = None, *, report_truncated: bool = True
    ) -> IngestReport:
        """Embed and write the chunks the collection does not hold yet, batch by batch (and, with a
        ``lexical:`` section, index the texts the lexical index does not hold yet).

        A primitive for collections you manage yourself (evaluation): it keeps no record and takes
        no lock. Chunks written this way are not ingest's: an ``ingest()`` into the same collection
        removes them. ``report_truncated=False``: no warning about chunks the model will cut (a
        caller that cuts on purpose, as evaluation does to match BEIR/MTEB, reports them itself).
        """
        if show_progress is None:
            show_progress = self.embeddings.config.show_progress
        report = IngestReport(chunks=len(chunks), collection=self.store.collection_name)
        with self.store.writing():
            write_chunks(
                self.store, self.embeddings, lambda: self.embedding_cache, chunks, report, show_progress=show_progress
            )
        lexical = self.lexical
        if lexical is not None:
            with lexical.writing():
                unique = {c.id: c for c in chunks}
                missing = unique.keys() - lexical.ids()
                lexical.upsert_texts([unique[i] for i in sorted(missing)])
        if report_truncated:
            warn_truncated(report, self.embeddings.max_seq_length if report.truncated else 0)
        report.collection_count = self.store.count()
        return report

    # -- indexing helpers --------------------------------------------------------------------------
    def _settings(self) -> str:
        # max_seq_length decides where the model cuts a chunk (and the tokens chunker's sizes): a
        # change must re-chunk and re-embed every file, so it is part of what shaped a file's chunks.
        # (Left out while null, the model's own limit, so indexes from before this rule keep their files.)
        limit = getattr(self.config.embeddings, "max_seq_length", None)
        return ingest_settings(self.config.loader, self.config.chunker, {"max_seq_length": limit} if limit else None)

    def _indexer(
        self, store, record: IndexRecord, cleanup: str, show_progress: bool | None, lexical: Any = None,
        prune_api: bool = False,
    ) -> Indexer:
        show_progress = self.config.loader.show_progress if show_progress is None else show_progress
        source, embedder = self._ingest_engine(show_progress)
        sinks: list[Any] = [DenseSink(store, embedder, lambda: self.embedding_cache)]
        if lexical is not None:
            sinks.append(LexicalSink(lexical))
        return Indexer(
            loader=self.loader,
            chunker=lambda: self.chunker,
            sinks=sinks,
            collection=store.collection_name,
            record=record,
            settings=self._settings(),
            cleanup=cleanup,
            show_progress=show_progress,
            prune_api=prune_api,
            source=source,
        )

    def _check_engine(self) -> None:
        """``ingest.engine: ray`` needs Ray installed and an embedding cache: refused here, before
        the lock is taken or any file is read."""
        if self.config.ingest.engine != "ray":
            return
        from .indexing.ray_engine import CACHE_REQUIRED, require_ray  # Ray is imported only when chosen

        require_ray()
        if self.state.embedding_cache_path is None or not getattr(self.embeddings.config, "embedding_cache", True):
            raise ConfigError(CACHE_REQUIRED)

    def _ingest_engine(self, show_progress: bool) -> tuple[Any, Any]:
        """Who reads, chunks and embeds the files an ingest (re)indexes, and the embedder the dense
        sink sees: (None, the embeddings) for this process; Ray's chunk source and a cache-only embedder."""
        if self.config.ingest.engine != "ray":
            return None, self.embeddings
        from .indexing.ray_engine import CachedVectorsOnly, RayChunkSource

        source = RayChunkSource(
            self.config.ingest.ray,
            stages=functools.partial(reading_stages, self.config),
            embeddings=self.embeddings,
            cache=lambda: self.embedding_cache,
            show_progress=show_progress,
        )
        return source, CachedVectorsOnly(self.embeddings)

    # -- documents from code ---------------------------------------------------------------------------
    def add_documents(self, documents: Sequence[Document], source: str | None = None) -> IngestReport:
        """Index documents given from code as one source, through the configured chunker,
        embeddings and sinks (dense, and lexical with ``lexical:``), under the write lock and in
        ingest's crash-safe order.

        The documents are the whole of ``source``: adding the same ones again writes nothing,
        adding others replaces the source's chunks (unchanged chunks keep their ids and vectors).
        Without ``source``, documents are grouped by ``metadata["source"]``. Recorded as added
        from code: ``ingest`` keeps them; :meth:`delete` (or ``ingest --prune-api``) removes them.
        """
        groups: dict[str, list[Document]] = {}
        for document in documents:
            name = source if source is not None else document.metadata.get("source")
            if not isinstance(name, str) or not name:
                raise DocumentError("add_documents: give source=..., or a metadata['source'] on every document")
            groups.setdefault(name, []).append(document)
        total = IngestReport()
        started = time.perf_counter()
        with self._document_writes() as writer:
            for name, group in groups.items():
                report = writer.add_source(name, group, self._chunk_source(name, group))
                for key in ("files_seen", "files_added", "files_updated", "files_unchanged", "files_loaded",
                            "documents", "chunks", "added", "skipped", "embedded", "deleted", "truncated"):
                    setattr(total, key, getattr(total, key) + getattr(report, key))
            total.collection = writer.collection
        total.collection_count = self.store.count()
        total.seconds = time.perf_counter() - started
        warn_truncated(total, self.embeddings.max_seq_length if total.truncated else 0)
        return total

    def delete(self, *, source: str | Sequence[str] | None = None, ids: Sequence[str] | None = None) -> int:
        """Remove documents added from code: whole sources, or chunks by id. Returns the number of
        chunks the record listed that were removed. Files under ``loader.path`` are the folder's:
        delete or exclude the file and run ``ingest``."""
        if (source is None) == (ids is None):
            raise DocumentError("delete: give either source=... or ids=...")
        with self._document_writes() as writer:
            if source is not None:
                return writer.delete_sources([source] if isinstance(source, str) else list(source))
            return writer.delete_ids(list(ids))

    def as_vectorstore(self) -> IndexedVectorStore:
        """The index as a LangChain ``VectorStore``: ``add_documents`` (each document one entry under
        its id), ``delete(ids)``, ``get_by_ids``, ``similarity_search(_with_score)`` and their async
        twins. Writes are recorded as added from code, so ``ingest`` keeps them."""
        return IndexedVectorStore(self.embeddings, lambda: self.store, self._document_writes)

    def as_document_index(self, k: int = 4) -> IndexedDocumentIndex:
        """The index as LangChain's (beta) ``DocumentIndex``, over :meth:`as_vectorstore`: ``upsert``,
        ``delete``, ``get`` by id, and ``invoke(query)`` for the ``k`` nearest entries."""
        return IndexedDocumentIndex(store=self.as_vectorstore(), k=k)

    def _chunk_source(self, source: str, documents: Sequence[Document]) -> list[Document]:
        """Chunks of a source's documents; a document's ``doc_id`` is its id, its own
        ``metadata['doc_id']``, or the source (``source#n`` for the n-th after the first, so that
        appending a document keeps the others' chunk ids)."""
        prepared = []
        for number, document in enumerate(documents):
            doc_id = document.id or document.metadata.get("doc_id") or (f"{source}#{number}" if number else source)
            metadata = {**document.metadata, "source": source, "doc_id": doc_id}
            prepared.append(Document(page_content=document.page_content, metadata=metadata))
        return self.chunker.split_documents(prepared)

    def _document_sinks(self, store: Any, lexical: Any) -> list[Any]:
        sinks: list[Any] = [DenseSink(store, self.embeddings, lambda: self.embedding_cache)]
        if lexical is not None:
            sinks.append(LexicalSink(lexical))
        return sinks

    @contextmanager
    def _document_writes(self) -> Iterator[DocumentWriter]:
        """A write session for documents from code: the same lock, write sessions and record as ingest."""
        store, lexical = self.store, self.lexical
        with (
            self.state.lock(self.config.ingest.lock_timeout),
            store.writing(),
            lexical.writing() if lexical is not None else nullcontext(),
            self.state.record() as record,
        ):
            prepare_ingest(record, store, store.config.collection, beside=[lexical] if lexical is not None else ())
            with DocumentWriter(
                sinks=self._document_sinks(store, lexical), record=record, collection=store.collection_name,
                settings=self._settings(),
            ) as writer:
                yield writer

    # -- what the index holds ------------------------------------------------------------------------
    def sources(self) -> list[SourceInfo]:
        """Every source of the index (files and documents added from code), with its origin, chunk
        count and when it was last written (``rag-pipeline ls``)."""
        self.require_index()
        with self._reading_record() as record:
            return inventory.sources(record, self.store.collection_name)

    def stats(self) -> dict[str, Any]:
        """Collection, model, stored fingerprint, counts and bytes on disk (``rag-pipeline stats``)."""
        self.require_index()
        store, lexical, state = self.store, self.lexical, self.state
        collection = store.collection_name
        with self._reading_record() as record:
            listed = inventory.sources(record, collection)
            recorded = record.chunk_count(collection) if record is not None else 0
            last = inventory.last_ingest(record, collection)
        fingerprint = store.stored_fingerprint() if hasattr(store, "stored_fingerprint") else None
        state_files = {
            "record": state.record_path,
            "embedding_cache": state.embedding_cache_path,
            "lexical": lexical.root / collection if lexical is not None and lexical.root is not None else None,
        }
        return {
            "collection": store.config.collection,
            "physical_collection": collection,
            "model": (fingerprint or {}).get("model"),
            "fingerprint": fingerprint,
            "index_directory": str(store.local_directory) if store.local_directory is not None else None,
            "chunks": store.count(),
            "recorded_chunks": recorded,
            "lexical_chunks": lexical.count() if lexical is not None else None,
            "sources": {origin: sum(1 for s in listed if s.origin == origin) for origin in ("folder", "api")},
            "last_ingest": last,
            "disk_bytes": inventory.disk_usage(store.local_directory, state_files),
        }

    def export(self, *, vectors: bool = False) -> Iterator[dict[str, Any]]:
        """Every chunk as ``{"id", "content", "metadata", "source", "origin"}`` (and ``"vector"``),
        read page by page (``rag-pipeline export``)."""
        self.require_index()
        with self._reading_record() as record:
            yield from inventory.export_chunks(self.store, record, self.store.collection_name, vectors=vectors)

    @contextmanager
    def _reading_record(self) -> Iterator[IndexRecord | None]:
        record = self.state.read_record()
        try:
            yield record
        finally:
            if record is not None and self.state.record_path is not None:
                record.close()

    # -- retrieval -----------------------------------------------------------------------------------
    def as_retriever(
        self, k: int | None = None, *, filter: dict[str, Any] | None = None, k_name: str = "k"
    ) -> BaseRetriever:
        """A LangChain ``BaseRetriever``: ``invoke``, ``batch``, ``ainvoke`` and ``|`` all work.

        ``k`` overrides the number of results (``retriever.k``, or ``reranker.top_n``); ``k_name``
        is how the caller's user wrote it, for the error message (the CLI passes ``--k``).
        ``filter`` replaces ``retriever.filter`` (``{}``: none). Each call may set ``k``, ``filter``
        and ``top_n`` again (``invoke(q, k=1)``, ``config={"configurable": {"k": 1}}``); retrievers
        of one pipeline share its loaded models.
        Refuses, creating nothing, when the configured index does not exist yet.
        """
        self.require_index()
        retriever_config = self.config.retriever
        needed = [self.stage(name) for name in KINDS["retriever"].needs]
        retriever = lookup("retriever", retriever_config.type).builder(retriever_config, *needed, k=k, k_name=k_name)
        if filter is not None:
            retriever.filter = filter
        return retriever

    def require_index(self) -> None:
        """Raise ``IndexNotFoundError`` when a persistent index has not been ingested yet."""
        store = self.store
        location = getattr(store, "location", store.local_directory)  # a server has no local folder
        if location is None:
            return  # in memory: an empty index is this process's own business
        if not store.index_exists() or not store.exists():
            raise IndexNotFoundError(
                f"no index at {location} (collection {store.config.collection!r}); "
                "run `rag-pipeline ingest CONFIG` first"
            )
        store.check()
        lexical = self.lexical
        if lexical is not None and not lexical.exists():
            raise IndexNotFoundError(
                f"no lexical index for collection {store.collection_name!r} under {lexical.root} "
                "(the `lexical:` section is newer than the index); run `rag-pipeline ingest CONFIG` to build it"
            )

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
        if path.suffix == ".jsonl":
            records = read_json_objects(path, ("query",), label="sample_queries: ")
            return [str(record["query"]) for record in records]
        lines = path.read_text(encoding="utf-8").split("\n")
        return [line.strip() for line in lines if line.strip()]


def reading_stages(config: PipelineConfig) -> tuple[Any, Any]:
    """The loader and chunker, built from the config on a Ray worker (``ingest.engine: ray``)."""
    pipe = Pipeline(config)
    return pipe.loader, pipe.chunker
