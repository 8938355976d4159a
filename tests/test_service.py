"""``RetrievalService``: concurrent queries answer as sequential ones do, query embeddings (and
reranker pairs) of concurrent queries are computed together, a write is invisible until it
commits and then wholly visible, and the limits refuse at once rather than queue without end."""

from __future__ import annotations

import json
import subprocess
import sys
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from conftest import MINILM, pipeline_config
from langchain_core.documents import Document

from rag_pipeline import IndexBusyError, Pipeline
from rag_pipeline.errors import ConfigError, ServiceBusy, ServiceUnavailable
from rag_pipeline.service import Batcher, CommitGate, Histogram, RetrievalService, ServiceSettings

QUERIES = [
    "how long should coffee brew",
    "purify water when camping",
    "tune a guitar by ear",
    "how often to water houseplants",
    "boiling water kills germs",
    "ratio of coffee to water",
    "standard tuning of six strings",
    "signs of overwatering a plant",
]


@pytest.fixture(scope="module", params=["dense", "hybrid-reranked"])
def index_config(request, tmp_path_factory, sample_corpus, tiny_reranker_dir):
    """An ingested index of the sample corpus: dense alone, or hybrid (dense + BM25) with a reranker.
    A real (small) embedder: the tiny random one scores every chunk within a millionth of the
    others, so float rounding alone reorders its results."""
    folder = tmp_path_factory.mktemp(f"service-{request.param}")
    corpus = folder / "corpus"  # the sample corpus's four guides: enough chunks, a quick ingest
    corpus.mkdir()
    for path in sample_corpus.glob("*.txt"):
        (corpus / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    sections = {}
    if request.param == "hybrid-reranked":
        sections = {
            "lexical": {"type": "bm25"},
            "retriever": {"type": "hybrid", "k": 4, "fetch_k": 8},
            "reranker": {"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"},
        }
    config = pipeline_config(corpus, folder / "index", MINILM, **sections)
    Pipeline.from_config(config).ingest()
    return config


def as_rows(documents: list[Document]) -> list[tuple[str, float, float | None]]:
    return [(d.id, d.metadata["score"], d.metadata.get("rerank_score")) for d in documents]


def assert_same_results(got: list[Document], expected: list[Document]) -> None:
    """Same chunks in the same order, with the same scores up to the float rounding that another
    batch shape gives (a batch pads its texts to the longest)."""
    assert [d.id for d in got] == [d.id for d in expected], (as_rows(got), as_rows(expected))
    for (_, score, rerank), (_, want, want_rerank) in zip(as_rows(got), as_rows(expected)):
        assert score == pytest.approx(want, abs=1e-5)
        if want_rerank is not None:
            assert rerank == pytest.approx(want_rerank, abs=1e-4)


class CountingCalls:
    """Wraps a model method: counts its calls and the inputs of each, and takes ``delay`` seconds
    more per call, so that concurrent callers pile up behind it as they do behind a real model."""

    def __init__(self, method, delay: float = 0.0):
        self.method, self.delay = method, delay
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.sizes.append(len(items))
        time.sleep(self.delay)
        return self.method(items)


def test_concurrent_queries_give_the_sequential_results_and_share_forward_passes(index_config):
    pipe = Pipeline.from_config(index_config)
    retriever = pipe.as_retriever()
    expected = {(q, k): retriever.invoke(q, k=k) for q in QUERIES for k in (2, 4)}

    embed_calls = CountingCalls(pipe.embeddings.embed_queries, delay=0.02)
    with RetrievalService(pipe, ServiceSettings(workers=4, max_wait_ms=5)) as service:
        pipe.embeddings.embed_queries = embed_calls  # the real embedder's method, as the batcher calls it
        reranker = pipe.reranker
        if reranker is not None:
            pair_calls = CountingCalls(reranker.score_pairs, delay=0.02)
            service.reranker_batcher._compute = pair_calls  # (the reranker is a pydantic model: patched here)
        asked = [key for key in expected for _ in range(2)]
        random.Random(0).shuffle(asked)
        with ThreadPoolExecutor(16) as clients:
            answers = list(clients.map(lambda key: (key, service.query(key[0], k=key[1])), asked))
        stats = service.stats()

    for (query, k), got in answers:
        assert_same_results(got, expected[query, k])
    # one forward pass served several queries, and no query's text was lost or embedded twice
    assert len(embed_calls.sizes) < len(asked) and sum(embed_calls.sizes) == len(asked)
    assert max(embed_calls.sizes) > 1
    if reranker is not None:
        assert len(pair_calls.sizes) < len(asked) and max(pair_calls.sizes) > index_config["retriever"]["fetch_k"]
        assert stats["batch_sizes"]["reranker"]["count"] >= len(pair_calls.sizes)
    assert stats["requests"]["query"]["ok"] == len(asked)
    assert stats["latency_seconds"]["query"]["count"] == len(asked)
    assert stats["batch_sizes"]["embeddings"]["buckets"][-1][1] == stats["batch_sizes"]["embeddings"]["count"]
    assert stats["queries_in_flight"] == 0 and stats["index_chunks"] > 0


def test_a_query_alone_is_answered_without_waiting_for_a_batch(index_config):
    pipe = Pipeline.from_config(index_config)
    with RetrievalService(pipe, ServiceSettings(max_wait_ms=2000)) as service:
        for query in QUERIES[:3]:
            started = time.perf_counter()
            service.query(query)
            assert time.perf_counter() - started < 1.0  # far below the 2 s a batch may wait for company


def test_serial_mode_answers_one_at_a_time_with_the_same_results(index_config):
    pipe = Pipeline.from_config(index_config)
    expected = {q: pipe.as_retriever().invoke(q) for q in QUERIES}
    with RetrievalService(pipe, ServiceSettings(serial=True, workers=8)) as service:
        with ThreadPoolExecutor(4) as clients:
            answers = list(clients.map(lambda q: (q, service.query(q)), QUERIES))
        assert service.stats()["workers"] == 1 and service.embedding_batcher is None
    for query, got in answers:
        assert_same_results(got, expected[query])


# -- writes ----------------------------------------------------------------------------------------
TOPICS = {
    "bees": "Honey bees dance to tell the hive where flowers are. A colony keeps one queen.",
    "tides": "Tides rise and fall twice a day, pulled by the moon and, less, by the sun.",
    "kites": "A kite flies when the wind pushes on its face and the line holds it at an angle.",
    "glaciers": "Glaciers are rivers of ice that carve valleys as they creep downhill over centuries.",
    "volcanoes": "Volcanoes erupt when molten rock under pressure finds a way to the surface.",
    "otters": "Sea otters float on their backs and crack shellfish open with stones.",
}


@pytest.fixture(params=["tantivy", "bm25"])
def small_index(request, tmp_path, tiny_bge_dir):
    """A hybrid index of six short files (each test writes into its own), with each lexical index:
    tantivy changes in place, bm25s rebuilds at the commit."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for topic, text in TOPICS.items():
        (corpus / f"{topic}.txt").write_text((text + " ") * 4, encoding="utf-8")
    config = pipeline_config(
        corpus, tmp_path / "index", str(tiny_bge_dir),
        chunker={"type": "recursive", "chunk_size": 200, "chunk_overlap": 0},
        lexical={"type": request.param},
        retriever={"type": "hybrid", "k": 3, "fetch_k": 10},
    )
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    return pipe


NOTES = [
    Document(page_content=f"Penguin note {n}: emperor penguins huddle through the Antarctic winter, note {n}. " * 6)
    for n in range(4)
]


class PausedWrites:
    """A ``before_commit`` hook that holds each write between its embedding and its commit until released."""

    def __init__(self):
        self.reached, self.release = threading.Event(), threading.Event()
        self.kinds: list[str] = []

    def __call__(self, kind: str) -> None:
        self.kinds.append(kind)
        self.reached.set()
        assert self.release.wait(30), "the test never released the write"
        self.reached.clear()
        self.release.clear()


def watch(service: RetrievalService, stop: threading.Event, seen: list[int], failures: list[BaseException]) -> None:
    """Query the notes' source over and over, noting how many of its chunks each answer holds."""
    while not stop.is_set():
        try:
            hits = service.query("emperor penguins huddle", k=50, filter={"source": "notes/penguins"})
            seen.append(len(hits))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
            return


def test_a_write_is_invisible_until_it_commits_then_wholly_visible(small_index):
    pause = PausedWrites()
    with RetrievalService(small_index, ServiceSettings(workers=3, before_commit=pause)) as service:
        stop, seen, failures = threading.Event(), [], []
        watchers = [threading.Thread(target=watch, args=(service, stop, seen, failures)) for _ in range(3)]
        for thread in watchers:
            thread.start()

        with ThreadPoolExecutor(1) as writer:
            adding = writer.submit(service.add_documents, NOTES, "notes/penguins")
            assert pause.reached.wait(30)
            seen_before = len(seen)
            time.sleep(0.3)  # queries keep answering while the write waits to commit...
            assert len(seen) > seen_before and not any(seen)  # ...and none of its chunks shows
            pause.release.set()
            report = adding.result(timeout=30)
        assert report.added > 1 and report.embedded == 0  # every vector came from the cache the write filled first
        time.sleep(0.2)
        now = service.query("emperor penguins huddle", k=50, filter={"source": "notes/penguins"})
        assert len(now) == report.added

        with ThreadPoolExecutor(1) as writer:
            deleting = writer.submit(service.delete, source="notes/penguins")
            assert pause.reached.wait(30)
            time.sleep(0.2)
            assert len(service.query("emperor penguins huddle", k=50, filter={"source": "notes/penguins"})) == report.added
            pause.release.set()
            assert deleting.result(timeout=30) == report.added
        time.sleep(0.2)
        stop.set()
        for thread in watchers:
            thread.join(30)

        assert not failures, failures
        assert set(seen) <= {0, report.added}, "a query saw part of a write"
        assert report.added in seen  # the watchers saw the committed state too
        assert service.query("emperor penguins huddle", k=50, filter={"source": "notes/penguins"}) == []
        assert pause.kinds == ["add", "delete"]
        assert service.stats()["requests"]["add"] == {"ok": 1}


def test_a_write_that_cannot_get_the_index_lock_gives_up_quickly_while_queries_answer(small_index):
    held, release = threading.Event(), threading.Event()

    def another_writer():  # (another ingest, as the in-process lock sees it)
        with small_index.state.lock(0):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=another_writer)
    holder.start()
    try:
        assert held.wait(30)
        with RetrievalService(small_index, ServiceSettings(write_lock_wait_s=0.3)) as service:
            started = time.monotonic()
            with pytest.raises(IndexBusyError, match="waited 0.3s"):
                service.add_documents(NOTES, source="notes/penguins")
            assert time.monotonic() - started < 5
            assert service.query("bees") and service.stats()["requests"]["add"] == {"conflict": 1}
    finally:
        release.set()
        holder.join(30)


