"""The metric code path (pytrec_eval under our names) against values computed by hand."""

from math import log2

import pytest

from rag_pipeline.evaluation import METRICS, evaluate_run, recall_curve
from rag_pipeline.evaluation.metrics import drop_identical_ids, parse_metric, queries_without_relevant, ranked

# Hand-made qrels and run.
#   q1: relevant d1, d2 (grade 1); d3 judged non-relevant.   Run: d9, d1, d3, d2 (ranks 1..4)
#   q2: relevant d4 (grade 2), d5 (grade 1).                  Run: d5, d4
#   q3: relevant d6.   Run: ten non-relevant documents, then d6 at rank 11
#   q4: no relevant document (only a grade-0 judgement) -> 0 everywhere, and counted in the mean (BEIR)
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
#   q4, q5: 0 everywhere.   Means over all 5 queries of the qrels, as BEIR averages:
Q1_NDCG = (1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3))
Q2_NDCG = (1 + 2 / log2(3)) / (2 + 1 / log2(3))
EXPECTED = {
    "ndcg@10": (Q1_NDCG + Q2_NDCG + 0 + 0 + 0) / 5,  # 0.30213
    "recall@10": (1 + 1 + 0 + 0 + 0) / 5,  # 0.4
    "recall@100": (1 + 1 + 1 + 0 + 0) / 5,  # 0.6
    "mrr@10": (1 / 2 + 1 + 0 + 0 + 0) / 5,  # 0.3
    "map@100": (0.5 + 1 + 1 / 11 + 0 + 0) / 5,  # 0.31818
}
# What beir 2.2.0's EvaluateRetrieval.evaluate (and evaluate_custom "mrr") printed for QRELS and RUN
# (every query given an entry, as BEIR's search does), rounded to 5 places as BEIR rounds.
BEIR_PRINTED = {"ndcg@10": 0.30213, "recall@10": 0.4, "recall@100": 0.6, "mrr@10": 0.3, "map@100": 0.31818}


def test_means_match_the_hand_computation():
    report = evaluate_run(QRELS, RUN)
    assert list(report.mean) == list(METRICS)
    assert report.mean == pytest.approx(EXPECTED, abs=1e-6)
    assert {name: round(value, 5) for name, value in report.mean.items()} == BEIR_PRINTED


def test_a_query_judged_only_non_relevant_scores_zero_and_counts_in_the_mean():
    # BEIR keeps it in the mean: dropping it (as before) gave nDCG@10 0.37766 instead of 0.30213
    assert queries_without_relevant(QRELS) == ["q4"]
    assert queries_without_relevant({"q": {}, "r": {"d": 0, "e": 0}, "s": {"d": 0, "e": 2}}) == ["q", "r"]
    only_zero = evaluate_run({"q4": QRELS["q4"], "q2": QRELS["q2"]}, RUN)
    assert only_zero.per_query["q4"] == {name: 0.0 for name in METRICS}
    assert only_zero.mean["ndcg@10"] == pytest.approx(Q2_NDCG / 2)


def test_per_query_values_and_which_queries_count():
    per_query = evaluate_run(QRELS, RUN).per_query
    assert sorted(per_query) == ["q1", "q2", "q3", "q4", "q5"]  # q4 has no relevant document: 0
    assert per_query["q1"]["ndcg@10"] == pytest.approx(0.65092, abs=1e-5)
    assert per_query["q2"]["ndcg@10"] == pytest.approx(0.85972, abs=1e-5)
    assert per_query["q3"] == pytest.approx({"ndcg@10": 0, "recall@10": 0, "recall@100": 1, "mrr@10": 0, "map@100": 1 / 11})
    assert per_query["q4"] == per_query["q5"] == {name: 0.0 for name in METRICS}


def test_mrr_is_cut_at_k():
    # trec_eval's recip_rank alone would give q3 1/11; MRR@10 must give 0, MRR@20 1/11.
    per_query = evaluate_run({"q3": QRELS["q3"]}, {"q3": RUN["q3"]}, ["mrr@10", "mrr@20"]).per_query
    assert per_query["q3"] == pytest.approx({"mrr@10": 0.0, "mrr@20": 1 / 11})


