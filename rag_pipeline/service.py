"""One pipeline served to many callers at once: concurrent queries, dynamic batching, and writes
that never block reads. What ``rag-pipeline serve`` wraps, and what a notebook or another web
framework can use as it is.

    with RetrievalService(Pipeline.from_yaml("configs/quickstart.yaml")) as service:
        service.query("how do I proof sourdough?", k=3)          # from any number of threads
        service.add_documents(documents, source="notes")         # beside them
        service.embed(["a passage", "another"])                  # the embedder's vectors, token counts
        service.rerank("proof sourdough", ["text a", "text b"])  # the cross-encoder's scores, best first

How it is built:

- **Readers.** ``workers`` threads answer queries, each through its own view of the index
  (:meth:`Pipeline.reader`): its own vector-store client, lexical index objects and record check,
  over the models the pipeline loaded once. A bounded queue sits in front of them: a query that
  finds ``workers + max_queue`` queries in flight is refused at once (:class:`ServiceBusy`), and
  one that waited ``request_timeout_s`` is given up (:class:`ServiceUnavailable`).
- **Batching.** The readers' query embeddings go through one batcher thread, which computes
  the texts of every query waiting for it in one forward pass (at most ``max_batch``); the
  cross-encoder's (query, passage) pairs likewise. A query alone is computed at once: the batcher
  waits (at most ``max_wait_ms``) only while other queries are being searched and may still join.
- **Embeddings and reranking on request.** :meth:`RetrievalService.embed` and
  :meth:`RetrievalService.rerank` (what the server's ``/v1/embeddings`` and ``/rerank`` answer) are
  admitted, queued, timed out and counted as queries are, and run on a reader: query texts and
  reranker pairs go through the batchers above; passages are encoded on the reader itself.
- **Writes.** Adds and deletes run on one writer thread, never on a reader. A write takes the
  index's write lock (waiting at most ``write_lock_wait_s``, else :class:`IndexBusyError`), chunks
  and embeds its documents into the embedding cache while queries keep answering, and only then
  takes the *commit gate* exclusively and runs the pipeline's own write, whose vectors now all
  come from the cache. Every query holds the gate shared for its whole search, so it sees all of
  a write or none of it. The gate prefers the writer, so a stream of queries cannot starve it.
"""

from __future__ import annotations

import copy
import threading
import time
from bisect import bisect_left
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from langchain_core.documents import Document

from .errors import (
    ConfigError,
    IndexBusyError,
    QueryError,
    RagPipelineError,
    ServiceBusy,
    ServiceUnavailable,
    positive_count,
)
from .indexing.cache import encode_with_cache
from .indexing.documents import check_documents, chunk_source
from .indexing.faults import crash_point
from .indexing.lock import index_lock
from .pipeline import Pipeline

LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128)
REQUEST_KINDS = ("query", "embed", "rerank", "add", "delete")
EMBED_KINDS = ("passage", "query")


