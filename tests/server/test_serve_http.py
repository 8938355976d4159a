"""``rag-pipeline serve`` answered over real HTTP by a started server process (issue 13.6)."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import pipeline_config  # noqa: E402
from serving import hybrid_index, server, serving  # noqa: E402,F401  (fixtures)

from rag_pipeline import Pipeline  # noqa: E402
from rag_pipeline.cli import main  # noqa: E402

TOKEN = "s3cret-for-tests"


def test_query_answers_what_the_python_retriever_answers_with_every_score(server, hybrid_index):
    _, pipe = hybrid_index
    query = "how do I fix a flat bicycle tyre?"
    status, body = server.request("POST", "/query", {"query": query, "k": 4})
    assert status == 200, body
    expected = pipe.as_retriever(k=4).invoke(query)
    assert [r["id"] for r in body["results"]] == [d.id for d in expected]
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    first, document = body["results"][0], expected[0]
    assert first["source"] == document.metadata["source"]
    assert first["chunk_index"] == document.metadata["chunk_index"]
    assert first["content"] == document.page_content
    # fused score and each arm's score and rank, as the retriever kept them in metadata
    for key in ("score", "dense_score", "dense_rank", "bm25_score", "bm25_rank"):
        if key in document.metadata:
            assert first["scores"][key] == pytest.approx(document.metadata[key])
    assert "score" in first["scores"] and ({"dense_score", "bm25_score"} & first["scores"].keys())
    assert body["ranked_by"] == "score"


def test_k_defaults_to_the_config(server):
    status, body = server.request("POST", "/query", {"query": "sourdough starter"})
    assert status == 200 and len(body["results"]) == 3  # retriever.k in the config


def test_user_mistakes_answer_400_with_the_one_line_message(server):
    status, body = server.request("POST", "/query", {"query": "   "})
    assert (status, body["detail"]) == (400, "the query is empty: give the text to search for")
    status, body = server.request("POST", "/query", {"query": "x", "k": 0})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "k"]
    status, body = server.request("POST", "/query", {"query": "x", "kk": 3})
    assert status == 422  # an unknown field is refused, not ignored


def test_health_stats_page_and_openapi(server, hybrid_index):
    _, pipe = hybrid_index
    assert server.request("GET", "/health")[1]["status"] == "ok"
    status, stats = server.request("GET", "/stats")
    assert status == 200
    assert stats["chunks"] == pipe.store.count() > 0
    assert (stats["collection"], stats["retriever"], stats["reranker_model"]) == ("test", "hybrid", None)
    status, page = server.request("GET", "/")
    assert status == 200 and "<title>rag-pipeline search</title>" in page and "https://" not in page  # no CDN
    status, spec = server.request("GET", "/openapi.json")
    assert {"/query", "/documents", "/stats", "/health"} <= spec["paths"].keys()
    assert {"post", "delete"} <= spec["paths"]["/documents"].keys()


def test_a_per_call_filter_narrows_the_results(server, hybrid_index):
    wanted = "guides/bicycle-maintenance.md"
    status, body = server.request("POST", "/query", {"query": "how do I bake bread?", "filter": {"doc_id": wanted}})
    assert status == 200 and body["results"]
    assert {r["doc_id"] for r in body["results"]} == {wanted}


def test_documents_added_over_http_are_found_then_deleted(server):
    text = "The quokka is a small marsupial that lives on Rottnest Island and smiles for photographs."
    status, body = server.request(
        "POST", "/documents", {"source": "api:animals", "documents": [{"content": text, "metadata": {"topic": "zoo"}}]}
    )
    assert status == 200, body
    status, body = server.request("POST", "/query", {"query": "quokka Rottnest Island marsupial", "k": 1})
    assert body["results"][0]["content"] == text
    status, body = server.request("DELETE", "/documents", {"source": "api:animals"})
    assert status == 200, body
    status, body = server.request("POST", "/query", {"query": "quokka Rottnest Island marsupial", "k": 3})
    assert text not in [r["content"] for r in body["results"]]


def test_delete_wants_exactly_one_of_source_or_ids(server):
    status, body = server.request("DELETE", "/documents", {})
    assert (status, body["detail"]) == (400, "give exactly one of `source` or `ids`")


def test_a_token_guards_everything_but_health(hybrid_index):
    with serving(hybrid_index[0], "--token-env", "RAG_TEST_TOKEN", env={"RAG_TEST_TOKEN": TOKEN}) as guarded:
        assert guarded.request("GET", "/health")[0] == 200
        status, body = guarded.request("POST", "/query", {"query": "sourdough"})
        assert status == 401 and "Authorization: Bearer" in body["detail"]
        assert guarded.request("POST", "/query", {"query": "sourdough"}, token="wrong")[0] == 401
        assert guarded.request("GET", "/stats")[0] == 401
        # the API's description is the token holder's too; the docs pages cannot send it, so they are off
        assert guarded.request("GET", "/openapi.json")[0] == 401
        assert guarded.request("GET", "/docs")[0] == 404
        status, spec = guarded.request("GET", "/openapi.json", token=TOKEN)
        assert status == 200 and "/query" in spec["paths"]
        status, body = guarded.request("POST", "/query", {"query": "sourdough"}, token=TOKEN)
        assert status == 200 and len(body["results"]) == 3


def test_binding_beyond_loopback_without_a_token_is_refused(hybrid_index, capsys):
    assert main(["serve", str(hybrid_index[0]), "--host", "0.0.0.0"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --host 0.0.0.0 is reachable from other machines: give --token-env VAR")
    assert "\n" not in message


def test_an_unset_token_variable_is_refused(hybrid_index, capsys, monkeypatch):
    monkeypatch.delenv("RAG_NO_SUCH_TOKEN", raising=False)
    assert main(["serve", str(hybrid_index[0]), "--token-env", "RAG_NO_SUCH_TOKEN"]) == 2
    assert "RAG_NO_SUCH_TOKEN: that environment variable is unset or empty" in capsys.readouterr().err


def test_serving_a_config_with_no_index_says_ingest_first(tmp_path, sample_corpus, tiny_bge_dir, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(pipeline_config(sample_corpus, tmp_path / "none", str(tiny_bge_dir))))
    assert main(["serve", str(config)]) == 2
    assert "run `rag-pipeline ingest CONFIG` first" in capsys.readouterr().err


def test_serve_without_its_extra_says_which_to_install(hybrid_index, monkeypatch, capsys):
    import sys

    for name in [m for m in sys.modules if m.startswith("rag_pipeline.server")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    assert main(["serve", str(hybrid_index[0])]) == 2
    assert capsys.readouterr().err.strip() == "error: serve needs fastapi, which is not installed: pip install 'rag-pipeline[serve]'"