def test_recall_curve():
    # q1: relevant at ranks 2 and 4; q2: ranks 1 and 2; q3: rank 11; q4 (none relevant), q5: never.
    curve = recall_curve(QRELS, RUN, ks=[1, 2, 4, 11])
    assert curve == pytest.approx({1: (0 + 0.5) / 5, 2: (0.5 + 1) / 5, 4: (1 + 1) / 5, 11: (1 + 1 + 1) / 5})


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


# ArguAna-like: each query is itself a corpus document and finds itself first.
#   a: relevant x.  Run: a (itself), x, y        b: relevant y.  Run: b (itself), z, y
SELF_QRELS = {"a": {"x": 1}, "b": {"y": 1}}
SELF_RUN = {"a": {"a": 0.9, "x": 0.5, "y": 0.4}, "b": {"b": 0.95, "z": 0.8, "y": 0.1}}


def test_identical_ids_are_dropped_before_scoring_as_beir_does():
    dropped = drop_identical_ids(SELF_RUN)
    assert dropped == {"a": {"x": 0.5, "y": 0.4}, "b": {"z": 0.8, "y": 0.1}}
    assert SELF_RUN["a"]["a"] == 0.9  # the input is not modified (BEIR pops in place)
    # without its own id: a's relevant x is at rank 1, b's y at rank 2
    assert evaluate_run(SELF_QRELS, dropped, ["mrr@10", "ndcg@1"]).mean == pytest.approx({"mrr@10": 0.75, "ndcg@1": 0.5})
    # kept, each query's own id takes rank 1: x at 2, y at 3
    assert evaluate_run(SELF_QRELS, SELF_RUN, ["mrr@10", "ndcg@1"]).mean == pytest.approx({"mrr@10": (1 / 2 + 1 / 3) / 2, "ndcg@1": 0.0})


def test_dropping_identical_ids_keeps_depth_other_documents():
    # fetched one deeper, as BEIR's search does, the run keeps `depth` documents either way
    assert drop_identical_ids(SELF_RUN, depth=2) == {"a": {"x": 0.5, "y": 0.4}, "b": {"z": 0.8, "y": 0.1}}
    assert drop_identical_ids({"q": {"d1": 0.9, "d2": 0.8, "d3": 0.7}}, depth=2) == {"q": {"d1": 0.9, "d2": 0.8}}
    assert drop_identical_ids({"q": {"q": 0.9}}) == {"q": {}}
    # a query left with nothing still counts, with 0
    assert evaluate_run({"q": {"q": 1}}, drop_identical_ids({"q": {"q": 0.9}}), ["ndcg@10"]).mean == {"ndcg@10": 0.0}


def test_ranx_an_independent_implementation_agrees_on_every_mean():
    """ranx (numba, not trec_eval's C code) on the same qrels and run: the all-grade-0 query q4 is
    in its mean too. make_comparable gives q5 the empty run it lacks, as BEIR's search would."""
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    other = ranx_evaluate(Qrels(QRELS), Run(RUN, name="run"), list(METRICS), make_comparable=True)
    assert {name: float(value) for name, value in other.items()} == pytest.approx(evaluate_run(QRELS, RUN).mean, abs=1e-12)


def test_a_query_with_no_judgement_at_all_counts_zero_too():
    # pytrec_eval leaves it out of its output (it cannot come from a qrels file, only from a caller's dict)
    report = evaluate_run({"q": {}, "r": {"d": 1}}, {"q": {"d": 1.0}, "r": {"d": 1.0}})
    assert report.per_query["q"] == {name: 0.0 for name in METRICS}
    assert report.mean == {name: 0.5 for name in METRICS}


def test_no_queries_give_zero_means_not_an_error():
    assert evaluate_run({}, {}).mean == {name: 0.0 for name in METRICS}
