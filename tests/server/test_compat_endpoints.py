"""``POST /v1/embeddings`` (OpenAI's shape) and ``POST /rerank`` (Cohere's and Jina's), answered by
a started ``rag-pipeline serve`` to the clients that speak those shapes: the ``openai`` package,
and LangChain's ``JinaRerank``; what they compute is the pipeline's own embedder and reranker."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client.parser")

from conftest import pipeline_config  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from serving import http_client, hybrid_index, ingested, server, serving  # noqa: E402,F401  (fixtures)
from serving import metric_samples as samples  # noqa: E402

from rag_pipeline.service import ServiceSettings  # noqa: E402

TOKEN = "compat-token"
LIMIT = 40  # --max-documents of the reranking server

PASSAGES = [
    "Fix a flat bicycle tyre: lever the tyre off, patch the tube, pump it up.",
    "Bake bread with flour, water, salt and a sourdough starter; proof it overnight.",
    "Water the garden early; compost feeds the soil.",
    "Tides rise and fall twice a day, pulled by the moon.",
]
QUERY = "how do I repair a punctured bike tyre?"


def many_texts(count: int) -> list[str]:
    """``count`` distinct texts of varied lengths (a batch pads them to the longest)."""
    return [f"{PASSAGES[i % len(PASSAGES)]} Note {i}: " + "more words " * (i % 7) for i in range(count)]


def decoded(item) -> np.ndarray:
    """One embedding from the openai client, whether it asked for floats or base64."""
    vector = item.embedding
    if isinstance(vector, str):
        return np.frombuffer(base64.b64decode(vector), dtype="<f4")
    return np.asarray(vector, dtype=np.float32)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reranking_index(tmp_path_factory, sample_corpus, tiny_bge_dir, tiny_reranker_dir):
    """A dense index of the sample corpus whose config has the tiny cross-encoder as its reranker."""
    folder = tmp_path_factory.mktemp("compat-index")
    config = pipeline_config(
        sample_corpus, folder / "index", str(tiny_bge_dir),
        reranker={"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"},
    )
    return ingested(folder, config)


@pytest.fixture(scope="module")
def reranking_server(reranking_index):
    """The reranking config served with a token and at most LIMIT inputs or documents per request."""
    with serving(
        reranking_index[0], "--token-env", "RAG_COMPAT_TOKEN", "--max-documents", str(LIMIT),
        env={"RAG_COMPAT_TOKEN": TOKEN},
    ) as running:
        yield running


def pair_tokens(reranker, query: str, texts: list[str]) -> int:
    encoded = reranker.cross_encoder.tokenizer([query] * len(texts), texts, add_special_tokens=True, truncation=False)
    return sum(len(ids) for ids in encoded["input_ids"])


# -- /v1/embeddings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 32])
def test_the_openai_client_gets_the_passage_vectors_and_token_counts(client, hybrid_index, count):
    _, pipe = hybrid_index
    texts = many_texts(count)
    # the openai client asks for base64 unless told otherwise, and decodes it itself
    reply = client.embeddings.create(input=texts[0] if count == 1 else texts, model="text-embedding-3-small")
    assert [item.index for item in reply.data] == list(range(count))
    vectors = np.vstack([decoded(item) for item in reply.data])
    np.testing.assert_allclose(vectors, np.asarray(pipe.embeddings.embed_documents(texts)), atol=1e-5)
    tokens = sum(pipe.embeddings.count_tokens(texts))
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (tokens, tokens)
    # any model name is accepted; the answer names the configured one
    assert reply.model == pipe.embeddings.model_id == "bge-tiny-en-v1.5"


def test_float_and_base64_answer_the_same_vectors(client, server, hybrid_index):
    _, pipe = hybrid_index
    texts = PASSAGES[:3]
    as_floats = client.embeddings.create(input=texts, model="m", encoding_format="float")
    assert all(isinstance(item.embedding, list) for item in as_floats.data)
    status, raw = server.request("POST", "/v1/embeddings", {"input": texts, "model": "m", "encoding_format": "base64"})
    assert status == 200, raw
    assert raw["object"] == "list" and {item["object"] for item in raw["data"]} == {"embedding"}
    from_base64 = np.vstack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in raw["data"]])
    from_floats = np.vstack([decoded(item) for item in as_floats.data])
    np.testing.assert_array_equal(from_base64, from_floats)  # the same float32 values, two encodings
    assert from_floats.shape == (3, pipe.embeddings.dimension)
    # the default, for a client that names no format: floats
    status, plain = server.request("POST", "/v1/embeddings", {"input": texts[0]})
    assert status == 200 and isinstance(plain["data"][0]["embedding"], list)
    np.testing.assert_allclose(plain["data"][0]["embedding"], from_floats[0], atol=1e-5)


def test_input_type_query_puts_the_query_instruction_first(client, hybrid_index):
    _, pipe = hybrid_index
    texts = [QUERY, "sourdough starter"]
    reply = client.embeddings.create(input=texts, model="m", extra_body={"input_type": "query"})
    vectors = np.vstack([decoded(item) for item in reply.data])
    np.testing.assert_allclose(vectors, np.asarray([pipe.embeddings.embed_query(t) for t in texts]), atol=1e-5)
    passages = np.vstack([decoded(item) for item in client.embeddings.create(input=texts, model="m").data])
    assert not np.allclose(vectors, passages, atol=1e-3)  # the instruction made a difference
    instruction = pipe.embeddings.query_instruction
    assert instruction  # a BGE v1.5 model: it has one
    assert reply.usage.prompt_tokens == sum(pipe.embeddings.count_tokens([instruction + t for t in texts]))


def test_dimensions_must_be_the_models(client, hybrid_index):
    _, pipe = hybrid_index
    dimension = pipe.embeddings.dimension
    reply = client.embeddings.create(input="x y z", model="m", dimensions=dimension)
    assert len(decoded(reply.data[0])) == dimension
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(input="x y z", model="m", dimensions=dimension // 2)
    message = f"dimensions: this model's vectors have {dimension} dimensions and are never shortened"
    # the openai client shows OpenAI's error.message; the server's own `detail` is there too
    assert refused.value.status_code == 400 and message in str(refused.value)
    assert refused.value.body["message"].startswith(message)
    with pytest.raises(openai.BadRequestError, match="input is an empty string"):
        client.embeddings.create(input="", model="m")


@pytest.mark.parametrize(
    "body, status, detail",
    [
        ({"input": []}, 400, "input is empty: give a string or a list of strings to embed"),
        ({"input": ""}, 400, "input is an empty string: give text to embed, or leave it out"),
        ({"input": ["fine", ""]}, 400, "input[1] is an empty string: give text to embed, or leave it out"),
        ({"input": [[101, 2023, 102]]}, 400, "input: token ids are not accepted, send the texts"),
        ({"input": ["fine", "\ud800"]}, 400, "input[1]: not valid Unicode"),
        ({"input": "x", "encoding_format": "int8"}, 422, None),
        ({"input": "x", "input_type": "document"}, 422, None),
        ({"input": "x", "temperature": 0}, 422, None),  # an unknown field is refused, not ignored
    ],
)
def test_embedding_requests_a_client_can_fix_are_refused(server, body, status, detail):
    answered, reply = server.request("POST", "/v1/embeddings", body)
    assert answered == status, reply
    if detail is not None:
        assert reply["detail"].startswith(detail) and "\n" not in reply["detail"]
        assert reply["error"]["message"] == reply["detail"]  # OpenAI's error object, for its clients


def test_the_openapi_spec_lists_both(server):
    status, spec = server.request("GET", "/openapi.json")
    assert status == 200
    assert "post" in spec["paths"]["/v1/embeddings"] and "post" in spec["paths"]["/rerank"]
    schemas = spec["components"]["schemas"]
    assert {"EmbeddingsRequest", "EmbeddingsResponse", "RerankRequest", "RerankResponse"} <= schemas.keys()
    assert "input_type" in schemas["EmbeddingsRequest"]["properties"]


def test_a_config_without_a_reranker_says_how_to_add_one(server, hybrid_index):
    status, reply = server.request("POST", "/rerank", {"query": QUERY, "documents": PASSAGES})
    assert status == 404
    assert reply["detail"] == (
        f"the config {hybrid_index[1].config.name!r} has no reranker: add a `reranker:` section "
        "(type: bge-reranker, model: BAAI/bge-reranker-base, or a local folder) and restart"
    )


# -- /rerank ----------------------------------------------------------------------------------------


def test_rerank_scores_are_the_cross_encoders_best_first(reranking_server, reranking_index):
    _, pipe = reranking_index
    texts = many_texts(9)
    status, reply = reranking_server.request("POST", "/rerank", {"query": QUERY, "documents": texts}, token=TOKEN)
    assert status == 200, reply
    expected = pipe.reranker.score(QUERY, texts)
    results = reply["results"]
    assert sorted(r["index"] for r in results) == list(range(len(texts)))
    for result in results:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], rel=1e-4, abs=1e-5)
        assert "document" not in result  # only when asked for
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert reply["model"] == "bge-reranker-tiny"
    assert reply["usage"] == {"total_tokens": pair_tokens(pipe.reranker, QUERY, texts)}


def test_top_n_return_documents_and_document_objects(reranking_server, reranking_index):
    _, pipe = reranking_index
    texts = many_texts(6)
    best_first = sorted(range(6), key=lambda i: pipe.reranker.score(QUERY, texts)[i], reverse=True)
    documents = [{"text": t, "title": f"doc {i}"} if i % 2 else t for i, t in enumerate(texts)]  # both forms, mixed
    body = {"query": QUERY, "documents": documents, "top_n": 2, "return_documents": True, "model": "rerank-v3.5"}
    status, reply = reranking_server.request("POST", "/rerank", body, token=TOKEN)
    assert status == 200, reply
    assert [r["index"] for r in reply["results"]] == best_first[:2]
    assert [r["document"] for r in reply["results"]] == [{"text": texts[i]} for i in best_first[:2]]
    # a top_n beyond the documents gives them all
    status, reply = reranking_server.request("POST", "/rerank", {"query": QUERY, "documents": texts, "top_n": 50}, token=TOKEN)
    assert status == 200 and [r["index"] for r in reply["results"]] == best_first


def test_the_payloads_of_cohere_and_llamaindex_clients(reranking_server, reranking_index):
    """Not installed here, so their bodies as their code builds them: the cohere SDK's v1 rerank
    (under langchain-cohere's and LlamaIndex's CohereRerank) with its optional fields, its v2
    rerank, and LlamaIndex's JinaRerank (query, documents, model, top_n) at /v1/rerank."""
    _, pipe = reranking_index
    expected = pipe.reranker.score(QUERY, PASSAGES)
    best = max(range(len(PASSAGES)), key=lambda i: expected[i])
    payloads = [
        ("/rerank", {"model": "rerank-english-v3.0", "query": QUERY, "documents": PASSAGES, "top_n": 3,
                     "rank_fields": ["text"], "return_documents": False, "max_chunks_per_doc": None}),
        ("/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": PASSAGES, "top_n": 3, "max_tokens_per_doc": 4096}),
        ("/v1/rerank", {"query": QUERY, "documents": PASSAGES, "model": "jina-reranker-v2-base-multilingual", "top_n": 3}),
        ("/v1/rerank", {"query": QUERY, "documents": PASSAGES, "model": "jina-reranker-v2-base-multilingual", "top_n": None}),
    ]
    for path, body in payloads:
        status, reply = reranking_server.request("POST", path, body, token=TOKEN)
        assert status == 200, (path, body, reply)
        assert reply["results"][0]["index"] == best
        assert reply["results"][0]["relevance_score"] == pytest.approx(expected[best], rel=1e-4, abs=1e-5)
        assert len(reply["results"]) == (3 if body["top_n"] else len(PASSAGES))


