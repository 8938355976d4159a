"""The server holds its boundary whatever a client sends (issue 21, items 8-11 and 13): the Host
header, a filter that narrows and never widens, bounded work per request, text that is not valid
Unicode, and status codes and locks that keep queries answering while a write waits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import pipeline_config  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serving import http_client, serving  # noqa: E402

from rag_pipeline import Pipeline  # noqa: E402
from rag_pipeline.cli import main  # noqa: E402
from rag_pipeline.server import ServerSettings, create_app  # noqa: E402

TOKEN = "boundary-token"
QUERY = "how do I bake bread and fix a bicycle"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Markdown and text files on the same topics, so that a filter on file_type decides what comes back."""
    root = tmp_path_factory.mktemp("boundary-corpus")
    texts = {
        "bread.md": "# Bread\nBake bread with flour, water, salt and a sourdough starter; proof it overnight.",
        "bicycle.md": "# Bicycle\nFix a flat bicycle tyre: lever the tyre off, patch the tube, pump it up.",
        "garden.md": "# Garden\nWater the garden early; compost feeds the soil and the bread wheat.",
        "bread-notes.txt": "Notes on bread: bake at 230 degrees, steam the oven, bread crust browns.",
        "bicycle-notes.txt": "Bicycle notes: fix the chain, oil the bicycle chain, check the brakes.",
        "tides.txt": "Tides rise and fall twice a day, pulled by the moon.",
    }
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def index_config(tmp_path_factory, corpus, tiny_bge_dir):
    """A hybrid (dense + BM25) index of the corpus on disk, so that it has a write lock."""
    folder = tmp_path_factory.mktemp("boundary-index")
    config = pipeline_config(
        corpus, folder / "index", str(tiny_bge_dir),
        lexical={"type": "bm25"},
        retriever={"type": "hybrid", "k": 3, "fetch_k": 10},
    )
    Pipeline.from_config(config).ingest()
    return config


@pytest.fixture(scope="module")
def pipe(index_config):
    return Pipeline.from_config(index_config)


@pytest.fixture(scope="module")
def client(pipe):
    return http_client(pipe)


@pytest.fixture
def started(monkeypatch):
    """What ``rag-pipeline serve`` would have served: its app, instead of a server that runs until stopped."""
    import rag_pipeline.server as server_package

    captured: dict = {}
    monkeypatch.setattr(server_package, "run_server", lambda app, host, port, **_: captured.update(app=app, host=host))
    return captured


def write_config(config: dict, path) -> str:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


# -- 8: the Host header ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "LocalHost.", "127.0.0.1", "127.0.0.1:8000", "127.3.2.1:80", "[::1]", "[::1]:8000"]
)
def test_a_loopback_server_answers_loopback_host_names(client, host):
    status = client.get("/stats", headers={"host": host}).status_code
    assert status == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example", "evil.example:8000", "testserver", "localhost.evil.example", "127.0.0.1.evil.example",
        "192.168.1.20", "[::2]:8000", "::1", "localhost:80x", "",
    ],
)
def test_a_loopback_server_refuses_any_other_host_with_a_one_line_400(client, pipe, host):
    # a page whose name was rebound to 127.0.0.1 arrives with its own name in Host
    for method, path, body in (("GET", "/stats", None), ("POST", "/query", {"query": QUERY}),
                               ("POST", "/documents", {"source": "api:rebound", "documents": [{"content": "planted"}]})):
        reply = client.request(method, path, json=body, headers={"host": host})
        assert reply.status_code == 400, (method, path, reply.text)
        detail = reply.json()["detail"]
        assert "not a name this server answers to" in detail and "\n" not in detail
    assert "api:rebound" not in {s.source for s in pipe.sources()}  # the write did not happen


def test_a_request_without_a_host_header_is_refused(pipe):
    # an ASGI request with no Host at all (HTTP/1.0 allows it): nothing to check it against
    app = create_app(pipe, warm_up=False)
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.0", "method": "GET", "scheme": "http",
             "path": "/stats", "raw_path": b"/stats", "query_string": b"", "headers": [], "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["detail"].startswith("no Host header is not a name this server answers to")


def test_serve_with_host_answers_that_host_and_the_allowed_ones(index_config, tmp_path, monkeypatch, started):
    monkeypatch.setenv("RAG_BOUNDARY_TOKEN", TOKEN)
    config = write_config(index_config, tmp_path / "config.yaml")
    assert main(["serve", config, "-q", "--host", "10.9.8.7", "--token-env", "RAG_BOUNDARY_TOKEN",
                 "--allowed-host", "search.internal", "--allowed-host", "192.168.0.0/16"]) == 0
    client = TestClient(started["app"])
    auth = {"authorization": f"Bearer {TOKEN}"}
    for host in ("10.9.8.7", "10.9.8.7:8000", "search.internal:8000", "SEARCH.INTERNAL", "192.168.4.5"):
        assert client.get("/stats", headers={"host": host, **auth}).status_code == 200, host
    for host in ("localhost", "127.0.0.1", "evil.example", "10.9.8.8", "search.internal.evil.example"):
        assert client.get("/stats", headers={"host": host, **auth}).status_code == 400, host