# -- limits and lifecycle -----------------------------------------------------------------------------
def test_a_full_queue_refuses_at_once_and_a_long_wait_times_out(small_index):
    settings = ServiceSettings(workers=1, max_queue=1, request_timeout_s=1.0)
    with RetrievalService(small_index, settings) as service:
        with ThreadPoolExecutor(2) as clients:
            with service.gate.exclusive():  # (what a commit holds): the one worker waits behind it
                waiting = [clients.submit(service.query, "bees") for _ in range(2)]
                deadline = time.monotonic() + 10
                while service.stats()["queries_in_flight"] < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                started = time.monotonic()
                with pytest.raises(ServiceBusy):
                    service.query("tides")
                assert time.monotonic() - started < 0.5
            assert all(future.result(timeout=30) for future in waiting)

        with service.gate.exclusive():
            with pytest.raises(ServiceUnavailable, match="no answer within 1s"):
                service.query("bees")
        requests = service.stats()["requests"]["query"]
        assert requests["busy"] == 1 and requests["unavailable"] == 1 and requests["ok"] == 2


def test_a_service_answers_only_between_start_and_close_and_close_finishes_what_it_took(small_index):
    service = RetrievalService(small_index, ServiceSettings(workers=2))
    with pytest.raises(ServiceUnavailable, match="not started"):
        service.query("bees")
    assert not service.ready
    service.start()
    assert service.ready
    with ThreadPoolExecutor(4) as clients, ThreadPoolExecutor(1) as closer:
        with service.gate.exclusive():
            taken = [clients.submit(service.query, "bees") for _ in range(4)]
            time.sleep(0.1)
            closing = closer.submit(service.close)
            time.sleep(0.1)
            assert not service.ready and not closing.done()  # closing waits for the queries it took
        assert all(future.result(timeout=30) for future in taken)  # queued before close: answered
        closing.result(timeout=30)
    with pytest.raises(ServiceUnavailable, match="closing"):
        service.query("bees")
    with pytest.raises(ServiceUnavailable):
        service.add_documents(NOTES, source="notes/penguins")