def test_langchains_jina_reranker_pointed_at_the_server(reranking_server, reranking_index, monkeypatch):
    jina_rerank = pytest.importorskip("langchain_community.document_compressors.jina_rerank")
    _, pipe = reranking_index
    monkeypatch.setattr(jina_rerank, "JINA_API_URL", reranking_server.url + "/v1/rerank")
    reranker = jina_rerank.JinaRerank(jina_api_key=TOKEN, top_n=2)  # sent as the bearer token
    documents = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(PASSAGES)]
    kept = reranker.compress_documents(documents, QUERY)
    expected = pipe.reranker.score(QUERY, PASSAGES)
    best_first = sorted(range(len(PASSAGES)), key=lambda i: expected[i], reverse=True)
    assert [d.metadata["n"] for d in kept] == best_first[:2]
    assert [d.metadata["relevance_score"] for d in kept] == pytest.approx([expected[i] for i in best_first[:2]], rel=1e-4)
    # a wrong key is the server's 401, which the client raises with the server's message
    with pytest.raises(RuntimeError, match="missing or wrong token"):
        jina_rerank.JinaRerank(jina_api_key="wrong").compress_documents(documents, QUERY)


@pytest.mark.parametrize(
    "body, status, detail",
    [
        ({"query": QUERY, "documents": []}, 400, "documents is empty: give at least one document to rank"),
        ({"query": "  ", "documents": PASSAGES}, 400, "the query is empty: give the text to rank the passages against"),
        ({"query": QUERY, "documents": ["ok", "\udfff"]}, 400, "documents[1]: not valid Unicode"),
        ({"query": QUERY, "documents": PASSAGES, "rank_fields": ["title"]}, 400, "rank_fields: this server ranks"),
        ({"query": QUERY, "documents": PASSAGES, "top_n": 0}, 422, None),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, 422, None),
        ({"query": QUERY, "texts": PASSAGES}, 422, None),  # TEI's own field names are not this shape
    ],
)
def test_rerank_requests_a_client_can_fix_are_refused(reranking_server, body, status, detail):
    answered, reply = reranking_server.request("POST", "/rerank", body, token=TOKEN)
    assert answered == status, reply
    if detail is not None:
        assert reply["detail"].startswith(detail) and "\n" not in reply["detail"]


