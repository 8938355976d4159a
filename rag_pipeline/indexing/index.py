"""The index of one pipeline: its state (record, lock, embedding cache), its dense and lexical
indexes, and every way they change (ingest, reindex, documents from code) or are read as a whole
(sources, stats, export).

Every change opens one :class:`~.session.WriteSession` through :meth:`Index.writing`: the write
lock, the active collection, the index's identity check, the sinks and the record, in that order.
Ingest, reindex, the documents API and evaluation keep only their policy (what changed, what to
write). The stages come from the pipeline that owns the index, built on first use.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from langchain_core.documents import Document

from ..errors import ConfigError, DocumentError, IndexBusyError, IndexMismatchError, IndexNotFoundError
from . import inventory
from .cache import EmbeddingCache
from .documents import DocumentWriter, check_documents, check_text, chunk_source, copy_sources_from_code
from .generations import begin_reindex, finish_reindex, prepare_ingest
from .inventory import SourceInfo
from .record import RECORD_FILENAME, IndexRecord
from .report import IngestReport, SyncPlan
from .session import WriteSession
from .sinks import DenseSink, LexicalSink
from .state import IndexState
from .sync import Indexer, ingest_settings, plan_sync, warn_truncated
from .vectorstore import IndexedDocumentIndex, IndexedVectorStore

logger = logging.getLogger(__name__)

# In a store folder: which state directory keeps its record (two state directories over one
# store folder would each reconcile the store against a record that does not list the other's chunks).
STATE_MARKER = "rag_pipeline_state.json"

_REPORT_COUNTS = (
    "files_seen", "files_added", "files_updated", "files_unchanged", "files_loaded",
    "documents", "chunks", "added", "skipped", "embedded", "deleted", "truncated",
)


class Index:
    """``config``: the pipeline's validated config; ``stage(kind)``: its built stage of a kind;
    ``build_store``: a new vector index for another collection (reindex); ``reading_stages``: the
    loader and chunker built on a Ray worker (``ingest.engine: ray``)."""

    def __init__(
        self,
        config: Any,
        stage: Callable[[str], Any],
        *,
        build_store: Callable[[str], Any],
        reading_stages: Callable[[], tuple[Any, Any]] | None = None,
    ):
        self.config = config
        self._stage = stage
        self._build_store = build_store
        self._reading_stages = reading_stages
        self._state: IndexState | None = None
        self._embedding_cache: EmbeddingCache | None | bool = False  # False: not opened yet

    # -- what it is made of -------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        return self._stage("vectorstore")

    @property
    def lexical(self) -> Any:
        return self._stage("lexical")

    @property
    def embeddings(self) -> Any:
        return self._stage("embeddings")

    @property
    def state(self) -> IndexState:
        """Record, lock and embedding cache: in ``ingest.state_directory``, else beside the index."""
        if self._state is None:
            directory = self.config.ingest.state_directory
            if directory is not None:
                self._state = IndexState(directory)
            else:
                self._state = IndexState(
                    self.store.local_directory,
                    setting="vectorstore.persist_directory (ingest.state_directory is unset: the state lives in the index folder)",
                )
        return self._state

    @property
    def embedding_cache(self) -> EmbeddingCache | None:
        if self._embedding_cache is False:
            enabled = getattr(self.embeddings.config, "embedding_cache", True)  # a plugin embedder may not have it
            self._embedding_cache = self.state.embedding_cache(self.embeddings.cache_identity()) if enabled else None
        return self._embedding_cache

    def attach(self, kind: str, index: Any) -> None:
        """Make the dense (``vectorstore``) or ``lexical`` index serve the physical collection the
        record names active for ``vectorstore.collection``, asking again when the record changes
        (another process)."""
        logical = self.config.vectorstore.collection
        index.resolve_collection = lambda: self.state.active_collection(logical)
        index.change_token = self.state.change_token
        if kind == "lexical":  # a lexical index lives under the state directory
            directory = self.state.directory
            index.place(directory / "lexical" if directory is not None else None, index.resolve_collection())
        else:
            index.use_collection(index.resolve_collection())

    @property
    def settings(self) -> str:
        """What shaped a file's chunks. ``max_seq_length`` decides where the model cuts a chunk
        (and the tokens chunker's sizes), so a change re-chunks and re-embeds every file. (Left
        out while null, the model's own limit, so indexes from before this rule keep their files.)"""
        limit = getattr(self.config.embeddings, "max_seq_length", None)
        return ingest_settings(self.config.loader, self.config.chunker, {"max_seq_length": limit} if limit else None)

    # -- the write path ---------------------------------------------------------------------------------
    def sinks(
        self, store: Any, lexical: Any, embedder: Any = None, indexes: frozenset[str] = frozenset({"vectorstore", "lexical"})
    ) -> list[Any]:
        sinks: list[Any] = []
        if "vectorstore" in indexes:
            sinks.append(DenseSink(store, embedder or self.embeddings, lambda: self.embedding_cache))
        if lexical is not None and "lexical" in indexes:
            sinks.append(LexicalSink(lexical))
        return sinks

    @contextmanager
    def writing(
        self, *, recorded: bool = True, embedder: Any = None, indexes: frozenset[str] | None = None,
        lock_timeout: float | None = None,
    ) -> Iterator[WriteSession]:
        """The one way in for writes: the write lock, then the active collection (leftover
        generations dropped), the index's identity checked, the indexes' write sessions and the
        record. ``recorded=False``: a collection kept without a record (evaluation), written only
        in the ``indexes`` kinds given (default: every index the config has). ``lock_timeout``
        replaces ``ingest.lock_timeout``."""
        store, lexical = self.store, self.lexical
        with (
            self.state.lock(self.config.ingest.lock_timeout if lock_timeout is None else lock_timeout),
            store.writing(),
            lexical.writing() if lexical is not None else nullcontext(),
        ):
            if not recorded:
                chosen = self.sinks(store, lexical, embedder, indexes) if indexes is not None else self.sinks(store, lexical, embedder)
                session = WriteSession(sinks=chosen, record=None, collection=store.collection_name)
                yield session
                return
            with self.state.record() as record:
                self._check_identity(record)
                prepare_ingest(record, store, store.config.collection, beside=[lexical] if lexical is not None else ())
                session = WriteSession(
                    sinks=self.sinks(store, lexical, embedder), record=record,
                    collection=store.collection_name, settings=self.settings,
                )
                completed = False
                try:
                    yield session
                    completed = True
                finally:
                    session.close(completed=completed)

    def _identity(self) -> dict[str, str]:
        """The store a record's collection lives in. A folder is kept relative to the state
        directory, so that moving or copying the two together keeps them a pair."""
        store, state = self.store, self.state.directory
        location = store.location
        if store.local_directory is not None:
            folder = Path(store.local_directory).resolve()
            location = os.path.relpath(folder, Path(state).resolve()) if state is not None else str(folder)
        return {"store": store.config.type, "location": str(location) if location is not None else "memory"}

    def _check_identity(self, record: IndexRecord) -> None:
        """One state directory, one index: a record keeps the store that each logical collection
        lives in, and a store folder the state directory that keeps its record. A second config
        sharing either would reconcile one index against the other's record, so it is refused."""
        logical = self.config.vectorstore.collection
        ours = self._identity()
        key = f"index:{logical}"
        stored = record.get_meta(key)
        if stored is not None and json.loads(stored) != ours:
            theirs = json.loads(stored)
            raise IndexMismatchError(
                f"ingest.state_directory {self.state.directory} keeps collection {logical!r} of the "
                f"{theirs['store']} index at {theirs['location']}, not this config's {ours['store']} index at "
                f"{ours['location']} (folders relative to the state directory); give each index its own "
                "ingest.state_directory (or collection name)"
            )
        if stored is None:
            record.set_meta(key, json.dumps(ours, sort_keys=True))
        folder, state = self.store.local_directory, self.state.directory
        if folder is None or state is None:
            return
        folder = Path(folder).resolve()
        here = os.path.relpath(Path(state).resolve(), folder)
        marker = folder / STATE_MARKER
        try:
            named = json.loads(marker.read_text(encoding="utf-8")).get("state_directory")
        except (OSError, ValueError, AttributeError):
            named = None
        if named is not None and named != here and (folder / named / RECORD_FILENAME).is_file():
            raise IndexMismatchError(
                f"the index at {folder} is kept by the state directory {(folder / named).resolve()}, not this "
                f"config's ingest.state_directory {Path(state).resolve()}; point ingest.state_directory there, "
                "or give this config its own index folder"
            )
        if named != here:
            folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"state_directory": here}) + "\n", encoding="utf-8")

    # -- ingest and reindex --------------------------------------------------------------------------
    def ingest(self, show_progress: bool | None = None, *, prune_api: bool = False) -> IngestReport:
        started = time.perf_counter()
        self._check_engine()
        with self.writing(embedder=self._ingest_embedder()) as session:
            store = self.store
            if store.exists():
                store.check()  # a model or distance change is refused before any file is read, even if none changed
            report = self._indexer(session, self.config.ingest.cleanup, show_progress, prune_api).sync()
        return self._finish(report, started)

    def plan(self, *, prune_api: bool = False) -> SyncPlan:
        store = self.store
        if store.index_exists() and store.exists():
            store.check()  # a model or distance change is refused here as the real ingest would
        with self._reading_record() as record:
            return plan_sync(
                self._stage("loader"), record, store.collection_name, self.settings, self.config.ingest.cleanup, prune_api
            )

    def reindex(self, show_progress: bool | None = None) -> IngestReport:
        started = time.perf_counter()
        self._check_engine()
        store, lexical = self.store, self.lexical
        beside = [lexical] if lexical is not None else []
        logical = store.config.collection
        with self.state.lock(self.config.ingest.lock_timeout), self.state.record() as record:
            self._check_identity(record)
            new = begin_reindex(record, store, logical, beside=beside)
            building = self._build_store(new)
            building_lexical = lexical.for_collection(new) if lexical is not None else None
            with building.writing(), building_lexical.writing() if building_lexical is not None else nullcontext():
                session = WriteSession(
                    sinks=self.sinks(building, building_lexical, self._ingest_embedder()), record=record,
                    collection=new, settings=self.settings,
                )
                report = self._indexer(session, "full", show_progress).sync()
                copy_sources_from_code(store, store.collection_name, session, report)
                session.close(completed=True)
            with store.writing():
                finish_reindex(record, store, logical, new, beside=beside)
        return self._finish(report, started)

    def _finish(self, report: IngestReport, started: float) -> IngestReport:
        warn_truncated(report, self.embeddings.max_seq_length if report.truncated else 0)
        report.seconds = time.perf_counter() - started
        return report

    def _indexer(self, session: WriteSession, cleanup: str, show_progress: bool | None, prune_api: bool = False) -> Indexer:
        show_progress = self.config.loader.show_progress if show_progress is None else show_progress
        return Indexer(
            loader=self._stage("loader"),
            chunker=lambda: self._stage("chunker"),
            session=session,
            cleanup=cleanup,
            show_progress=show_progress,
            prune_api=prune_api,
            source=self._ray_source(show_progress),
        )

    def _check_engine(self) -> None:
        """``ingest.engine: ray`` needs Ray installed and an embedding cache: refused here, before
        the lock is taken or any file is read."""
        if self.config.ingest.engine != "ray":
            return
        from .ray_engine import CACHE_REQUIRED, require_ray  # Ray is imported only when chosen

        require_ray()
        if self.state.embedding_cache_path is None or not getattr(self.embeddings.config, "embedding_cache", True):
            raise ConfigError(CACHE_REQUIRED)

    def _ingest_embedder(self) -> Any:
        """The embedder the dense sink sees: the model here, or under Ray one that takes every
        vector from the cache the workers filled."""
        if self.config.ingest.engine != "ray":
            return self.embeddings
        from .ray_engine import CachedVectorsOnly

        return CachedVectorsOnly(self.embeddings)

    def _ray_source(self, show_progress: bool) -> Any:
        if self.config.ingest.engine != "ray":
            return None
        from .ray_engine import RayChunkSource

        return RayChunkSource(
            self.config.ingest.ray, stages=self._reading_stages, embeddings=self.embeddings,
            cache=lambda: self.embedding_cache, show_progress=show_progress,
        )

    def write_unrecorded(
        self, chunks: list[Document], show_progress: bool | None = None, *, report_truncated: bool = True
    ) -> IngestReport:
        """Write the chunks the indexes do not hold yet, keeping no record (collections you manage
        yourself): an ``ingest`` into the same collection removes them."""
        if show_progress is None:
            show_progress = self.embeddings.config.show_progress
        report = IngestReport(chunks=len(chunks), collection=self.store.collection_name)
        started = time.perf_counter()
        with self.writing(recorded=False) as session:
            session.write_missing(chunks, report, show_progress=show_progress)
        report.collection_count = self.store.count()
        if report_truncated:
            return self._finish(report, started)
        report.seconds = time.perf_counter() - started
        return report

    def recover(self) -> int | None:
        """Reconcile a collection that an interrupted write left marked dirty (a server killed
        during ``POST /documents``, a killed ingest), without reading the corpus: every index
        drops the chunks the record does not list, and unfinished deletions are retried. A server
        does this when it starts, so what a killed write upserted is never served; an ingest does
        the same and more. Returns how many chunk deletions it made, or None when nothing was
        marked, or another process holds the write lock (that writer reconciles when it commits)."""
        if self.state.record_path is None:
            return None
        with self._reading_record() as record:
            if record is None or not record.is_dirty(self.store.collection_name):
                return None
        try:
            with self.writing(lock_timeout=0) as session:
                if not session.record.is_dirty(session.collection):
                    return None  # another writer finished between the look and the lock
                session.was_dirty = False  # this session reconciles: the mark goes when it ends
                session.mark_dirty()
                removed = session.keep_only(session.record.chunk_ids(session.collection))
        except IndexBusyError:
            return None
        logger.warning(
            "collection %r was left mid-write by a process that stopped; removed %d chunks its record does not list",
            self.store.collection_name, removed,
        )
        return removed

    # -- documents from code ---------------------------------------------------------------------------
    def add_documents(self, documents: Sequence[Document], source: str | None) -> IngestReport:
        check_documents(documents, source)
        groups: dict[str, list[Document]] = {}
        for document in documents:
            name = source if source is not None else document.metadata.get("source")
            if not isinstance(name, str) or not name:
                raise DocumentError("add_documents: give source=..., or a metadata['source'] on every document")
            groups.setdefault(name, []).append(document)
        total = IngestReport()
        started = time.perf_counter()
        with self.document_writes() as writer:
            for name, group in groups.items():
                report = writer.add_source(name, group, chunk_source(self._stage("chunker"), name, group))
                for key in _REPORT_COUNTS:
                    setattr(total, key, getattr(total, key) + getattr(report, key))
            total.collection = writer.collection
        total.collection_count = self.store.count()
        return self._finish(total, started)

    def delete(self, *, source: str | Sequence[str] | None = None, ids: Sequence[str] | None = None) -> int:
        if (source is None) == (ids is None):
            raise DocumentError("delete: give either source=... or ids=...")
        check_text(source if source is not None else list(ids), "source" if source is not None else "ids")
        with self.document_writes() as writer:
            if source is not None:
                return writer.delete_sources([source] if isinstance(source, str) else list(source))
            return writer.delete_ids(list(ids))

    @contextmanager
    def document_writes(self) -> Iterator[DocumentWriter]:
        with self.writing() as session:
            yield DocumentWriter(session)

    def as_vectorstore(self) -> IndexedVectorStore:
        return IndexedVectorStore(self.embeddings, lambda: self.store, self.document_writes)

    def as_document_index(self, k: int = 4) -> IndexedDocumentIndex:
        return IndexedDocumentIndex(store=self.as_vectorstore(), k=k)

    # -- what it holds ---------------------------------------------------------------------------------
    def require(self) -> None:
        """Raise ``IndexNotFoundError`` when a persistent index has not been ingested yet."""
        store = self.store
        location = store.location  # a folder, a server's address, or None in memory
        if location is None:
            return  # in memory: an empty index is this process's own business
        searched = self.config.retriever.indexes_searched()
        if "vectorstore" in searched:
            if not store.index_exists() or not store.exists():
                raise IndexNotFoundError(
                    f"no index at {location} (collection {store.config.collection!r}); "
                    "run `rag-pipeline ingest CONFIG` first"
                )
            store.check()
        lexical = self.lexical
        if lexical is not None and "lexical" in searched and not lexical.exists():
            raise IndexNotFoundError(
                f"no lexical index for collection {store.collection_name!r} under {lexical.root} "
                "(the `lexical:` section is newer than the index); run `rag-pipeline ingest CONFIG` to build it"
            )

    def sources(self) -> list[SourceInfo]:
        self.require()
        with self._reading_record() as record:
            return inventory.sources(record, self.store.collection_name)

    def stats(self) -> dict[str, Any]:
        self.require()
        store, lexical, state = self.store, self.lexical, self.state
        collection = store.collection_name
        with self._reading_record() as record:
            listed = inventory.sources(record, collection)
            recorded = record.chunk_count(collection) if record is not None else 0
            last = inventory.last_ingest(record, collection)
        fingerprint = store.stored_fingerprint()
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
        self.require()
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
