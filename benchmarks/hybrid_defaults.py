"""Are the shipped hybrid defaults tuned to SciFact? Measurements that are not weight-tuning.

Phase ``defaults`` of ``eval_hybrid.py`` (``python benchmarks/eval_hybrid.py --phases defaults``).
No other real retrieval collection can be installed here (no PyPI package ships one: ``beir``,
``mteb`` and ``ir-datasets`` download their data at run time), so this phase asks SciFact how
fragile the defaults are (convex fusion, min-max normalisation, equal weights, 100 per arm):

  * each arm is run once per split, 1000 deep, through ``evaluate`` (the ``eval`` path), and every
    fusion setting below is the package's own fusion function applied to those lists, so a setting
    costs a fusion, not a search;
  * train vs test: the dense weight that is best on train, the one that is best on test, and what
    the default gives up against each (a weight tuned on one split need not carry to the other);
  * flatness: over how wide a range of weights the fusion stays within 1 point of its best;
  * method and normalisation at the default weights (convex min-max, convex z-score, RRF k 60), and
    the depth per arm (10 ... 1000);
  * query-length slices (short, middle, long thirds by words): does the fusion beat both arms in
    every slice, not only on average;
  * a paired bootstrap over queries: how often a resampled query set sees the default fusion beat
    the better arm, and a 95% interval of the gain.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from langchain_core.documents import Document

DEEP = 1000
WEIGHTS = [round(0.05 * i, 2) for i in range(21)]
DEPTHS = [10, 20, 50, 100, 200, 500, 1000]
DEFAULT = {"method": "convex", "normalize": "minmax", "dense": 0.5, "depth": 100}
BOOTSTRAP = 2000


def _lists(arm_run: dict[str, float], depth: int) -> list[Document]:
    from rag_pipeline.evaluation.metrics import ranked

    return [Document(page_content="", metadata={"score": s}, id=d) for d, s in ranked(arm_run)[:depth]]


def fused_run(arm_runs: dict, *, method: str = "convex", normalize: str = "minmax", dense: float = 0.5,
              depth: int = 100, k: int = 100) -> dict[str, dict[str, float]]:
    """The fused document run of the two arms' runs, as ``retriever.fusion`` would fuse them."""
    from rag_pipeline.retrieval.fusion import convex, reciprocal_rank

    names = ["dense", "bm25"]
    weights = {"dense": dense, "bm25": round(1 - dense, 4)}
    run = {}
    for q in arm_runs["dense"]:
        lists = [_lists(arm_runs[name].get(q, {}), depth) for name in names]
        if method == "rrf":
            fused = reciprocal_rank(lists, k, names=names, weights={n: 2 * w for n, w in weights.items()}, constant=60)
        else:
            fused = convex(lists, k, names=names, weights=weights, normalize=normalize)
        run[q] = {d.id: float(d.metadata["score"]) for d in fused}
    return run


def _ndcg(qrels, run) -> tuple[float, dict[str, float]]:
    from rag_pipeline.evaluation import evaluate_run

    report = evaluate_run(qrels, run, ["ndcg@10"])
    return report.mean["ndcg@10"], {q: m["ndcg@10"] for q, m in report.per_query.items()}


def _flat_range(scores: dict[float, float], within: float = 0.01) -> list[float]:
    best = max(scores.values())
    inside = [w for w, s in scores.items() if s >= best - within]
    return [min(inside), max(inside)]