# -- the server's boundary ------------------------------------------------------------------------


def test_both_want_the_token_when_the_server_has_one(reranking_server, reranking_index):
    _, pipe = reranking_index
    for path, body in (("/v1/embeddings", {"input": "x"}), ("/rerank", {"query": QUERY, "documents": PASSAGES})):
        status, reply = reranking_server.request("POST", path, body)
        assert status == 401 and "Authorization: Bearer" in reply["detail"]
        assert reranking_server.request("POST", path, body, token="wrong")[0] == 401
    url = reranking_server.url + "/v1"
    with pytest.raises(openai.AuthenticationError, match="missing or wrong token"):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).embeddings.create(input="x", model="m")
    reply = openai.OpenAI(base_url=url, api_key=TOKEN, max_retries=0).embeddings.create(input=["x", "y"], model="m")
    np.testing.assert_allclose(
        np.vstack([decoded(item) for item in reply.data]), np.asarray(pipe.embeddings.embed_documents(["x", "y"])), atol=1e-5
    )


def test_more_inputs_than_max_documents_are_a_413(reranking_server):
    texts = many_texts(LIMIT + 1)
    status, reply = reranking_server.request("POST", "/v1/embeddings", {"input": texts}, token=TOKEN)
    assert status == 413
    assert reply["detail"] == f"{LIMIT + 1} inputs in one request; this server takes at most {LIMIT} (serve --max-documents): split them"
    status, reply = reranking_server.request("POST", "/rerank", {"query": QUERY, "documents": texts}, token=TOKEN)
    assert status == 413 and reply["detail"].startswith(f"{LIMIT + 1} documents in one request; this server takes at most {LIMIT}")
    assert reranking_server.request("POST", "/v1/embeddings", {"input": texts[:LIMIT]}, token=TOKEN)[0] == 200