def test_a_loopback_bind_keeps_its_names_beside_an_allowed_host(index_config, tmp_path, started):
    config = write_config(index_config, tmp_path / "config.yaml")
    assert main(["serve", config, "-q", "--allowed-host", "notes.localhost"]) == 0
    client = TestClient(started["app"])
    for host, status in (("127.0.0.1:8000", 200), ("localhost", 200), ("notes.localhost:8000", 200), ("evil.example", 400)):
        assert client.get("/health", headers={"host": host}).status_code == status, host


def test_every_interface_needs_the_names_clients_use(index_config, tmp_path, monkeypatch, capsys, started):
    monkeypatch.setenv("RAG_BOUNDARY_TOKEN", TOKEN)
    config = write_config(index_config, tmp_path / "config.yaml")
    assert main(["serve", config, "--host", "0.0.0.0", "--token-env", "RAG_BOUNDARY_TOKEN"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --host 0.0.0.0 listens on every interface: name the host names clients use with --allowed-host")
    assert "\n" not in message
    assert main(["serve", config, "--allowed-host", "http://search.internal:8000"]) == 2
    assert "allowed host 'http://search.internal:8000': give a host name" in capsys.readouterr().err
    assert started == {}  # neither started a server
    # '*': the operator turns the check off (a proxy in front checks the name)
    assert main(["serve", config, "-q", "--host", "0.0.0.0", "--token-env", "RAG_BOUNDARY_TOKEN", "--allowed-host", "*"]) == 0
    reply = TestClient(started["app"]).get("/stats", headers={"host": "anything.example", "authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200


def test_the_real_server_refuses_a_foreign_host(tmp_path, index_config):
    with serving(write_config(index_config, tmp_path / "config.yaml")) as running:
        status, body = running.request("POST", "/query", {"query": QUERY}, headers={"Host": "evil.example:8000"})
        assert status == 400 and body["detail"].startswith("Host 'evil.example:8000' is not a name this server answers to")
        status, body = running.request("POST", "/query", {"query": QUERY}, headers={"Host": "localhost:1234"})
        assert status == 200 and body["results"]


# -- 9: a request narrows, never widens -------------------------------------------------------------


def test_a_request_filter_narrows_the_configured_filter_in_both_arms(index_config):
    config = {**index_config, "retriever": {**index_config["retriever"], "filter": {"file_type": "md"}}}
    pipe = Pipeline.from_config(config)
    everything = 6
    # the library keeps its replace semantics: {} lifts the configured filter, and .txt chunks match
    widened = pipe.as_retriever(k=everything).invoke(QUERY, filter={})
    assert {d.metadata["file_type"] for d in widened} >= {"md", "txt"}

    client = http_client(pipe)
    for body in ({"query": QUERY, "k": everything}, {"query": QUERY, "k": everything, "filter": {}}):
        reply = client.post("/query", json=body)
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert results and {r["metadata"]["file_type"] for r in results} == {"md"}
    # both must hold: a filter the config excludes finds nothing
    reply = client.post("/query", json={"query": QUERY, "k": everything, "filter": {"file_type": "txt"}})
    assert reply.status_code == 200 and reply.json()["results"] == []
    reply = client.post("/query", json={"query": QUERY, "k": everything, "filter": {"file_type": {"$in": ["md", "txt"]}}})
    assert {r["metadata"]["file_type"] for r in reply.json()["results"]} == {"md"}
    # and a filter inside the configured one narrows it
    reply = client.post("/query", json={"query": QUERY, "k": everything, "filter": {"doc_id": "bread.md"}})
    assert {r["doc_id"] for r in reply.json()["results"]} == {"bread.md"}
    reply = client.post("/query", json={"query": QUERY, "filter": {"file_type": {"$bad": 1}}})
    assert reply.status_code == 400 and reply.json()["detail"].startswith("filter: unknown operator '$bad'")


# -- 10: bounded work per request ----------------------------------------------------------------------


def test_k_is_bounded_and_strictly_a_number(pipe):
    client = http_client(pipe, ServerSettings(max_k=5))
    assert len(client.post("/query", json={"query": QUERY, "k": 5}).json()["results"]) == 5
    for k in (6, 10**9, 10**18, 10**40):
        reply = client.post("/query", json={"query": QUERY, "k": k})
        assert reply.status_code == 400, (k, reply.text)
        assert reply.json()["detail"] == "k: this server answers at most 5 results per query (serve --max-k); ask for fewer"
    for k in (True, "3", 2.0):
        reply = client.post("/query", json={"query": QUERY, "k": k})
        assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "k"], k


def test_the_cli_sets_max_k(index_config, tmp_path, capsys, started):
    config = write_config(index_config, tmp_path / "config.yaml")
    assert main(["serve", config, "-q", "--max-k", "2"]) == 0
    client = TestClient(started["app"], base_url="http://localhost")
    assert client.post("/query", json={"query": QUERY, "k": 2}).status_code == 200
    assert client.post("/query", json={"query": QUERY, "k": 3}).status_code == 400
    assert main(["serve", config, "--max-k", "0"]) == 2
    assert "--max-k: must be a positive whole number, got 0" in capsys.readouterr().err


def test_one_retriever_serves_every_k(index_config, monkeypatch):
    pipe = Pipeline.from_config(index_config)
    built = []
    as_retriever = Pipeline.as_retriever

    def counted(self, *args, **kwargs):
        built.append(kwargs.get("k", args[0] if args else None))
        return as_retriever(self, *args, **kwargs)

    # the service's readers build theirs on their own views of the index: counted on the class
    monkeypatch.setattr(Pipeline, "as_retriever", counted)
    client = http_client(pipe)
    at_start = len(built)
    for k in range(1, 7):
        reply = client.post("/query", json={"query": QUERY, "k": k})
        assert len(reply.json()["results"]) == k
    assert len(built) == at_start  # not one more per distinct k


def test_the_reranker_never_scores_more_than_max_k_or_fetch_k(index_config, tiny_reranker_dir, monkeypatch):
    config = {**index_config, "reranker": {"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"}}
    pipe = Pipeline.from_config(config)
    client = http_client(pipe, ServerSettings(max_k=4))
    scored = []
    rank, ranked = type(pipe.reranker).rank, type(pipe.reranker).ranked

    def counted(self, query, candidates, *args, **kwargs):
        scored.append(len(candidates))
        return rank(self, query, candidates, *args, **kwargs)

    def counted_ranked(self, candidates, *args, **kwargs):  # the service's batching reranker ranks with this
        scored.append(len(candidates))
        return ranked(self, candidates, *args, **kwargs)

    # the reranker is a pydantic model: patched on its class
    monkeypatch.setattr(type(pipe.reranker), "rank", counted)
    monkeypatch.setattr(type(pipe.reranker), "ranked", counted_ranked)
    assert client.post("/query", json={"query": QUERY, "k": 4}).status_code == 200
    assert client.post("/query", json={"query": QUERY, "k": 10**9}).status_code == 400
    assert scored and max(scored) <= max(config["retriever"]["fetch_k"], 4)


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(pipe):
    client = http_client(pipe, ServerSettings(max_body_bytes=4096))
    big = {"source": "api:big", "documents": [{"content": "word " * 2000}]}
    reply = client.post("/documents", json=big)
    assert reply.status_code == 413
    assert reply.json()["detail"] == "the request body is over 0.00390625 MiB, this server's limit (serve --max-body-mb)"

    def chunks():  # no Content-Length: the body arrives in pieces
        raw = json.dumps(big).encode()
        for start in range(0, len(raw), 1000):
            yield raw[start : start + 1000]

    reply = client.post("/documents", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert "api:big" not in {s.source for s in pipe.sources()}
    reply = client.post("/query", json={"query": QUERY})  # a small body passes
    assert reply.status_code == 200


def test_documents_per_request_are_bounded(pipe):
    client = http_client(pipe, ServerSettings(max_documents=3))
    documents = [{"content": f"note number {n} about kites"} for n in range(4)]
    reply = client.post("/documents", json={"source": "api:many", "documents": documents})
    assert reply.status_code == 413
    assert reply.json()["detail"].startswith("4 documents in one request; this server takes at most 3 (serve --max-documents)")
    assert "api:many" not in {s.source for s in pipe.sources()}
    reply = client.post("/documents", json={"source": "api:many", "documents": documents[:3]})
    assert reply.status_code == 200, reply.text
    assert client.request("DELETE", "/documents", json={"source": "api:many"}).status_code == 200


# -- 11: text that is not valid Unicode --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "raw", "field"),
    [
        ("POST", "/query", '{"query": "bread \\ud800"}', "query"),
        ("POST", "/query", '{"query": "bread", "filter": {"doc_id": "\\udc00.md"}}', "filter['doc_id']"),
        ("POST", "/documents", '{"source": "api:u", "documents": [{"content": "ok"}, {"content": "bad \\ud800"}]}',
         "documents[1].content"),
        ("POST", "/documents", '{"source": "api:u", "documents": [{"content": "ok", "metadata": {"t\\ud800": 1}}]}',
         "documents[0].metadata (the key 't\\ud800')"),
        ("POST", "/documents", '{"source": "api:u", "documents": [{"content": "ok", "metadata": {"tags": ["a", "\\ud800"]}}]}',
         "documents[0].metadata['tags'][1]"),
        ("POST", "/documents", '{"source": "api:\\ud800", "documents": [{"content": "ok"}]}', "source"),
        ("POST", "/documents", '{"source": "api:u", "documents": [{"content": "ok", "id": "\\ud800"}]}', "documents[0].id"),
        ("DELETE", "/documents", '{"source": "api:\\ud800"}', "source"),
        ("DELETE", "/documents", '{"ids": ["fine", "\\ud800"]}', "ids[1]"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(client, pipe, method, path, raw, field):
    reply = client.request(method, path, content=raw.encode(), headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"] == (
        f"{field}: not valid Unicode (a lone surrogate such as JSON's \\ud800 escape); send the text as UTF-8"
    )
    assert "api:u" not in {s.source for s in pipe.sources()}


def test_a_validation_error_that_echoes_a_lone_surrogate_is_a_422(client):
    reply = client.post("/query", content=b'{"query": "x", "kk": "\\ud800"}', headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["input"] == "\ud800"


# -- 13: status codes, locks and the docs -----------------------------------------------------------


def test_a_busy_index_is_a_409(index_config):
    pipe = Pipeline.from_config(index_config, {"ingest.lock_timeout": 0.2})
    client = http_client(pipe)
    holding = threading.Event()
    release = threading.Event()

    def hold_the_lock():  # as an ingest would, in another thread of this process
        with Pipeline.from_config(index_config).state.lock(5):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(30)
        reply = client.post("/documents", json={"source": "api:busy", "documents": [{"content": "kites fly high"}]})
        assert reply.status_code == 409
        assert reply.json()["detail"].startswith("another ingest or reindex is writing to")
        assert client.request("DELETE", "/documents", json={"source": "api:busy"}).status_code == 409
    finally:
        release.set()
        holder.join()


def test_an_unreachable_index_server_is_a_503(tmp_path, corpus, tiny_bge_dir):
    from indexing.chroma_server import ChromaServer

    chroma = ChromaServer(tmp_path / "chroma-server").start()
    try:
        config = pipeline_config(corpus, None, str(tiny_bge_dir))
        config["vectorstore"] = chroma.vectorstore_section()
        config["ingest"] = {"state_directory": str(tmp_path / "state")}
        pipe = Pipeline.from_config(config)
        pipe.ingest()
        client = http_client(pipe)
        assert client.post("/query", json={"query": QUERY}).status_code == 200
    finally:
        chroma.stop()
    reply = client.post("/query", json={"query": QUERY})
    assert reply.status_code == 503
    assert reply.json()["detail"].startswith("vectorstore: the Chroma server at http://127.0.0.1:")


def test_queries_answer_while_a_write_waits_for_an_ingest_in_another_process(index_config, tmp_path):
    text = "Kites fly highest in a steady sea breeze over open sand dunes."
    config = write_config(index_config, tmp_path / "config.yaml")
    with serving(config, "--set", "ingest.lock_timeout=120") as running, ThreadPoolExecutor(2) as pool:
        holder = Pipeline.from_config(index_config).state.lock(5)
        holder.__enter__()  # this test process holds the index's write lock, as a CLI ingest would
        try:
            write = pool.submit(running.request, "POST", "/documents",
                                {"source": "api:kites", "documents": [{"content": text}]})
            time.sleep(1.5)  # the server is now waiting for the lock
            assert not write.done()
            started = time.monotonic()
            query = pool.submit(running.request, "POST", "/query", {"query": "kites sea breeze dunes"})
            try:
                status, body = query.result(timeout=20)
            except FutureTimeout:
                pytest.fail("a query waited behind a write that waits for the index's lock")
            assert status == 200 and time.monotonic() - started < 20
            assert running.request("GET", "/stats")[0] == 200
        finally:
            holder.__exit__(None, None, None)
        status, body = write.result(timeout=60)
        assert status == 200, body
        status, body = running.request("POST", "/query", {"query": "kites sea breeze dunes", "k": 1})
        assert body["results"][0]["content"] == text


def test_the_api_description_wants_the_token(pipe):
    guarded = http_client(pipe, ServerSettings(token=TOKEN))
    assert guarded.get("/openapi.json").status_code == 401
    assert guarded.get("/docs").status_code == 404  # a browser cannot send the token to these pages
    assert guarded.get("/redoc").status_code == 404
    reply = guarded.get("/openapi.json", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 200 and "/query" in reply.json()["paths"]
    assert guarded.get("/health").status_code == 200
    open_server = http_client(pipe, warm_up=False)
    assert open_server.get("/docs").status_code == 200 and open_server.get("/openapi.json").status_code == 200
