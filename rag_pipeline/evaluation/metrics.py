"""Retrieval metrics from ``pytrec_eval`` (the trec_eval C code that BEIR and MTEB report with).

No metric is computed here by hand: a published number can only be reproduced with the same
implementation, and trec_eval's is the reference. This module only translates names
(``ndcg@10`` -> trec_eval's ``ndcg_cut_10``) and averages per-query values.

Conventions (BEIR's ``EvaluateRetrieval.evaluate`` and trec_eval's, stated because they change numbers):
  * gains are the qrels grades as they are (linear), so nDCG is trec_eval's ``ndcg_cut``;
  * the mean is over EVERY query of the qrels, as BEIR averages. A query whose judgements are
    all grade 0 has no relevant document, so trec_eval scores it 0 on every measure (nDCG's
    ideal DCG is 0); BEIR keeps such queries in its mean, so they pull it down, and so do we
    (checked against ``beir`` 2.2.0: on the hand-made qrels of the tests, 4 queries with a relevant
    document and 1 without, BEIR prints NDCG@10 0.30213 = 4/5 of the mean over the 4).
    :func:`queries_without_relevant` counts them, for the report;
  * a query the run has nothing for counts as 0 (trec_eval ``-c``). BEIR's search always returns
    an entry for every query (possibly empty, which pytrec_eval scores 0), so this is the same
    mean BEIR prints; here a query missing from the run cannot silently raise the mean;
  * ``ignore_identical_ids`` (BEIR's default): a retrieved document whose id equals the query's
    id is removed before scoring (:func:`drop_identical_ids`). In ArguAna, Quora and CQADupStack
    the queries are corpus documents; each would find itself at rank 1, unjudged, and push every
    relevant document down a rank. BEIR's search asks for one document more than its depth and
    drops the query's own id there, so a run keeps ``depth`` other documents: callers do the same;
  * ties in score are broken by document id, descending (what trec_eval does);
  * ``mrr@k``: trec_eval's ``recip_rank`` has no cut-off, so it is computed on the run cut to
    its top ``k`` per query — the definition of MRR@k.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]

METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")
"""What ``rag-pipeline eval`` reports, named as in its JSON."""

# our name -> (trec_eval measure family, key prefix in pytrec_eval's output)
_FAMILIES = {
    "ndcg": ("ndcg_cut", "ndcg_cut_"),
    "recall": ("recall", "recall_"),
    "map": ("map_cut", "map_cut_"),
    "precision": ("P", "P_"),
    "mrr": ("recip_rank", "recip_rank"),
}
_NAME = re.compile(r"^(ndcg|recall|map|precision|mrr)@([1-9][0-9]*)$")


@dataclass
class MetricReport:
    """Mean of each metric over the evaluated queries, and the per-query values behind it."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]


def parse_metric(name: str) -> tuple[str, int]:
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"unknown metric {name!r}; use <ndcg|recall|map|precision|mrr>@<k>, e.g. ndcg@10")
    return match.group(1), int(match.group(2))


def evaluate_run(qrels: Qrels, run: Run, metrics: Iterable[str] = METRICS) -> MetricReport:
    """Score ``run`` (query id -> {doc id: score}, higher is better) against ``qrels``."""
    import pytrec_eval

    metrics = list(metrics)
    parsed = {name: parse_metric(name) for name in metrics}
    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    clean_run = {q: {str(d): float(s) for d, s in run.get(q, {}).items()} for q in judged}
    per_query: dict[str, dict[str, float]] = {q: {} for q in judged}

    # Every measure except mrr reads the full run; trec_eval takes several cut-offs at once.
    trec_measures: dict[str, set[int]] = {}
    for family, k in parsed.values():
        if family != "mrr":
            trec_measures.setdefault(_FAMILIES[family][0], set()).add(k)
    if trec_measures:
        measures = {f"{m}.{','.join(str(k) for k in sorted(ks))}" for m, ks in trec_measures.items()}
        values = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(clean_run)
        for name, (family, k) in parsed.items():
            if family != "mrr":
                key = f"{_FAMILIES[family][1]}{k}"
                for q in judged:
                    per_query[q][name] = float(values.get(q, {}).get(key, 0.0))
    for name, (family, k) in parsed.items():
        if family == "mrr":
            cut = {q: dict(ranked(docs)[:k]) for q, docs in clean_run.items()}
            values = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(cut)
            for q in judged:
                per_query[q][name] = float(values.get(q, {}).get("recip_rank", 0.0))

    count = len(judged)
    mean = {name: (sum(per_query[q][name] for q in judged) / count if count else 0.0) for name in metrics}
    return MetricReport(mean=mean, per_query=per_query)


def queries_without_relevant(qrels: Qrels) -> list[str]:
    """Queries whose judgements are all grade 0 (or none): they score 0 and still count in the mean."""
    return [q for q, docs in qrels.items() if not any(g > 0 for g in docs.values())]


def drop_identical_ids(run: Run, depth: int | None = None) -> dict[str, dict[str, float]]:
    """``run`` without any document whose id is its query's id, each query cut to its best ``depth``.

    BEIR's ``ignore_identical_ids=True``; pass ``depth`` when the run was fetched one deeper
    (as BEIR fetches) so that every query keeps ``depth`` documents, the query's own or not.
    """
    return {
        q: dict(ranked({d: s for d, s in docs.items() if d != q})[:depth])
        for q, docs in run.items()
    }


def ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents best first, ties broken by document id descending, as trec_eval orders them."""
    return sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


def recall_curve(qrels: Qrels, run: Run, ks: Iterable[int] = range(1, 101)) -> dict[int, float]:
    """Mean Recall@k for each k (for plots): how many of the relevant documents the top k holds."""
    ks = list(ks)
    report = evaluate_run(qrels, run, [f"recall@{k}" for k in ks])
    return {k: report.mean[f"recall@{k}"] for k in ks}
