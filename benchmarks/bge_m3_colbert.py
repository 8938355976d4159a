"""ColBERT rescoring for ``retriever.type: bge-m3``: store the multi-vectors per chunk, or recompute
them for the candidates at query time? Both measured side by side in one run, at bge-m3's real
shapes (no weights can be downloaded here, so the encoder is randomly initialised: its speed is
that of the real architecture; the vocabulary is cut to 8,000 rows, which changes only memory).

    python benchmarks/bge_m3_colbert.py --candidates 100 --encode 4 --tokens 256

The run goes on top of benchmarks/results/bge-m3-colbert.{md,json} with its command line (the
run it replaces moves to the page's history).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from langchain_core.documents import Document

import harness
from rag_pipeline.lexical.bm25 import STORE_FILENAME
from rag_pipeline.lexical.m3_sparse import M3SparseConfig, M3SparseIndex, colbert_scores


def recompute_seconds_per_passage(tokens: int, passages: int, repeats: int) -> float:
    """bge-m3's encoder (XLM-R large: 24 layers, 1024 wide) plus its ColBERT head, on this CPU."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=8000, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=8194,
    )
    model = XLMRobertaModel(config).eval()
    colbert = torch.nn.Linear(1024, 1024)
    ids = torch.randint(5, 8000, (passages, tokens))
    mask = torch.ones_like(ids)
    timings = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            torch.nn.functional.normalize(colbert(hidden[:, 1:]), dim=-1)
            timings.append(time.perf_counter() - started)
    return min(timings) / passages


class RandomM3Outputs:
    """Stands in for ``embeddings: bge-m3`` when the m3-sparse index is written: each passage gets
    one lexical weight and ``tokens`` random ColBERT vectors of bge-m3's width."""

    def __init__(self, tokens: int, rng: np.random.Generator):
        self.tokens, self.rng = tokens, rng

    def passage_outputs(self, texts: list[str]) -> tuple[list[dict[int, float]], list[np.ndarray]]:
        return [{5: 0.5}] * len(texts), [self.rng.standard_normal((self.tokens, 1024)).astype(np.float16) for _ in texts]


def stored_seconds_per_query(tokens: int, candidates: int, chunks: int, repeats: int) -> tuple[float, int]:
    """Read ``candidates`` chunks' stored float16 vectors back from the m3-sparse index and score them."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        index = M3SparseIndex(M3SparseConfig(), RandomM3Outputs(tokens, rng))
        index.place(Path(folder), "bench")
        with index.writing():
            for start in range(0, chunks, 100):  # 100 at a time: the random vectors are held until written
                part = range(start, min(chunks, start + 100))
                index.upsert_texts([Document(page_content="x", metadata={}, id=f"c{i:06d}") for i in part])
        size = (index.folder() / STORE_FILENAME).stat().st_size
        query = rng.standard_normal((16, 1024)).astype(np.float32)
        timings = []
        for _ in range(repeats):
            ids = [f"c{i:06d}" for i in rng.choice(chunks, candidates, replace=False)]
            started = time.perf_counter()
            colbert_scores(query, index.colbert_vectors(ids))
            timings.append(time.perf_counter() - started)
    return min(timings), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--encode", type=int, default=4, help="passages encoded to time recomputation")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=400, help="chunks in the store the candidates are read from")
    parser.add_argument("--name", default=None, help="label of this run in results/bge-m3-colbert.md (default: the date)")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    load_before = os.getloadavg()
    stored, size = stored_seconds_per_query(args.tokens, args.candidates, args.chunks, repeats=7)
    per_passage = recompute_seconds_per_passage(args.tokens, args.encode, repeats=2)
    recompute = per_passage * args.candidates
    result = {
        "command": harness.command_line(__file__),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": torch.get_num_threads(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "timing": "best of 7 (stored) and of 2 (recomputed) repeats: the machine is shared",
        "tokens_per_chunk": args.tokens,
        "candidates_per_query": args.candidates,
        "stored_seconds_per_query": stored,
        "recompute_seconds_per_passage": per_passage,
        "recompute_seconds_per_query": recompute,
        "ratio_recompute_over_stored": recompute / stored,
        "disk_bytes_per_chunk": size / args.chunks,
    }
    markdown = (
        "# BGE-M3 ColBERT rescoring: stored vectors vs recomputed at query time\n\n"
        f"Command: `{result['command']}` ({result['date']}, {result['threads']} CPU threads; shared machine, "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {result['timing']})\n\n"
        f"bge-m3 shapes (24 x 1024 XLM-R, random weights), {args.tokens}-token chunks, {args.candidates} candidates per query.\n\n"
        "| | per query | disk per chunk |\n|---|---|---|\n"
        f"| stored (float16 in the m3-sparse SQLite store, read back + scored) | {stored * 1000:.1f} ms | {result['disk_bytes_per_chunk'] / 1024:.0f} KiB |\n"
        f"| recomputed (encode the candidates again) | {recompute:.1f} s ({per_passage:.2f} s per passage) | 0 |\n\n"
        f"Recomputing is {result['ratio_recompute_over_stored']:.0f}x slower per query on this CPU: the vectors are stored.\n"
    )
    harness.record_run("bge-m3-colbert", harness.run_label(args.name), markdown=markdown, data=result, results=args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
