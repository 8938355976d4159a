"""Hybrid retrieval on SciFact (issue 9's acceptance), the slow test: the full test split through
``rag-pipeline eval`` with the shipped configs. With the index folder the configs share
(``.index/scifact-hybrid``) already built it takes about a minute; cold, about five.
"""

import json

import pytest

from eval_helpers import REPO, SCIFACT, requires_scifact
from rag_pipeline.cli import main


def run(config: str, tmp_path) -> dict:
    out = tmp_path / f"{config}.json"
    assert main(["eval", str(REPO / "configs" / f"{config}.yaml"), "--dataset", str(SCIFACT), "--json", str(out), "-q"]) == 0
    return json.loads(out.read_text())


@requires_scifact
@pytest.mark.slow
def test_scifact_bm25_rrf_and_convex_meet_the_acceptance_numbers(tmp_path):
    bm25 = 100 * run("scifact-bm25", tmp_path)["metrics"]["first_stage"]["ndcg@10"]
    assert abs(bm25 - 68.0) <= 1.0
    rrf = 100 * run("scifact-hybrid-rrf", tmp_path)["metrics"]["first_stage"]["ndcg@10"]
    assert rrf >= 71.0
    convex = run("scifact-hybrid", tmp_path)
    fused = 100 * convex["metrics"]["first_stage"]["ndcg@10"]
    arms = {name: 100 * metrics["ndcg@10"] for name, metrics in convex["arms"].items()}
    assert fused >= 73.0 and fused > max(arms.values()), (fused, arms)
    assert arms["bm25"] == pytest.approx(bm25)  # the arm alone is the BM25 config's own ranking
