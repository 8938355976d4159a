"""``rag-pipeline eval`` on a BGE-M3 hybrid config: the dense and sparse arms and the combined run
(dense + sparse + ColBERT) are reported side by side, each as the pipeline itself retrieves."""

import pytest

from conftest import pipeline_config
from eval_helpers import write_beir
from rag_pipeline import Pipeline
from rag_pipeline.evaluation import evaluate, load_beir

pytest.importorskip("FlagEmbedding")


def test_eval_reports_the_dense_and_sparse_arms_and_the_combined_run(tmp_path, tiny_bge_m3_dir):
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    config = pipeline_config(
        tmp_path, tmp_path / "index", str(tiny_bge_m3_dir),
        chunker={"type": "none"},
        embeddings={"type": "bge-m3", "model": str(tiny_bge_m3_dir), "show_progress": False},
        lexical={"type": "m3-sparse"},
        retriever={"type": "bge-m3", "k": 10, "fetch_k": 10, "search": "exact", "depth": 100},
    )
    config["loader"]["show_progress"] = False
    result = evaluate(config, dataset, show_progress=False)
    assert list(result.arm_metrics) == ["dense", "sparse"]
    pipe = Pipeline.from_config(config, overrides={"vectorstore.collection": "test-eval-tiny"})
    queries = list(dataset.queries)
    texts = [dataset.queries[q] for q in queries]
    for q, hits in zip(queries, pipe.lexical.search_batch_text(texts, 100)):
        assert list(result.arm_runs["sparse"][q]) == [d.metadata["doc_id"] for d in hits]
    for q, hits in zip(queries, pipe.as_retriever(k=100).batch(texts)):
        assert list(result.runs["first_stage"][q]) == [d.metadata["doc_id"] for d in hits]
