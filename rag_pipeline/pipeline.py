"""Composition only: a validated config in, stages built through the registry, a retriever out.

Which stages exist and what each builder receives come from ``registry.STAGE_KINDS``; the index
(state, dense and lexical indexes, every write, ingest and reindex) is
:class:`~rag_pipeline.indexing.index.Index`'s; the retrieval path is :mod:`rag_pipeline.retrieval`'s.
This module wires them together.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from .config import PipelineConfig, as_config, read_sample_queries
from .errors import ConfigError
from .indexing.index import Index
from .indexing.inventory import SourceInfo
from .indexing.report import IngestReport, SyncPlan
from .indexing.state import IndexState
from .indexing.vectorstore import IndexedDocumentIndex, IndexedVectorStore
from .models import ResolvedModel, resolve_model
from .registry import KINDS, STAGE_KINDS, lookup
from .stage_config import named_models


class _StageView:
    """A read-only attribute of :class:`Pipeline` that is its built stage of one kind."""

    def __init__(self, kind: str, doc: str):
        self.kind, self.__doc__ = kind, doc

    def __get__(self, pipeline: "Pipeline | None", owner: type) -> Any:
        return self if pipeline is None else pipeline.stage(self.kind)


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
        self.index = Index(
            config, self.stage, build_store=self._build_store,
            reading_stages=functools.partial(reading_stages, config),
        )

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "Pipeline":
        return cls(as_config(path, overrides))

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig | Mapping[str, Any],
        overrides: Mapping[str, Any] | None = None,
        base_dir: str | Path | None = None,
    ) -> "Pipeline":
        return cls(as_config(config, overrides, base_dir))

    def stage(self, kind: str) -> Any:
        """The built stage of a kind (None for an optional kind the config leaves out), built once
        with the stages it needs (``registry.STAGE_KINDS``); the indexes then serve the
        collection the record names active."""
        if kind not in self._stages:
            stage_config = self.config.stage_config(kind)
            if stage_config is None:
                self._stages[kind] = None
            else:
                needed = [self.stage(name) for name in KINDS[kind].needs]
                self._stages[kind] = lookup(kind, stage_config.type).builder(stage_config, *needed)
                if KINDS[kind].indexes:
                    self.index.attach(kind, self._stages[kind])
        return self._stages[kind]

    def reader(self, stages: Mapping[str, Any] | None = None) -> "Pipeline":
        """Another view of the index for another thread: the same loaded models, its own index views
        (vector store, lexical index, record check). ``stages`` replaces built stages by kind (an
        embedder that batches several threads' calls). An in-memory index has no second view."""
        if self.state.record_path is None:
            raise ConfigError(
                "an in-memory index has no second view: give vectorstore.persist_directory (or a Chroma server) "
                "to read it from several threads"
            )
        view = Pipeline(self.config)
        replaced = dict(stages or {})
        for kind in STAGE_KINDS:
            if kind.name in replaced:
                view._stages[kind.name] = replaced[kind.name]
            elif not _reads_an_index(kind.name):
                view._stages[kind.name] = self.stage(kind.name)
        return view

    def _build_store(self, collection: str) -> Any:
        """A second vector index of the configured kind on another physical collection (reindex)."""
        store = lookup("vectorstore", self.config.vectorstore.type).builder(self.config.vectorstore, self.embeddings)
        store.use_collection(collection)
        return store

    # -- stages ------------------------------------------------------------------------------------
    loader = _StageView("loader", "The loader (``loader:`` section).")
    embeddings = _StageView("embeddings", "The LangChain ``Embeddings`` in use (query instruction on queries only).")
    chunker = _StageView("chunker", "The chunker (``chunker:`` section).")
    store = _StageView("vectorstore", "The vector index (``vectorstore:`` section).")
    reranker = _StageView("reranker", "The cross-encoder (``reranker:`` section), or None.")
    lexical = _StageView("lexical", "The lexical (BM25) index (``lexical:`` section), or None.")

    @property
    def vectorstore(self) -> IndexedVectorStore:
        """A LangChain ``VectorStore`` over the pipeline's index whose writes are recorded (kept by
        ``ingest``): see :meth:`as_vectorstore`. LangChain's own ``Chroma`` over the same
        collection is ``pipe.store.vectorstore``; writes through that one are not recorded, and
        the next ingest removes them."""
        return self.as_vectorstore()

    @property
    def state(self) -> IndexState:
        """Record, lock and embedding cache: in ``ingest.state_directory``, else beside the index."""
        return self.index.state

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
        """Bring the index in step with the sources (unchanged files skipped unread; safe to kill:
        the next run finishes the job, :mod:`rag_pipeline.indexing.sync`). Documents added from
        code are kept unless ``prune_api``."""
        self.preflight()
        return self.index.ingest(show_progress, prune_api=prune_api)

    def plan(self, *, prune_api: bool = False) -> SyncPlan:
        """What ``ingest()`` would do, by file (``ingest --dry-run``); writes and loads nothing."""
        return self.index.plan(prune_api=prune_api)

    def reindex(self, show_progress: bool | None = None) -> IngestReport:
        """Re-embed every source into a new collection, then switch to it in one step; the old one
        serves until then (:mod:`rag_pipeline.indexing.generations`)."""
        self.preflight()
        return self.index.reindex(show_progress)

    def index_chunks(
        self, chunks: list[Document], show_progress: bool | None = None, *, report_truncated: bool = True
    ) -> IngestReport:
        """Embed and write the chunks the collection does not hold yet (and, with a ``lexical:``
        section, the texts the lexical index lacks), keeping no record: a primitive for
        collections you manage yourself (evaluation). An ``ingest()`` into the same collection
        removes them. ``report_truncated=False``: no warning about chunks the model will cut."""
        return self.index.write_unrecorded(chunks, show_progress, report_truncated=report_truncated)

    # -- documents from code ---------------------------------------------------------------------------
    def add_documents(self, documents: Sequence[Document], source: str | None = None) -> IngestReport:
        """Index documents given from code as the whole of ``source`` (else grouped by
        ``metadata["source"]``), through ingest's write path; adding the same ones again writes
        nothing. ``ingest`` keeps them; :meth:`delete` removes them (``docs/documents.md``)."""
        return self.index.add_documents(documents, source)

    def delete(self, *, source: str | Sequence[str] | None = None, ids: Sequence[str] | None = None) -> int:
        """Remove documents added from code: whole sources, or chunks by id. Returns the number of
        chunks the record listed that were removed. Files under ``loader.path`` are the folder's:
        delete or exclude the file and run ``ingest``."""
        return self.index.delete(source=source, ids=ids)

    def as_vectorstore(self) -> IndexedVectorStore:
        """The index as a LangChain ``VectorStore``: ``add_documents`` (each document one entry under
        its id), ``delete(ids)``, ``get_by_ids``, ``similarity_search(_with_score)`` and their async
        twins. Writes are recorded as added from code, so ``ingest`` keeps them."""
        return self.index.as_vectorstore()

    def as_document_index(self, k: int = 4) -> IndexedDocumentIndex:
        return self.index.as_document_index(k)  # LangChain's (beta) DocumentIndex

    # -- what the index holds ------------------------------------------------------------------------
    def sources(self) -> list[SourceInfo]:
        """Every source with origin, chunk count and when it was last written (``rag-pipeline ls``)."""
        return self.index.sources()

    def stats(self) -> dict[str, Any]:
        """Collection, model, stored fingerprint, counts and bytes on disk (``rag-pipeline stats``)."""
        return self.index.stats()

    def export(self, *, vectors: bool = False) -> Iterator[dict[str, Any]]:
        """Every chunk as ``{"id", "content", "metadata", "source", "origin"}`` (+ ``"vector"``)."""
        return self.index.export(vectors=vectors)

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
        self.index.require()

    def query(self, text: str, k: int | None = None) -> list[Document]:  # one call, one retriever
        return self.as_retriever(k).invoke(text)

    def sample_queries(self) -> list[str]:
        """The queries the config lists for ``rag-pipeline run`` (inline, or a .txt/.jsonl file)."""
        return read_sample_queries(self.config.sample_queries)


def _reads_an_index(kind: str) -> bool:
    """Whether a stage of ``kind`` is, or is built over, an index view (built anew per reader)."""
    return KINDS[kind].indexes or any(_reads_an_index(needed) for needed in KINDS[kind].needs)


def reading_stages(config: PipelineConfig) -> tuple[Any, Any]:
    """The loader and chunker, built from the config on a Ray worker (``ingest.engine: ray``)."""
    pipe = Pipeline(config)
    return pipe.loader, pipe.chunker
