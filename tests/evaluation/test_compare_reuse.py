"""A sweep of fusion settings embeds its queries and searches each arm once; every later run only
re-fuses, and gives exactly what a fresh evaluation of that setting gives. Tiny BEIR folder."""

from __future__ import annotations

import pytest

from conftest import MINILM, pipeline_config
from eval_helpers import write_beir
from rag_pipeline.embeddings.bge import BgeEmbeddings
from rag_pipeline.evaluation import compare, evaluate, load_beir
from rag_pipeline.evaluation.reuse import SweepMemo
from rag_pipeline.retrieval.first_stage import DenseArm, LexicalArm


@pytest.fixture
def dataset(tmp_path):
    return load_beir(write_beir(tmp_path / "tiny"))


@pytest.fixture
def config(tmp_path):
    config = pipeline_config(
        tmp_path, tmp_path / "index", MINILM, chunker={"type": "none"}, lexical={"type": "bm25"},
        retriever={"type": "hybrid", "k": 10, "fetch_k": 10, "fusion": {"depth": 5}},
    )
    config["loader"]["show_progress"] = False
    return config


@pytest.fixture
def work(monkeypatch):
    """How many query texts went through the model, and how many each arm searched for."""
    counts = {"embedded": 0, "dense": 0, "bm25": 0, "token_counted": 0}

    def counting(cls, method, key):
        original = getattr(cls, method)

        def wrapper(self, queries, *args, **kwargs):
            counts[key] += len(queries)
            return original(self, queries, *args, **kwargs)

        monkeypatch.setattr(cls, method, wrapper)

    counting(BgeEmbeddings, "embed_queries", "embedded")
    counting(BgeEmbeddings, "count_tokens", "token_counted")
    counting(DenseArm, "search_batch", "dense")
    counting(LexicalArm, "search_batch", "bm25")
    return counts


def with_settings(config, **retriever_fusion):
    return {**config, "retriever": {**config["retriever"], "fusion": {**config["retriever"]["fusion"], **retriever_fusion}}}


def test_a_fusion_sweep_embeds_and_searches_once_then_only_refuses(config, dataset, work):
    weights = [{"dense": w, "bm25": 1 - w} for w in (0.2, 0.5, 0.8)]
    grid = {"retriever.fusion.method": ["convex", "rrf"], "retriever.fusion.weights": weights}
    done = []
    compare(config, dataset, grid, show_progress=False, on_result=lambda *args: done.append(dict(work)))
    queries = len(dataset.queries)
    assert done[0]["embedded"] == queries
    assert done[0]["dense"] > 0 and done[0]["bm25"] > 0 and done[0]["token_counted"] > 0
    assert done[-1] == done[0], "the five later runs embedded or searched again"


def test_reused_lists_give_what_a_fresh_evaluation_gives(config, dataset):
    memo = SweepMemo()
    first = evaluate(with_settings(config, weights={"dense": 0.9, "bm25": 0.1}), dataset, show_progress=False, reuse=memo)
    assert first.timings["reuse"]["queries_reused"] == 0
    for changed in ({"weights": {"dense": 0.1, "bm25": 0.9}}, {"method": "rrf", "k": 2}, {"normalize": "zscore"}):
        reused = evaluate(with_settings(config, **changed), dataset, show_progress=False, reuse=memo)
        fresh = evaluate(with_settings(config, **changed), dataset, show_progress=False)
        assert reused.timings["reuse"]["queries_embedded"] == 0 and reused.timings["reuse"]["arm_searches"] == 0
        assert reused.runs == fresh.runs and reused.arm_runs == fresh.arm_runs
        assert reused.metrics == fresh.metrics
    # the sweep did change the fused ranking (else the comparison above proves nothing)
    assert reused.runs != first.runs


def test_a_change_an_arm_sees_searches_again(config, dataset, work):
    memo = SweepMemo()
    evaluate(config, dataset, show_progress=False, reuse=memo)
    before = dict(work)
    k1 = {**config, "lexical": {"type": "bm25", "k1": 0.3, "b": 0.1}}
    reused = evaluate(k1, dataset, show_progress=False, reuse=memo)
    assert work["bm25"] > before["bm25"] and work["embedded"] == before["embedded"]  # same query vectors
    assert reused.arm_runs == evaluate(k1, dataset, show_progress=False).arm_runs

    before = dict(work)
    instructed = {**config, "embeddings": {**config["embeddings"], "query_instruction": "query: "}}
    reused = evaluate(instructed, dataset, show_progress=False, reuse=memo)
    assert work["embedded"] == before["embedded"] + len(dataset.queries)  # the instruction changes the vector
    fresh = evaluate(instructed, dataset, show_progress=False)
    assert reused.arm_runs["dense"] == fresh.arm_runs["dense"] and reused.runs == fresh.runs
