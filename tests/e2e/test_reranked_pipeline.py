"""The reranker path end to end, with tiny random BGE-shaped models (code path, not quality)."""

import numpy as np
import pytest
import torch

from conftest import pipeline_config
from rag_pipeline import Pipeline


@pytest.fixture(scope="module")
def reranked(sample_corpus, tiny_bge_dir, tiny_reranker_dir, tmp_path_factory):
    config = pipeline_config(
        sample_corpus,
        tmp_path_factory.mktemp("index"),
        str(tiny_bge_dir),
        reranker={"type": "bge-reranker", "model": str(tiny_reranker_dir), "top_n": 4, "device": "cpu"},
        retriever={"type": "dense", "k": 4, "fetch_k": 12},
    )
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    return pipe


def _logits(folder, query, passages):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    batch = tokenizer([query] * len(passages), passages, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.view(-1).numpy()


def test_reranked_results_follow_the_cross_encoder(reranked, tiny_reranker_dir):
    query = "how do tides work"
    retriever = reranked.as_retriever()
    final = retriever.invoke(query)
    candidates = retriever.candidates(query)  # the dense top fetch_k
    assert len(candidates) == 12 and len(final) == 4
    logits = _logits(tiny_reranker_dir, query, [c.page_content for c in candidates])
    expected = [candidates[i].id for i in np.argsort(-logits)[:4]]
    assert [d.id for d in final] == expected
    assert [d.metadata["rerank_score"] for d in final] == pytest.approx(sorted(logits, reverse=True)[:4], abs=1e-4)
    assert all("score" in d.metadata for d in final)


def test_k_override_sets_the_number_after_reranking(reranked):
    assert len(reranked.as_retriever(k=2).invoke("bees")) == 2
    # fetch_k grows with k so the reranker always has enough to choose from
    assert reranked.as_retriever(k=15).path.fetch_k == 15
    assert len(reranked.as_retriever(k=15).candidates("bees")) == 15
