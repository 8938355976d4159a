"""``rag-pipeline serve`` over the RetrievalService (issue 22): concurrent queries, a full queue's
429, ``/ready``, ``/metrics`` in Prometheus text, and the request id of the access log."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client.parser")

from serving import http_client, hybrid_index, server  # noqa: E402,F401  (fixtures)
from serving import metric_samples as samples  # noqa: E402

from rag_pipeline.server import ServerSettings  # noqa: E402
from rag_pipeline.service import ServiceSettings  # noqa: E402

QUERIES = [
    "how do I fix a flat bicycle tyre?",
    "sourdough starter",
    "bake bread overnight",
    "oil the chain",
    "water the garden",
    "tides and the moon",
]


def test_ready_and_metrics_count_the_requests_made(hybrid_index):
    _, pipe = hybrid_index
    with http_client(pipe) as client:
        assert client.get("/ready").json() == {"status": "ready"}
        for query in QUERIES[:3]:
            assert client.post("/query", json={"query": query}).status_code == 200
        assert client.post("/query", json={"query": "   "}).status_code == 400  # refused by the pipeline
        reply = client.get("/metrics")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        found = samples(reply.text)
        assert found["rag_service_requests_total", (("kind", "query"), ("outcome", "ok"))] == 3
        assert found["rag_service_requests_total", (("kind", "query"), ("outcome", "rejected"))] == 1
        assert found["rag_service_errors_total", (("kind", "query"), ("type", "QueryError"))] == 1
        assert found["rag_service_latency_seconds_count", (("kind", "query"),)] == 4
        assert found["rag_service_batch_size_count", (("stage", "embeddings"),)] >= 1
        assert found["rag_service_index_chunks", ()] == pipe.store.count() > 0
        assert found["rag_service_queue_depth", ()] == 0
        http = (("endpoint", "/query"), ("method", "POST"))
        assert found["rag_http_requests_total", (*http[:1], http[1], ("status", "200"))] == 3
        assert found["rag_http_requests_total", (*http[:1], http[1], ("status", "400"))] == 1
        assert found["rag_http_request_duration_seconds_count", http] == 4
    # the app's shutdown closed the service: no longer ready
    assert client.app.state.service.ready is False


def test_ready_is_503_before_the_service_starts_and_metrics_want_the_token(hybrid_index):
    _, pipe = hybrid_index
    client = http_client(pipe, ServerSettings(token="t0ken"), warm_up=False)
    reply = client.get("/ready")
    assert reply.status_code == 503 and reply.json()["detail"].startswith("not ready")
    assert client.get("/metrics").status_code == 401
    reply = client.get("/metrics", headers={"authorization": "Bearer t0ken"})
    assert reply.status_code == 200 and samples(reply.text)["rag_service_ready", ()] == 0
    client.app.state.service.close()


def test_a_full_queue_is_a_429_with_retry_after(hybrid_index):
    _, pipe = hybrid_index
    with http_client(pipe, service_settings=ServiceSettings(workers=1, max_queue=0)) as client:
        service = client.app.state.service.service
        with ThreadPoolExecutor(1) as pool:
            with service.gate.exclusive():  # as a commit would: the one worker's query waits for it
                held = pool.submit(service.query, QUERIES[0])
                deadline = time.monotonic() + 10
                while service.stats()["queries_in_flight"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                reply = client.post("/query", json={"query": QUERIES[1]})
            assert held.result(timeout=30)
        assert reply.status_code == 429, reply.text
        assert reply.headers["retry-after"] == "1"
        assert "queries are in flight already" in reply.json()["detail"]
        assert client.post("/query", json={"query": QUERIES[1]}).status_code == 200  # free again
        found = samples(client.get("/metrics").text)
        assert found["rag_service_requests_total", (("kind", "query"), ("outcome", "busy"))] == 1


def test_the_request_id_is_echoed_and_logged(hybrid_index, caplog):
    _, pipe = hybrid_index
    with http_client(pipe) as client, caplog.at_level(logging.INFO, logger="rag_pipeline.server.access"):
        reply = client.post("/query", json={"query": QUERIES[0]}, headers={"X-Request-ID": "abc-123"})
        assert reply.status_code == 200 and reply.headers["x-request-id"] == "abc-123"
        made = client.get("/health", headers={"X-Request-ID": "not a sane id!"}).headers["x-request-id"]
        assert made != "not a sane id!" and len(made) == 32
        assert client.get("/stats").headers["x-request-id"]  # one is made when none is sent
        refused = client.get("/health", headers={"host": "evil.example", "X-Request-ID": "r-1"})
        assert refused.status_code == 400 and refused.headers["x-request-id"] == "r-1"
    lines = [r for r in caplog.records if r.name == "rag_pipeline.server.access"]
    first = next(r for r in lines if r.request_id == "abc-123")
    assert (first.method, first.path, first.status) == ("POST", "/query", 200) and first.duration_ms > 0
    assert "POST /query 200" in first.getMessage() and "request_id=abc-123" in first.getMessage()
    assert any(r.request_id == "r-1" and r.status == 400 for r in lines)


def assert_same_ranking(got: list, expected: list) -> None:
    """Same chunks in the same order, each arm's own score the same up to float rounding. The tiny
    test model scores many chunks alike (cosines 0.999998 and 0.999999): a batched forward pass's
    float noise may swap two such chunks, so a swap is accepted only between near-equal dense
    scores, and the fused score (min-max normalised, which magnifies that noise) is not compared."""
    assert len(got) == len(expected)
    by_id = dict(expected)
    for (got_id, got_scores), (want_id, want_scores) in zip(got, expected):
        if got_id != want_id:
            assert got_scores["dense_score"] == pytest.approx(want_scores["dense_score"], abs=1e-5), (got, expected)
        for arm in ("dense_score", "bm25_score"):
            if got_id in by_id and arm in got_scores and arm in by_id[got_id]:
                assert got_scores[arm] == pytest.approx(by_id[got_id][arm], abs=1e-5), (got, expected)


def test_concurrent_http_queries_answer_what_sequential_ones_answer(server):
    def ask(query: str):
        status, body = server.request("POST", "/query", {"query": query, "k": 3})
        assert status == 200, body
        return [(r["id"], r["scores"]) for r in body["results"]]

    sequential = {query: ask(query) for query in QUERIES}
    asked = QUERIES * 4
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(ask, asked))
    for query, answer in zip(asked, concurrent):
        assert_same_ranking(answer, sequential[query])
    status, metrics = server.request("GET", "/metrics")
    assert status == 200
    found = samples(metrics)
    assert found["rag_service_requests_total", (("kind", "query"), ("outcome", "ok"))] >= len(QUERIES) + len(asked)
    assert server.request("GET", "/ready") == (200, {"status": "ready"})
