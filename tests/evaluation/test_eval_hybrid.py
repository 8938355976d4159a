"""``rag-pipeline eval`` on a hybrid config reports each arm, the fused list and the final output."""

import json

import pytest

from conftest import MINILM, pipeline_config
from eval_helpers import write_beir
from rag_pipeline import Pipeline
from rag_pipeline.evaluation import METRICS, evaluate, load_beir
from rag_pipeline.retrieval.fusion import convex


@pytest.fixture
def dataset(tmp_path):
    return load_beir(write_beir(tmp_path / "tiny"))


def hybrid(tmp_path, **retriever):
    config = pipeline_config(
        tmp_path, tmp_path / "index", str(MINILM), chunker={"type": "none"}, lexical={"type": "bm25"},
        retriever={"type": "hybrid", "k": 10, "fetch_k": 10, **retriever},
    )
    config["loader"]["show_progress"] = False
    return config


def test_eval_reports_each_arm_the_fusion_and_the_final_output(tmp_path, dataset):
    config = hybrid(tmp_path)
    result = evaluate(config, dataset, show_progress=False)
    assert list(result.arm_metrics) == ["dense", "bm25"]
    for metrics in result.arm_metrics.values():
        assert list(metrics) == list(METRICS)
    pipe = Pipeline.from_config(config, overrides={"vectorstore.collection": "test-eval-tiny"})
    queries = list(dataset.queries)
    texts = [dataset.queries[q] for q in queries]
    # the bm25 arm's run is BM25's own ranking of the documents that share a word with the query
    for q, hits in zip(queries, pipe.lexical.search_batch_text(texts, 20)):
        assert list(result.arm_runs["bm25"][q]) == [d.metadata["doc_id"] for d in hits]
    # the fused run is the convex fusion (minmax, 0.5 each) of the two arms' lists
    for q in queries:
        lists = [
            [_doc(doc, score) for doc, score in result.arm_runs[arm][q].items()] for arm in ("dense", "bm25")
        ]
        expected = [d.id for d in convex(lists, 100, names=["dense", "bm25"])]
        assert list(result.runs["first_stage"][q]) == expected
    table = result.table()
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "dense", "bm25", "fused"]
    assert "(no reranker: the final output is the fused list)" in table
    payload = json.loads(result.write_json(tmp_path / "eval.json").read_text())
    assert list(payload["arms"]) == ["dense", "bm25"] and list(payload["metrics"]) == ["first_stage", "final"]
    assert payload["config"]["pipeline"]["lexical"]["k1"] == 1.2


def test_bm25_alone_is_evaluated_as_a_first_stage(tmp_path, dataset):
    result = evaluate(hybrid(tmp_path, arms=["bm25"]), dataset, show_progress=False)
    assert result.arm_metrics == {}
    assert result.metrics["first_stage"]["ndcg@10"] > 0.9  # bees, tides, tea: all exact words


def _doc(doc_id, score):
    from langchain_core.documents import Document

    return Document(page_content="", metadata={"score": score}, id=doc_id)
