"""The metric code path (pytrec_eval under our names) against values computed by hand."""

from math import log2

import pytest

from rag_pipeline.evaluation import METRICS, evaluate_run, recall_curve
from rag_pipeline.evaluation.metrics import parse_metric, ranked

# Hand-made qrels and run.
#   q1: relevant d1, d2 (grade 1); d3 judged non-relevant.   Run: d9, d1, d3, d2 (ranks 1..4)
#   q2: relevant d4 (grade 2), d5 (grade 1).                  Run: d5, d4
#   q3: relevant d6.   Run: ten non-relevant documents, then d6 at rank 11
#   q4: no relevant document (only a grade-0 judgement) -> not evaluated (trec_eval skips it)
#   q5: relevant d8.   The run has nothing for q5 -> counts as 0 everywhere (trec_eval -c)
QRELS = {
    "q1": {"d1": 1, "d2": 1, "d3": 0},
    "q2": {"d4": 2, "d5": 1},
    "q3": {"d6": 1},
    "q4": {"d7": 0},
    "q5": {"d8": 1},
}
RUN = {
    "q1": {"d9": 0.9, "d1": 0.8, "d3": 0.7, "d2": 0.6},
    "q2": {"d5": 0.9, "d4": 0.5},
    "q3": {**{f"n{i}": 1.0 - i / 20 for i in range(10)}, "d6": 0.1},
    "q4": {"d7": 0.3},
}

# By hand (linear gains, log2(rank + 1) discount, as trec_eval's ndcg_cut):
#   q1: DCG@10 = 1/log2(3) + 1/log2(5) = 1.06161;  IDCG = 1 + 1/log2(3) = 1.63093;  nDCG = 0.65092
#       Recall@10 = Recall@100 = 2/2 = 1;  RR = 1/2 (first relevant at rank 2)
#       AP = (P@2 + P@4) / 2 = (1/2 + 2/4) / 2 = 0.5
#   q2: DCG@10 = 1/1 + 2/log2(3) = 2.26186;  IDCG = 2/1 + 1/log2(3) = 2.63093;  nDCG = 0.85972
#       Recall@10 = 1;  RR = 1;  AP = (1/1 + 2/2) / 2 = 1
#   q3: nothing relevant in the top 10 -> nDCG@10 = 0, Recall@10 = 0, MRR@10 = 0
#       Recall@100 = 1 (d6 at rank 11);  AP@100 = (1/11) / 1 = 0.09091
#   q5: 0 everywhere.   Means over the 4 evaluated queries q1, q2, q3, q5:
Q1_NDCG = (1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3))
Q2_NDCG = (1 + 2 / log2(3)) / (2 + 1 / log2(3))
EXPECTED = {
    "ndcg@10": (Q1_NDCG + Q2_NDCG + 0 + 0) / 4,  # 0.37766
    "recall@10": (1 + 1 + 0 + 0) / 4,  # 0.5
    "recall@100": (1 + 1 + 1 + 0) / 4,  # 0.75
    "mrr@10": (1 / 2 + 1 + 0 + 0) / 4,  # 0.375
    "map@100": (0.5 + 1 + 1 / 11 + 0) / 4,  # 0.39773
}


def test_means_match_the_hand_computation():
    report = evaluate_run(QRELS, RUN)
    assert list(report.mean) == list(METRICS)
    assert report.mean == pytest.approx(EXPECTED, abs=1e-6)
    assert EXPECTED["ndcg@10"] == pytest.approx(0.37766, abs=1e-5)


def test_per_query_values_and_which_queries_count():
    per_query = evaluate_run(QRELS, RUN).per_query
    assert sorted(per_query) == ["q1", "q2", "q3", "q5"]  # q4 has no relevant document
    assert per_query["q1"]["ndcg@10"] == pytest.approx(0.65092, abs=1e-5)
    assert per_query["q2"]["ndcg@10"] == pytest.approx(0.85972, abs=1e-5)
    assert per_query["q3"] == pytest.approx({"ndcg@10": 0, "recall@10": 0, "recall@100": 1, "mrr@10": 0, "map@100": 1 / 11})
    assert per_query["q5"] == {name: 0.0 for name in METRICS}


def test_mrr_is_cut_at_k():
    # trec_eval's recip_rank alone would give q3 1/11; MRR@10 must give 0, MRR@20 1/11.
    per_query = evaluate_run({"q3": QRELS["q3"]}, {"q3": RUN["q3"]}, ["mrr@10", "mrr@20"]).per_query
    assert per_query["q3"] == pytest.approx({"mrr@10": 0.0, "mrr@20": 1 / 11})


def test_recall_curve():
    # q1: relevant at ranks 2 and 4; q2: ranks 1 and 2; q3: rank 11; q5: never.
    curve = recall_curve(QRELS, RUN, ks=[1, 2, 4, 11])
    assert curve == pytest.approx({1: (0 + 0.5) / 4, 2: (0.5 + 1) / 4, 4: (1 + 1) / 4, 11: (1 + 1 + 1) / 4})


def test_ties_are_broken_by_document_id_descending_like_trec_eval():
    assert [d for d, _ in ranked({"a": 1.0, "c": 1.0, "b": 2.0})] == ["b", "c", "a"]
    # a tie at the cut-off: "z" sorts before "a", so z is rank 1 and MRR@1 sees it
    qrels = {"q": {"a": 1}}
    assert evaluate_run(qrels, {"q": {"a": 0.5, "z": 0.5}}, ["mrr@1"]).mean["mrr@1"] == 0.0
    assert evaluate_run(qrels, {"q": {"a": 0.5, "z": 0.5}}, ["mrr@2"]).mean["mrr@2"] == 0.5


def test_metric_names_are_checked():
    assert parse_metric("recall@100") == ("recall", 100)
    with pytest.raises(ValueError, match="unknown metric 'ndcg10'"):
        evaluate_run(QRELS, RUN, ["ndcg10"])