# -- through the service: admission, batching, metrics ---------------------------------------------------


def test_both_are_service_requests_batched_and_counted(reranking_index):
    _, pipe = reranking_index
    with http_client(pipe) as http:
        service = http.app.state.service.service
        embedded, scored = service.embedding_batcher.calls, service.reranker_batcher.calls
        assert http.post("/v1/embeddings", json={"input": PASSAGES}).status_code == 200
        assert service.embedding_batcher.calls == embedded  # passages are encoded on the reader
        reply = http.post("/v1/embeddings", json={"input": [QUERY], "input_type": "query"})
        assert reply.status_code == 200 and service.embedding_batcher.calls == embedded + 1  # queries: the batcher
        assert http.post("/rerank", json={"query": QUERY, "documents": PASSAGES}).status_code == 200
        assert service.reranker_batcher.calls == scored + 1
        assert http.post("/v1/embeddings", json={"input": [""]}).status_code == 400  # refused before the service
        found = samples(http.get("/metrics").text)
        assert found["rag_service_requests_total", (("kind", "embed"), ("outcome", "ok"))] == 2
        assert found["rag_service_requests_total", (("kind", "rerank"), ("outcome", "ok"))] == 1
        assert found["rag_service_latency_seconds_count", (("kind", "rerank"),)] == 1
        endpoint = (("endpoint", "/v1/embeddings"), ("method", "POST"))
        assert found["rag_http_requests_total", (*endpoint, ("status", "200"))] == 2
        assert found["rag_http_requests_total", (*endpoint, ("status", "400"))] == 1


def test_a_full_queue_answers_both_429(reranking_index):
    _, pipe = reranking_index
    with http_client(pipe, service_settings=ServiceSettings(workers=1, max_queue=0)) as http:
        service = http.app.state.service.service
        with ThreadPoolExecutor(1) as pool:
            with service.gate.exclusive():  # as a commit would: the one worker's request waits for it
                held = pool.submit(service.embed, ["held"])
                deadline = time.monotonic() + 10
                while service.stats()["queries_in_flight"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                replies = [
                    http.post("/v1/embeddings", json={"input": "x"}),
                    http.post("/rerank", json={"query": QUERY, "documents": PASSAGES}),
                ]
            assert held.result(timeout=30).vectors.shape[0] == 1
        for reply in replies:
            assert reply.status_code == 429, reply.text
            assert reply.headers["retry-after"] == "1"
        assert http.post("/rerank", json={"query": QUERY, "documents": PASSAGES}).status_code == 200  # free again
        stats = service.stats()
        assert stats["requests"]["embed"]["busy"] == 1 and stats["requests"]["rerank"]["busy"] == 1