def test_an_in_memory_index_is_served_through_the_pipeline_itself(tmp_path, tiny_bge_dir, small_corpus):
    pipe = Pipeline.from_config(pipeline_config(small_corpus, None, str(tiny_bge_dir)))
    pipe.ingest()
    with pytest.raises(ConfigError, match="in-memory index"):
        pipe.reader()
    expected = pipe.as_retriever().invoke("bees")
    with RetrievalService(pipe) as service:
        assert service.stats()["workers"] == 1
        assert_same_results(service.query("bees"), expected)
        report = service.add_documents(NOTES[:1], source="notes/penguins")
        assert any(d.metadata["source"] == "notes/penguins" for d in service.query("emperor penguins", k=10))
        assert service.delete(source="notes/penguins") == report.added


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="workers"):
        ServiceSettings(workers=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        ServiceSettings(max_wait_ms=-1)


# -- the parts ---------------------------------------------------------------------------------------------
def test_the_batcher_computes_a_lone_caller_at_once_and_gives_each_caller_its_rows():
    calls: list[list[int]] = []

    def double(items):
        calls.append(list(items))
        time.sleep(0.05)
        return [2 * item for item in items]

    batcher = Batcher("test", double, max_batch=8, max_wait_s=5.0)  # nobody expected: never waits
    batcher.start()
    try:
        started = time.monotonic()
        assert batcher.submit([1, 2]) == [2, 4]
        assert time.monotonic() - started < 1.0
        with ThreadPoolExecutor(6) as callers:
            results = list(callers.map(lambda n: batcher.submit([n, n + 100]), range(6)))
        assert results == [[2 * n, 2 * n + 200] for n in range(6)]
        assert len(calls) < 7  # callers that arrived during a computation went in together
    finally:
        batcher.close()


def test_a_batch_error_reaches_every_caller_of_the_batch():
    def fail(items):
        raise ValueError("model broke")

    batcher = Batcher("test", fail, max_batch=4, max_wait_s=0.0)
    batcher.start()
    try:
        with pytest.raises(ValueError, match="model broke"):
            batcher.submit(["x"])
    finally:
        batcher.close()
    with pytest.raises(ServiceUnavailable):
        batcher.submit(["x"])


def test_the_commit_gate_lets_a_waiting_writer_in_before_new_readers():
    gate = CommitGate()
    order: list[str] = []
    reader_in = threading.Event()

    def reader(name, hold=0.0):
        with gate.shared():
            reader_in.set()
            order.append(name)
            time.sleep(hold)

    def writer():
        with gate.exclusive():
            order.append("writer")

    first = threading.Thread(target=reader, args=("first", 0.3))
    first.start()
    assert reader_in.wait(5)
    writing = threading.Thread(target=writer)
    writing.start()
    time.sleep(0.05)  # the writer now waits for the first reader
    late = threading.Thread(target=reader, args=("late",))
    late.start()
    for thread in (first, writing, late):
        thread.join(5)
    assert order == ["first", "writer", "late"]


def test_histogram_buckets_are_cumulative():
    histogram = Histogram((1, 2))
    for value in (0.5, 1, 1.5, 3):
        histogram.observe(value)
    assert histogram.snapshot() == {"buckets": [[1.0, 2], [2.0, 3], [float("inf"), 4]], "sum": 6.0, "count": 4}


ADD_IN_ANOTHER_PROCESS = """
import json, sys
from langchain_core.documents import Document
from rag_pipeline import Pipeline
config, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(Pipeline.from_config(config).add_documents([Document(page_content=t) for t in texts], source="notes/penguins").added)
"""


@contextmanager
def watching(service: RetrievalService, threads: int = 3):
    """Threads querying the notes' source until the block ends; yields what they saw and any failure."""
    stop, seen, failures = threading.Event(), [], []
    watchers = [threading.Thread(target=watch, args=(service, stop, seen, failures)) for _ in range(threads)]
    for thread in watchers:
        thread.start()
    try:
        yield seen, failures
    finally:
        stop.set()
        for thread in watchers:
            thread.join(30)


def test_every_reader_catches_up_with_another_processs_commit(small_index):
    """Each reader's view follows the commit together, caught up by one thread: views that
    reopened Chroma on their own, at once, would take each other's client away. (No query runs
    while the other process writes: a filtered Chroma query from a process that did not write
    can fail meanwhile, "Error finding id", with or without this service.)"""
    config = small_index.config.model_dump(mode="json")
    with RetrievalService(small_index, ServiceSettings(workers=3)) as service:
        assert service.query("emperor penguins huddle", k=50, filter={"source": "notes/penguins"}) == []
        child = subprocess.run(
            [sys.executable, "-c", ADD_IN_ANOTHER_PROCESS, json.dumps(config), json.dumps([d.page_content for d in NOTES])],
            capture_output=True, text=True, timeout=300, check=True,
        )
        added = int(child.stdout.strip().splitlines()[-1])
        with watching(service, threads=6) as (seen, failures):
            time.sleep(0.5)
        assert not failures, failures
        assert seen and set(seen) == {added}


def test_a_write_whose_chunker_counts_tokens_runs_beside_queries(small_index):
    """The tokens chunker tokenizes with the embedder's own tokenizer, untruncated, while queries
    embed with it: neither may fail (see RetrievalService.tokenizer_guard)."""
    config = small_index.config.model_dump(mode="json")
    config["chunker"] = {"type": "tokens", "chunk_size": 48, "chunk_overlap": 0}
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    with RetrievalService(pipe, ServiceSettings(workers=3)) as service:
        with watching(service) as (seen, failures):
            for _ in range(3):
                added = service.add_documents(NOTES, source="notes/penguins").added
                assert service.delete(source="notes/penguins") == added
        assert not failures, failures
        assert set(seen) <= {0, added}


def test_the_reranker_scores_the_pairs_of_several_queries_as_it_scores_each_query(tiny_reranker_dir):
    from rag_pipeline.rerankers import BgeReranker

    reranker = BgeReranker(model=str(tiny_reranker_dir), device="cpu")
    passages = ["Bees dance.", "Tides follow the moon.", "Otters use stones to open shellfish, floating on their backs."]
    queries = ["bees", "why do tides rise"]
    together = reranker.score_pairs([(q, p) for q in queries for p in passages])
    alone = [s for q in queries for s in reranker.score(q, passages)]
    assert together == pytest.approx(alone, abs=1e-5)
    documents = [Document(page_content=p, metadata={"score": 0.1 * n}, id=str(n)) for n, p in enumerate(passages)]
    assert [d.id for d in reranker.ranked(documents, together[:3])] == [d.id for d in reranker.rank("bees", documents)]