@dataclass(frozen=True)
class ServiceSettings:
    """How much a :class:`RetrievalService` does at once.

    ``workers``: queries searched concurrently. ``max_batch``: most queries whose embeddings (or
    reranker pairs) one forward pass computes. ``max_wait_ms``: the longest the batcher waits for
    more queries to join a batch, and only while others are being searched. ``max_queue``: queries
    that may wait for a worker beyond those being searched. ``request_timeout_s``: the longest a
    query waits for its answer, and a write for the writer to take it up. ``write_lock_wait_s``:
    the longest a write waits for the index's write lock (another process's ingest).
    ``max_queued_writes``: writes that may wait behind the one being written. ``serial``: today's
    one-at-a-time behaviour (one worker, no batching, a write holds the gate while it embeds), kept
    as a baseline for benchmarks. ``before_commit``: called on the writer thread with ``"add"`` or
    ``"delete"`` after a write's embeddings are computed and before it commits (tests pause there).
    """

    # More readers than cores: a reader spends most of a query waiting for the batcher or inside
    # Chroma's native search, so a few per core keep both busy and let the embedding batches fill.
    workers: int = 16
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 64
    request_timeout_s: float = 30.0
    write_lock_wait_s: float = 2.0
    max_queued_writes: int = 4
    serial: bool = False
    before_commit: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "max_batch"):
            positive_count(getattr(self, name), f"ServiceSettings.{name}")
        for name in ("max_queue", "max_queued_writes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"ServiceSettings.{name}: must be a whole number, 0 or more, got {value!r}")
        for name in ("max_wait_ms", "request_timeout_s", "write_lock_wait_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"ServiceSettings.{name}: must be a number of seconds (ms), 0 or more, got {value!r}")

    @property
    def reader_count(self) -> int:
        return 1 if self.serial else self.workers

    @property
    def batching(self) -> bool:
        return not self.serial


# -- building blocks -----------------------------------------------------------------------------------
class CommitGate:
    """A readers-writer lock that prefers its writer: queries hold it shared for their whole
    search, a write's commit holds it alone. Once a writer waits, new readers wait behind it, so
    a steady stream of queries cannot keep a commit out; the readers already in finish first."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._writing or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


class Histogram:
    """Observations counted into buckets (Prometheus' ``le`` buckets: a value goes into the first
    bound it does not exceed). Not locked: the owner (:class:`ServiceMetrics`) is."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        """``buckets``: ``[upper bound, observations at or below it]``, cumulative, ending with
        ``inf`` (what ``prometheus_client``'s ``HistogramMetricFamily`` takes), ``sum`` and ``count``."""
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            cumulative.append([bound, running])
        return {"buckets": cumulative, "sum": self.sum, "count": self.count}


def outcome_of(error: BaseException | None) -> str:
    """How a request ended, as the metrics count it."""
    if error is None:
        return "ok"
    if isinstance(error, ServiceBusy):
        return "busy"
    if isinstance(error, ServiceUnavailable):
        return "unavailable"
    if isinstance(error, IndexBusyError):
        return "conflict"
    if isinstance(error, RagPipelineError):
        return "rejected"
    return "error"


class ServiceMetrics:
    """Counters an operator watches, kept under one lock (each update is a few additions)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.latency = {kind: Histogram(LATENCY_BOUNDS_S) for kind in REQUEST_KINDS}
        self.batch_sizes = {name: Histogram(BATCH_SIZE_BOUNDS) for name in ("embeddings", "reranker")}

    def request(self, kind: str, seconds: float, error: BaseException | None) -> None:
        outcome = outcome_of(error)
        with self._lock:
            self.requests[kind, outcome] = self.requests.get((kind, outcome), 0) + 1
            if error is not None:
                name = type(error).__name__
                self.errors[kind, name] = self.errors.get((kind, name), 0) + 1
            self.latency[kind].observe(seconds)

    def batch(self, name: str, size: int) -> None:
        with self._lock:
            self.batch_sizes[name].observe(size)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            requests: dict[str, dict[str, int]] = {}
            for (kind, outcome), count in sorted(self.requests.items()):
                requests.setdefault(kind, {})[outcome] = count
            errors: dict[str, dict[str, int]] = {}
            for (kind, name), count in sorted(self.errors.items()):
                errors.setdefault(kind, {})[name] = count
            return {
                "requests": requests,
                "errors": errors,
                "latency_seconds": {kind: h.snapshot() for kind, h in self.latency.items()},
                "batch_sizes": {name: h.snapshot() for name, h in self.batch_sizes.items()},
            }


class _Waiting:
    """One caller's inputs in a batcher, and, once computed, its outputs or the batch's error."""

    __slots__ = ("items", "outputs", "error", "done")

    def __init__(self, items: list[Any]):
        self.items = items
        self.outputs: list[Any] | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class Batcher:
    """Calls ``compute(items)`` on one thread for the items of every caller waiting, at most
    ``max_batch`` callers at once; each caller gets its own outputs back (``submit``).

    A batch is what accumulated while the previous one was computed. When it is not full and
    ``expected()`` says more callers than it holds are on their way (queries being searched), it
    waits up to ``max_wait_s`` for them; a caller alone is computed at once. ``guard``, when
    given, is held around each computation (see :attr:`RetrievalService.tokenizer_guard`).
    """

    def __init__(
        self,
        name: str,
        compute: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int,
        max_wait_s: float,
        expected: Callable[[], int] = lambda: 0,
        on_batch: Callable[[int], None] = lambda size: None,
        guard: Any = None,
    ):
        self.name = name
        self._compute = compute
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._expected = expected
        self._on_batch = on_batch
        self._guard = guard
        self._waiting: deque[_Waiting] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"rag-batcher-{name}", daemon=True)
        self.calls = 0  # computations made (what tests compare with the callers served)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Compute what is waiting, then stop."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, items: list[Any]) -> list[Any]:
        waiting = _Waiting(items)
        with self._condition:
            if self._closed:
                raise ServiceUnavailable("the service is closing")
            self._waiting.append(waiting)
            self._condition.notify_all()
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.outputs  # type: ignore[return-value]

    def _take(self, batch: list[_Waiting]) -> None:
        while self._waiting and len(batch) < self._max_batch:
            batch.append(self._waiting.popleft())

    def _next_batch(self) -> list[_Waiting] | None:
        with self._condition:
            while not self._waiting and not self._closed:
                self._condition.wait()
            if not self._waiting:
                return None  # closed, nothing left
            batch: list[_Waiting] = []
            self._take(batch)
            deadline = time.monotonic() + self._max_wait_s
            while len(batch) < self._max_batch and self._expected() > len(batch) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
                self._take(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            items = [item for waiting in batch for item in waiting.items]
            try:
                if self._guard is not None:
                    with self._guard:
                        outputs = list(self._compute(items))
                else:
                    outputs = list(self._compute(items))
                if len(outputs) != len(items):
                    raise RuntimeError(f"{self.name}: {len(outputs)} outputs for {len(items)} inputs")
            except BaseException as exc:  # every caller of the batch gets the error
                for waiting in batch:
                    waiting.error = exc
                    waiting.done.set()
                continue
            self.calls += 1
            self._on_batch(len(batch))
            start = 0
            for waiting in batch:
                waiting.outputs = outputs[start : start + len(waiting.items)]
                start += len(waiting.items)
                waiting.done.set()


class BatchingEmbedder:
    """The pipeline's embedder, with the query embeddings of concurrent callers computed together
    (:class:`Batcher`); everything else (passages, ``fingerprint``, ``cache_identity``, the
    tokenizer) is the embedder's own."""

    def __init__(self, embedder: Any, batcher: Batcher):
        self._embedder = embedder
        self._batcher = batcher

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return self._embedder.embed_queries(texts)
        return np.vstack(self._batcher.submit(texts)).astype(np.float32, copy=False)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_queries([text])[0].tolist()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # (its own fields, before they are set: a copy, an unpickle)
            raise AttributeError(name)
        return getattr(self._embedder, name)

    def __repr__(self) -> str:
        return f"BatchingEmbedder({self._embedder!r})"


class BatchingReranker:
    """The pipeline's cross-encoder, with the (query, passage) pairs of concurrent callers scored
    in one call (``score_pairs``), then each caller's ranked by the reranker's own rule (``ranked``)."""

    def __init__(self, reranker: Any, batcher: Batcher):
        self._reranker = reranker
        self._batcher = batcher

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        return [float(s) for s in self._batcher.submit([(query, passage) for passage in passages])]

    def rank(self, query: str, documents: Sequence[Document]) -> list[Document]:
        return self._reranker.ranked(documents, self.score(query, [d.page_content for d in documents]))

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Any = None) -> Sequence[Document]:
        ranked = self.rank(query, documents)
        top_n = self._reranker.top_n
        return ranked[:top_n] if top_n is not None else ranked

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # (its own fields, before they are set: a copy, an unpickle)
            raise AttributeError(name)
        return getattr(self._reranker, name)

    def __repr__(self) -> str:
        return f"BatchingReranker({self._reranker!r})"


class TokenCounter:
    """Token counts (special tokens included, untruncated) from a private copy of a model's
    tokenizer. Counting untruncated on the model's own tokenizer would change its settings in place
    under the encodes running beside it (see :attr:`RetrievalService.tokenizer_guard`); the copy,
    under a lock of its own, never touches them."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = copy.deepcopy(tokenizer)
        self._lock = threading.Lock()

    def count(self, texts: Sequence[str], query: str | None = None) -> list[int]:
        """Tokens of each text, or, given ``query``, of each (query, text) pair as a cross-encoder reads it."""
        texts = list(texts)
        with self._lock:
            if query is None:
                encoded = self._tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
            else:
                encoded = self._tokenizer(
                    [query] * len(texts), texts, add_special_tokens=True, truncation=False, verbose=False
                )
        return [len(ids) for ids in encoded["input_ids"]]


@dataclass(frozen=True)
class Embedded:
    """What :meth:`RetrievalService.embed` answers: ``vectors``, one float32 row per text, and
    ``tokens``, each text's token count as the embedder's tokenizer counts it (the query
    instruction included for queries; empty when the embedder has no tokenizer)."""

    vectors: np.ndarray
    tokens: list[int]


@dataclass(frozen=True)
class Reranked:
    """What :meth:`RetrievalService.rerank` answers: ``ranking``, ``(index into the texts, score)``
    best first (ties in the order given), at most ``top_n``; ``tokens``, the (query, text) pairs'
    tokens as the cross-encoder's tokenizer counts them (0 when it has none)."""

    ranking: list[tuple[int, float]]
    tokens: int


def no_reranker_message(pipeline: Pipeline) -> str:
    return (
        f"the config {pipeline.config.name!r} has no reranker: add a `reranker:` section "
        "(type: bge-reranker, model: BAAI/bge-reranker-base, or a local folder) and restart"
    )


@dataclass
class _Job:
    kind: str
    run: Callable[[Any], Any]  # given the thread's view (a reader, or the writer's pipeline view)
    future: Future
    queued_at: float


class _Reader:
    """A reader thread's view of the index and the retriever over it (built once, reused: ``k``
    and ``filter`` are per call)."""

    def __init__(self, view: Pipeline):
        self.view = view
        self.retriever = view.as_retriever()


def _texts(texts: Sequence[str], name: str, *, allow_empty_text: bool = False) -> list[str]:
    """``texts`` as a list, refused (``QueryError``) when it is one string, empty, or holds
    anything but strings (or an empty string, unless ``allow_empty_text``)."""
    if isinstance(texts, str):
        raise QueryError(f"{name}: give a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise QueryError(f"{name} is empty: give at least one text")
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise QueryError(f"{name}[{number}]: must be a string, got {type(text).__name__}")
        if not text and not allow_empty_text:
            raise QueryError(f"{name}[{number}] is an empty string: give text, or leave it out")
    return texts


def _passage_vectors(embedder: Any, texts: list[str]) -> np.ndarray:
    encode = getattr(embedder, "encode", None)
    if callable(encode):  # the package's embedders: no progress bar on a server
        return encode(texts, show_progress=False)
    return np.asarray(embedder.embed_documents(texts), dtype=np.float32)


def _query_vectors(embedder: Any, texts: list[str]) -> np.ndarray:
    embed_queries = getattr(embedder, "embed_queries", None)
    if callable(embed_queries):
        return embed_queries(texts)
    return np.asarray([embedder.embed_query(text) for text in texts], dtype=np.float32)


# -- the service ---------------------------------------------------------------------------------------
class RetrievalService:
    """Queries from many threads, dynamic batching and non-blocking writes over one pipeline (see
    the module docstring). ``start()`` loads the models and opens the readers' views (refusing,
    as ``Pipeline.as_retriever`` does, when there is no index); ``close()`` finishes the requests
    already taken, then stops. Use it as a context manager to do both.

    An index that lives in memory has no second view (:meth:`Pipeline.reader`): its queries are
    answered one at a time, through the pipeline itself.
    """

    def __init__(self, pipeline: Pipeline, settings: ServiceSettings | None = None):
        self.pipeline = pipeline
        self.settings = settings or ServiceSettings()
        self.metrics = ServiceMetrics()
        self.gate = CommitGate()
        # The embedder's fast tokenizer is one Rust object: a call with other truncation settings
        # (counting tokens, the tokens chunker) changes it in place, which fails ("Already
        # borrowed") if another thread is tokenizing meanwhile. Calls with the usual settings may
        # overlap. So the batcher's embeddings and the writer's chunking hold this guard, and the
        # writer puts the usual settings back before it lets go (see _restore_tokenizer).
        self.tokenizer_guard = threading.Lock()
        self._state = threading.Condition()  # guards the counters and the lifecycle below
        self._started = False
        self._closing = False
        self._queries_in_flight = 0  # admitted and not finished (waiting or being searched)
        self._queries_searching = 0
        self._writes_in_flight = 0
        self._writes_running = 0
        self._query_jobs: "deque[_Job | None]" = deque()
        self._write_jobs: "deque[_Job | None]" = deque()
        self._threads: list[threading.Thread] = []
        self._batchers: list[Batcher] = []
        self._readers: list[_Reader] = []
        self._writer: Pipeline | None = None
        self._shares_pipeline = False
        self._index_chunks: int | None = None
        self._known_token: Any = None  # the index record's change token every view has caught up with
        self.embedding_batcher: Batcher | None = None
        self.reranker_batcher: Batcher | None = None
        self._counters: dict[str, TokenCounter | None] = {}  # by stage, made at the first request that counts
        self._counters_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> "RetrievalService":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def ready(self) -> bool:
        """Models loaded, every reader's view open, and not closing."""
        with self._state:
            return self._started and not self._closing

    def start(self) -> "RetrievalService":
        with self._state:
            if self._started or self._closing:
                raise ServiceUnavailable("the service was started already (a closed one cannot be started again)")
        pipeline, settings = self.pipeline, self.settings
        pipeline.require_index()
        pipeline.index.recover()  # a write killed midway (this server's last run) is never served
        embeddings, reranker = pipeline.embeddings, pipeline.reranker
        embeddings.warm_up()
        embeddings.embed_query("warm up")  # the first encode pays one-off costs (and sets the tokenizer)
        if reranker is not None:
            reranker.warm_up()
            reranker.score("warm up", ["warm up"])
        self._shares_pipeline = pipeline.state.record_path is None
        try:
            if self._shares_pipeline:  # in memory: one view, the pipeline's own (see the class docstring)
                self._readers = [_Reader(pipeline)]
                self._writer = pipeline
            else:
                replaced = self._batching_stages(embeddings, reranker) if settings.batching else {}
                self._readers = [_Reader(pipeline.reader(replaced)) for _ in range(settings.reader_count)]
                self._writer = pipeline.reader()
            for reader in self._readers:  # open each view's clients and indexes now, not at a first query
                reader.retriever.invoke("warm up")
        except BaseException:
            for batcher in self._batchers:
                batcher.close()
            raise
        self._index_chunks = self._writer.store.count()
        self._known_token = self._writer.state.change_token()
        if not self._shares_pipeline:
            for reader in self._readers:  # they follow other processes' commits only when _catch_up says so
                for index in self._indexes(reader.view):
                    index.change_token = self._caught_up_token
        for number, reader in enumerate(self._readers):
            self._threads.append(threading.Thread(target=self._read_loop, args=(reader,), name=f"rag-reader-{number}", daemon=True))
        self._threads.append(threading.Thread(target=self._write_loop, name="rag-writer", daemon=True))
        for thread in self._threads:
            thread.start()
        with self._state:
            self._started = True
        return self

    def _batching_stages(self, embeddings: Any, reranker: Any) -> dict[str, Any]:
        settings = self.settings
        common = dict(max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000, expected=self._searching)
        self.embedding_batcher = Batcher(
            "embeddings", lambda texts: list(embeddings.embed_queries(texts)),
            on_batch=lambda size: self.metrics.batch("embeddings", size), guard=self.tokenizer_guard, **common,
        )
        self._batchers.append(self.embedding_batcher)
        stages: dict[str, Any] = {"embeddings": BatchingEmbedder(embeddings, self.embedding_batcher)}
        if reranker is not None and hasattr(reranker, "score_pairs") and hasattr(reranker, "ranked"):
            self.reranker_batcher = Batcher(
                "reranker", reranker.score_pairs, on_batch=lambda size: self.metrics.batch("reranker", size), **common
            )
            self._batchers.append(self.reranker_batcher)
            stages["reranker"] = BatchingReranker(reranker, self.reranker_batcher)
        for batcher in self._batchers:
            batcher.start()
        return stages

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish those already taken (queued ones too), then stop the threads."""
        with self._state:
            if self._closing:
                return
            self._closing = True
            for _ in self._readers:
                self._query_jobs.append(None)  # one stop mark per reader, after every job taken
            self._write_jobs.append(None)
            self._state.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for batcher in self._batchers:
            batcher.close()

    def _searching(self) -> int:
        return self._queries_searching

    # -- queries -------------------------------------------------------------------------------------
    def query(self, text: str, k: int | None = None, filter: dict[str, Any] | None = None) -> list[Document]:
        """The ranked chunks for ``text`` (``k`` and ``filter`` as ``Pipeline.as_retriever``'s per
        call: ``filter`` replaces the configured one). Safe from any number of threads.

        Raises :class:`ServiceBusy` when ``workers + max_queue`` queries are in flight already,
        :class:`ServiceUnavailable` when the service is not started or closing, or no answer came
        within ``request_timeout_s``; a query the pipeline refuses raises what it raises."""
        per_call: dict[str, Any] = {}
        if k is not None:
            per_call["k"] = k
        if filter is not None:
            per_call["filter"] = filter
        return self._request("query", lambda reader: reader.retriever.invoke(text, **per_call))

    def embed(self, texts: Sequence[str], kind: str = "passage") -> Embedded:
        """The embedder's vectors for ``texts``: as passages (``embed_documents``: as they are), or,
        with ``kind="query"``, as queries (``embed_queries``: the configured query instruction
        first, computed by the query batcher with the searches' queries). Admitted, timed out and
        refused as :meth:`query` is; a text that is not a non-empty string raises ``QueryError``."""
        texts = _texts(texts, "texts")
        if kind not in EMBED_KINDS:
            raise QueryError(f"kind: one of {', '.join(EMBED_KINDS)}, got {kind!r}")
        return self._request("embed", lambda reader: self._embed(reader.view, texts, kind))

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> Reranked:
        """The configured cross-encoder's score of each (``query``, text) pair, best first, at most
        ``top_n`` (None: all). The scores are the reranker's own (``score``; its ``normalize``
        applies, its ``blend`` does not: there is no first-stage score to blend with). Raises
        ``ConfigError`` when the config has no reranker; admitted and refused as :meth:`query`."""
        reranker = self.pipeline.reranker
        if reranker is None:
            raise ConfigError(no_reranker_message(self.pipeline))
        if not callable(getattr(reranker, "score", None)):
            raise ConfigError(
                f"the configured reranker ({type(reranker).__name__}) has no score(query, passages) to rank texts with"
            )
        if not isinstance(query, str) or not query.strip():
            raise QueryError("the query is empty: give the text to rank the passages against")
        texts = _texts(texts, "texts", allow_empty_text=True)
        if top_n is not None:
            positive_count(top_n, "top_n")
        return self._request("rerank", lambda reader: self._rerank(reader.view, query, texts, top_n))

    def _embed(self, view: Pipeline, texts: list[str], kind: str) -> Embedded:
        embedder = view.embeddings
        if kind == "query":
            instruction = getattr(self.pipeline.embeddings, "query_instruction", "")
            counted = [instruction + text for text in texts] if isinstance(instruction, str) else texts
            if isinstance(embedder, BatchingEmbedder):
                vectors = embedder.embed_queries(texts)  # the batcher holds the tokenizer guard
            else:
                with self.tokenizer_guard:
                    vectors = _query_vectors(embedder, texts)
        else:
            counted = texts
            # held: the writer's tokens chunker changes the tokenizer's settings under this guard
            with self.tokenizer_guard:
                vectors = _passage_vectors(embedder, texts)
        counter = self._counter("embeddings")
        tokens = counter.count(counted) if counter is not None else []
        return Embedded(np.asarray(vectors, dtype=np.float32), tokens)

    def _rerank(self, view: Pipeline, query: str, texts: list[str], top_n: int | None) -> Reranked:
        scores = [float(s) for s in view.reranker.score(query, texts)]  # batched with the searches' pairs
        if len(scores) != len(texts):
            raise RuntimeError(f"the reranker gave {len(scores)} scores for {len(texts)} passages")
        order = sorted(range(len(texts)), key=lambda i: scores[i], reverse=True)  # stable: ties keep the order given
        counter = self._counter("reranker")
        tokens = sum(counter.count(texts, query=query)) if counter is not None else 0
        return Reranked([(i, scores[i]) for i in order[:top_n]], tokens)

    def _counter(self, stage: str) -> TokenCounter | None:
        """The token counter for ``embeddings`` or ``reranker``, copied from the stage's tokenizer
        once; None when the stage has none."""
        with self._counters_lock:
            if stage not in self._counters:
                if stage == "embeddings":
                    tokenizer = getattr(self.pipeline.embeddings, "tokenizer", None)
                else:
                    tokenizer = getattr(getattr(self.pipeline.reranker, "cross_encoder", None), "tokenizer", None)
                if tokenizer is None or not callable(tokenizer):
                    self._counters[stage] = None
                else:
                    with self.tokenizer_guard:  # copied while no call changes its settings
                        self._counters[stage] = TokenCounter(tokenizer)
            return self._counters[stage]

    def index_stats(self) -> dict[str, Any]:
        """``Pipeline.stats()`` (collection, model, counts, bytes on disk), read on a reader's view
        like a query, so it sees a committed state."""
        return self._request("query", lambda reader: reader.view.stats(), metered=False)

    def index_sources(self) -> list[Any]:
        """``Pipeline.sources()`` (each source's origin, chunk count, last write), read on a
        reader's view like :meth:`index_stats`: a committed state, caught up with other processes."""
        return self._request("query", lambda reader: reader.view.sources(), metered=False)

    def _request(self, kind: str, run: Callable[[_Reader], Any], *, metered: bool = True) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            future = self._admit_query(run)
            try:
                return future.result(timeout=self.settings.request_timeout_s)
            except FutureTimeout:
                future.cancel()  # dropped if no reader took it yet; a running search's answer is discarded
                raise ServiceUnavailable(
                    f"no answer within {self.settings.request_timeout_s:g}s (the service is overloaded); try again"
                ) from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            if metered:
                self.metrics.request(kind, time.perf_counter() - started, error)

    def _admit_query(self, run: Callable[[_Reader], Any]) -> Future:
        limit = self.settings.reader_count + self.settings.max_queue
        with self._state:
            self._refuse_unless_open()
            if self._queries_in_flight >= limit:
                raise ServiceBusy(f"{limit} queries are in flight already, the most this service takes; try again shortly")
            self._queries_in_flight += 1
            future: Future = Future()
            self._query_jobs.append(_Job("query", run, future, time.monotonic()))
            self._state.notify_all()
        return future

    def _refuse_unless_open(self) -> None:
        if self._closing:
            raise ServiceUnavailable("the service is closing")
        if not self._started:
            raise ServiceUnavailable("the service is not started (call start())")

    def _read_loop(self, reader: _Reader) -> None:
        while True:
            job = self._next_job(self._query_jobs)
            if job is None:
                return
            try:
                if not job.future.set_running_or_notify_cancel():
                    continue  # its caller gave up waiting
                if time.monotonic() - job.queued_at > self.settings.request_timeout_s:
                    job.future.set_exception(ServiceUnavailable(
                        f"waited over {self.settings.request_timeout_s:g}s for a worker (the service is overloaded); try again"
                    ))
                    continue
                self._follow_other_processes()
                with self._reading():
                    self._run(job, reader, "_queries_searching")
            finally:
                with self._state:
                    self._queries_in_flight -= 1

    def _run(self, job: "_Job", view: Pipeline, running: str) -> None:
        """Run ``job`` on ``view``, its answer or error into its future, counted in ``running``."""
        with self._state:
            setattr(self, running, getattr(self, running) + 1)
        try:
            result = job.run(view)
        except BaseException as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)
        finally:
            with self._state:
                setattr(self, running, getattr(self, running) - 1)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        with self.gate.shared():
            yield

    def _next_job(self, jobs: "deque[_Job | None]") -> _Job | None:
        with self._state:
            while not jobs:
                self._state.wait()
            return jobs.popleft()

    # -- writes --------------------------------------------------------------------------------------
    def add_documents(self, documents: Sequence[Document], source: str | None = None) -> Any:
        """``Pipeline.add_documents`` on the writer thread: the documents are embedded while queries
        keep answering, then committed at once (a query sees all of them or none). Returns the
        ``IngestReport``. Raises :class:`IndexBusyError` when the index's write lock stays held
        ``write_lock_wait_s``, :class:`ServiceBusy` when ``max_queued_writes`` writes wait already."""
        documents = list(documents)
        check_documents(documents, source)  # refused here, before it takes the writer's turn
        return self._write("add", lambda view: self._add(view, documents, source))

    def delete(self, *, source: str | Sequence[str] | None = None, ids: Sequence[str] | None = None) -> int:
        """``Pipeline.delete`` on the writer thread, committed at once for queries; as :meth:`add_documents`."""
        return self._write("delete", lambda view: self._delete(view, source, ids))

    def _write(self, kind: str, run: Callable[[Pipeline], Any]) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            limit = 1 + self.settings.max_queued_writes
            with self._state:
                self._refuse_unless_open()
                if self._writes_in_flight >= limit:
                    raise ServiceBusy(f"{limit} writes are in flight already, the most this service takes; try again shortly")
                self._writes_in_flight += 1
                future: Future = Future()
                self._write_jobs.append(_Job(kind, run, future, time.monotonic()))
                self._state.notify_all()
            return future.result()  # a write is bounded by its lock wait and its size, not timed out midway
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.metrics.request(kind, time.perf_counter() - started, error)

    def _write_loop(self) -> None:
        while True:
            job = self._next_job(self._write_jobs)
            if job is None:
                return
            try:
                job.future.set_running_or_notify_cancel()
                if time.monotonic() - job.queued_at > self.settings.request_timeout_s:
                    job.future.set_exception(ServiceUnavailable(
                        f"waited over {self.settings.request_timeout_s:g}s behind other writes; nothing was written, try again"
                    ))
                    continue
                self._run(job, self._writer, "_writes_running")
            finally:
                with self._state:
                    self._writes_in_flight -= 1

    @contextmanager
    def _write_lock(self, view: Pipeline) -> Iterator[None]:
        """The index's write lock, waited for at most ``write_lock_wait_s``; reentrant, so that the
        pipeline's own write, on this thread, enters it."""
        state = view.state
        state.ensure_directory()
        wait = self.settings.write_lock_wait_s
        with ExitStack() as held:
            try:
                held.enter_context(index_lock(state.lock_path, wait, reentrant=True))
            except IndexBusyError:
                raise IndexBusyError(
                    f"another ingest or reindex is writing to the index (waited {wait:g}s for its write lock); "
                    "nothing was written, try again when it has finished"
                ) from None
            yield

    def _add(self, view: Pipeline, documents: list[Document], source: str | None) -> Any:
        with self._write_lock(view):
            if not self.settings.serial and not self._shares_pipeline:
                self._embed_ahead(view, documents, source)
            self._before_commit("add")
            with self.gate.exclusive():
                try:
                    with self._committing():
                        report = view.add_documents(documents, source)
                finally:
                    self._after_commit(view)
            return report

    def _delete(self, view: Pipeline, source: str | Sequence[str] | None, ids: Sequence[str] | None) -> int:
        with self._write_lock(view):
            self._before_commit("delete")
            with self.gate.exclusive():
                try:
                    with self._committing():
                        return view.delete(source=source, ids=ids)
                finally:
                    self._after_commit(view)

    # -- keeping the views in step ----------------------------------------------------------------------
    # Every view of a Chroma folder in this process shares one chromadb "system" (chromadb keeps one
    # per folder and process), so a reader view sees the writer view's writes at once. A view that
    # notices the record change (``change_token``) takes it for another process's commit and opens a
    # fresh system, dropping the shared one from chromadb's cache: done by several reader threads
    # at once, that races (one thread's new client loses its system to another's refresh), and a
    # view on a system of its own no longer sees this process's writes. So the reader views never
    # do it themselves: their indexes' change token is the one this service has caught up with;
    # this service's commits are marked as their own (``_committing``), and another process's
    # commit is caught up with by one thread, holding the gate alone, for every view together
    # (``_catch_up``), before the next search.
    def _views(self) -> list[Pipeline]:
        views = [reader.view for reader in self._readers]
        return views + [self._writer] if self._writer is not None and self._writer not in views else views

    @staticmethod
    def _indexes(view: Pipeline) -> list[Any]:
        return [index for index in (view.store, view.lexical) if index is not None]

    def _caught_up_token(self) -> Any:
        return self._known_token

    def _follow_other_processes(self) -> None:
        """Before a search: when another process committed (an ingest, a reindex), catch every view up."""
        if self._shares_pipeline or self._writer.state.change_token() == self._known_token:
            return
        with self.gate.exclusive():
            self._catch_up()

    def _catch_up(self) -> None:
        """Holding the gate alone: every view lets go of its storage views first, then opens them
        again, so that they all open the same new one."""
        if self._shares_pipeline:
            return
        token = self._writer.state.change_token()
        if token == self._known_token:
            return
        self._known_token = token  # what the readers' indexes now see as the change token
        # (the pipeline given too: a client of its own left on the old system keeps that one alive)
        for view in [*self._views(), self.pipeline]:
            for index in self._indexes(view):
                index.refresh_if_changed()
        for view in self._views():
            view.store.check()

    @contextmanager
    def _committing(self) -> Iterator[None]:
        """Around the writer view's commit, holding the gate alone: the readers' views hold a write
        session too, and take the record change it makes as their own (no reopen); a lexical index
        takes up the matrix the writer saved when its session ends."""
        self._catch_up()
        if self._shares_pipeline:
            yield
            return
        with ExitStack() as sessions:
            for reader in self._readers:
                for index in self._indexes(reader.view):
                    sessions.enter_context(index.writing())
            try:
                yield
            finally:  # before the readers' sessions end, so that they take this token as theirs
                self._known_token = self._writer.state.change_token()

    def _before_commit(self, kind: str) -> None:
        crash_point("committing")
        if self.settings.before_commit is not None:
            self.settings.before_commit(kind)

    def _after_commit(self, view: Pipeline) -> None:
        """Still holding the gate: put the tokenizer's usual settings back (the sinks count tokens
        untruncated) and note the index's size."""
        self._restore_tokenizer(view)
        self._index_chunks = view.store.count()

    def _embed_ahead(self, view: Pipeline, documents: list[Document], source: str | None) -> None:
        """Chunk the documents as the pipeline's write will, and put their vectors into the
        embedding cache, touching no index: queries keep answering meanwhile, and the commit then
        finds every vector in the cache. (Without a cache there is nothing to fill: the write
        embeds under the gate.)"""
        cache = view.index.embedding_cache
        if cache is None:
            return
        groups: dict[str, list[Document]] = {}
        for document in documents:
            name = source if source is not None else document.metadata.get("source")
            if not isinstance(name, str) or not name:
                return  # the pipeline's write refuses these, with its own message
            groups.setdefault(name, []).append(document)
        with self.tokenizer_guard:  # a tokens chunker uses the embedder's tokenizer, untruncated
            try:
                chunks = [chunk for name, group in groups.items() for chunk in chunk_source(view.chunker, name, group)]
            finally:
                self._restore_tokenizer(view)
        texts = sorted({chunk.page_content for chunk in chunks}, key=len, reverse=True)  # longest first: less padding
        if texts:
            encode_with_cache(view.embeddings, texts, cache)

    @staticmethod
    def _restore_tokenizer(view: Pipeline) -> None:
        """One short encode: it sets the tokenizer back to the settings every encode uses, so that
        concurrent encodes (queries, the next write's passages) never need to change them."""
        view.embeddings.encode(["."], show_progress=False)

    # -- what an operator watches ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for metrics: ``requests`` and ``errors`` by kind (``query``, ``embed``,
        ``rerank``, ``add``, ``delete``) and outcome or error type, ``latency_seconds`` and ``batch_sizes`` histograms
        (:meth:`Histogram.snapshot`), what is in flight and queued, and the index's chunk count
        as of the last commit."""
        with self._state:
            state = {
                "ready": self._started and not self._closing,
                "workers": len(self._readers),
                "queries_in_flight": self._queries_in_flight,
                "queries_queued": self._queries_in_flight - self._queries_searching,
                "writes_in_flight": self._writes_in_flight,
                "writes_queued": self._writes_in_flight - self._writes_running,
                "index_chunks": self._index_chunks,
            }
        return {**state, **self.metrics.snapshot()}