def measure(dataset: Path, index: Path, config: Path) -> dict:
    from rag_pipeline.evaluation import evaluate, load_beir

    out: dict = {"deep": DEEP, "default": DEFAULT}
    per_split = {}
    for split in ("train", "test"):
        data = load_beir(dataset, split=split)
        result = evaluate(
            config, data, depth=DEEP, show_progress=False,
            overrides={"vectorstore.persist_directory": str(index)},
        )
        arms = result.arm_runs
        qrels = data.qrels
        arm_ndcg = {name: _ndcg(qrels, {q: dict(list(run[q].items())[:100]) for q in run}) for name, run in arms.items()}
        default_mean, default_per_query = _ndcg(qrels, fused_run(arms))
        sweep = {w: _ndcg(qrels, fused_run(arms, dense=w))[0] for w in WEIGHTS}
        methods = {
            "convex minmax": default_mean,
            "convex zscore": _ndcg(qrels, fused_run(arms, normalize="zscore"))[0],
            "rrf k 60": _ndcg(qrels, fused_run(arms, method="rrf"))[0],
        }
        depths = {d: _ndcg(qrels, fused_run(arms, depth=d))[0] for d in DEPTHS}
        # query-length thirds, by words
        lengths = {q: len(data.queries[q].split()) for q in qrels}
        order = sorted(qrels, key=lambda q: (lengths[q], q))
        thirds = [order[: len(order) // 3], order[len(order) // 3 : 2 * len(order) // 3], order[2 * len(order) // 3 :]]
        slices = []
        for name, members in zip(("short", "middle", "long"), thirds):
            slices.append({
                "slice": name,
                "words": [lengths[members[0]], lengths[members[-1]]],
                "queries": len(members),
                "dense": statistics.fmean(arm_ndcg["dense"][1][q] for q in members),
                "bm25": statistics.fmean(arm_ndcg["bm25"][1][q] for q in members),
                "fused": statistics.fmean(default_per_query[q] for q in members),
            })
        # paired bootstrap of (fused - better arm) over queries
        better = max(("dense", "bm25"), key=lambda name: arm_ndcg[name][0])
        gains = [default_per_query[q] - arm_ndcg[better][1][q] for q in qrels]
        rng = random.Random(0)
        means = sorted(statistics.fmean(rng.choices(gains, k=len(gains))) for _ in range(BOOTSTRAP))
        wins = sum(1 for q in qrels if default_per_query[q] > max(arm_ndcg["dense"][1][q], arm_ndcg["bm25"][1][q]))
        losses = sum(1 for q in qrels if default_per_query[q] < min(arm_ndcg["dense"][1][q], arm_ndcg["bm25"][1][q]))
        per_split[split] = {
            "queries": len(qrels),
            "arms": {name: mean for name, (mean, _) in arm_ndcg.items()},
            "default": default_mean,
            # JSON keys are text: weights and depths as they print
            "sweep_convex_minmax": {f"{w:g}": v for w, v in sweep.items()},
            "methods": methods,
            "depths": {str(d): v for d, v in depths.items()},
            "slices": slices,
            "bootstrap": {
                "better_arm": better,
                "gain_mean": statistics.fmean(gains),
                "gain_ci95": [means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]],
                "share_of_resamples_with_gain": sum(1 for m in means if m > 0) / BOOTSTRAP,
            },
            "per_query": {"above_both_arms": wins, "below_both_arms": losses},
        }
        print(f"{split}: default {100 * default_mean:.2f}, arms "
              + ", ".join(f"{n} {100 * m:.2f}" for n, (m, _) in arm_ndcg.items()), flush=True)
    out["splits"] = per_split
    train, test = ({float(w): v for w, v in per_split[split]["sweep_convex_minmax"].items()} for split in ("train", "test"))
    best_train = max(train, key=lambda w: (train[w], -abs(w - 0.5)))
    best_test = max(test, key=lambda w: (test[w], -abs(w - 0.5)))
    out["transfer"] = {
        "best_on_train": best_train, "best_on_test": best_test,
        "test_at_train_best": test[best_train], "test_at_test_best": test[best_test], "test_at_default": test[0.5],
        "flat_within_1_point": {"train": _flat_range(train), "test": _flat_range(test)},
    }
    return out


def _tenth(weight: float) -> bool:
    return abs(weight * 10 - round(weight * 10)) < 1e-6


def markdown(result: dict) -> list[str]:
    s = result["splits"]
    t = result["transfer"]
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        "## Why these defaults (convex, min-max, equal weights, 100 per arm)",
        "",
        "No other real retrieval collection can be installed here: no PyPI package ships one (`beir`, `mteb` and "
        "`ir-datasets` download their data at run time; nothing is fetched from a URL in this project). So the "
        "defaults are checked on SciFact in ways that are not weight-tuning, and argued from published results. "
        f"Each arm is searched once per split, {result['deep']} deep, through `evaluate`; every setting below is the "
        "package's own fusion function over those lists cut to each arm's depth (`benchmarks/hybrid_defaults.py`; "
        "`evaluate` itself searches one deeper, 101, so a cell can differ from its sweep above by a few hundredths). "
        "nDCG@10 x100.",
        "",
        "### A weight tuned on one split, used on the other",
        "",
        "| dense weight | " + " | ".join(f"{w:g}" for w in WEIGHTS if _tenth(w)) + " |",
        "| --- |" + " ---: |" * 11,
    ]
    for split in ("train", "test"):
        sweep = s[split]["sweep_convex_minmax"]
        lines.append(f"| {split} ({s[split]['queries']} q) | " + " | ".join(
            pct(v) for w, v in sweep.items() if _tenth(float(w))) + " |")
    lines += [
        "",
        f"* Tuned finer (0.05 steps), train's best is dense {t['best_on_train']:g}, and test's is {t['best_on_test']:g}. "
        f"On test, train's best gives {pct(t['test_at_train_best'])}, the default 0.5 {pct(t['test_at_default'])}, and "
        f"test's own best (which no one could have chosen) {pct(t['test_at_test_best'])}: the default is "
        f"{100 * (t['test_at_test_best'] - t['test_at_default']):.2f} points from that oracle, and "
        f"{100 * (t['test_at_default'] - t['test_at_train_best']):+.2f} against the finer tuning, which did not carry over.",
        f"* Flat top: within 1 point of the best from dense {t['flat_within_1_point']['train'][0]:g} to "
        f"{t['flat_within_1_point']['train'][1]:g} on train and {t['flat_within_1_point']['test'][0]:g} to "
        f"{t['flat_within_1_point']['test'][1]:g} on test: equal weights sit inside both. The top is lopsided: leaning "
        "towards BM25 (the stronger arm here) costs little, leaning towards the weaker dense arm costs fast.",
        "",
        "### Method, normalisation and depth at the default weights",
        "",
        "| split | dense arm | BM25 arm | convex min-max (default) | convex z-score | RRF k 60 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for split in ("train", "test"):
        m = s[split]["methods"]
        lines.append(f"| {split} | {pct(s[split]['arms']['dense'])} | {pct(s[split]['arms']['bm25'])} | "
                     f"{pct(m['convex minmax'])} | {pct(m['convex zscore'])} | {pct(m['rrf k 60'])} |")
    lines += [
        "",
        "| chunks per arm before fusion | " + " | ".join(str(d) for d in DEPTHS) + " |",
        "| --- |" + " ---: |" * len(DEPTHS),
    ]
    for split in ("train", "test"):
        lines.append(f"| {split} | " + " | ".join(pct(v) for v in s[split]["depths"].values()) + " |")
    lines += [
        "",
        "### Query-length thirds (words per query) and a paired bootstrap",
        "",
        "| split | third | words | queries | dense | BM25 | fused (default) | fused - better arm |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for split in ("train", "test"):
        for row in s[split]["slices"]:
            lines.append(
                f"| {split} | {row['slice']} | {row['words'][0]}-{row['words'][1]} | {row['queries']} | {pct(row['dense'])} | "
                f"{pct(row['bm25'])} | {pct(row['fused'])} | {100 * (row['fused'] - max(row['dense'], row['bm25'])):+.2f} |"
            )
    lines.append("")
    for split in ("train", "test"):
        b = s[split]["bootstrap"]
        pq = s[split]["per_query"]
        lines.append(
            f"* {split}: fused minus the better arm ({b['better_arm']}) {100 * b['gain_mean']:+.2f}, 95% bootstrap interval "
            f"[{100 * b['gain_ci95'][0]:+.2f}, {100 * b['gain_ci95'][1]:+.2f}] ({BOOTSTRAP} resamples of the queries, "
            f"{100 * b['share_of_resamples_with_gain']:.1f}% with a gain); {pq['above_both_arms']} queries above both arms, "
            f"{pq['below_both_arms']} below both."
        )
    return lines


def main() -> None:
    how = "python benchmarks/eval_hybrid.py --phases defaults"
    argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=f"Not run on its own: {how}").parse_args()
    raise SystemExit(f"hybrid_defaults.py is the `defaults` phase of eval_hybrid.py: {how}")


if __name__ == "__main__":
    main()
