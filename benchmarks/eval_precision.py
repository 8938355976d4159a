"""SciFact nDCG@10 and cold embedding time per ``embeddings.precision``, side by side in one run.

    python benchmarks/eval_precision.py --dataset ../shared/datasets/scifact

Runs ``rag-pipeline eval configs/scifact-dense.yaml`` cold (a fresh index folder each, so every
abstract is embedded) once per precision, alternating nothing away: fp32, bf16, int8 in that order,
then puts the run on top of ``benchmarks/results/precision-scifact.{md,json}`` (the run it replaces
moves to the page's history). The int8 run starts with an empty
ONNX cache (a temporary ``RAG_PIPELINE_CACHE_DIR``), so its time includes the one-off export.
Acceptance (issue 11): bf16 within 0.3 nDCG@10 of fp32, int8 within 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

LIMITS = {"bf16": 0.3, "int8": 1.0}


def run_eval(config: Path, dataset: Path, index: Path, out: Path, precision: str, env: dict) -> dict:
    command = [
        sys.executable, "-m", "rag_pipeline.cli", "eval", str(config), "--dataset", str(dataset), "--json", str(out),
        "-q", "--set", f"vectorstore.persist_directory={index}", "--set", f"embeddings.precision={precision}",
    ]
    print("$", " ".join(shlex.quote(c) for c in command[2:]), flush=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    report = json.loads(out.read_text())
    return {
        "precision": precision, "wall_s": wall, "load_average_at_start": load,
        "ndcg@10": 100 * report["metrics"]["first_stage"]["ndcg@10"],
        "index_s": report["timings"]["index"].get("seconds", report["timings"].get("index_s")),
        "timings": report["timings"], "embedded": report["timings"]["index"].get("embedded"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=harness.SCIFACT)
    parser.add_argument("--config", type=Path, default=harness.REPO / "configs" / "scifact-dense.yaml")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    parser.add_argument("--name", default=None, help="label of this run in results/precision-scifact.md (default: the date)")
    args = parser.parse_args()
    command = harness.command_line(__file__)
    work = Path(tempfile.mkdtemp(prefix="rag-eval-precision-"))
    env = {**os.environ, "RAG_PIPELINE_CACHE_DIR": str(work / "model-cache")}
    runs = [
        run_eval(args.config, args.dataset, work / f"index-{p}", work / f"{p}.json", p, env)
        for p in args.precisions.split(",")
    ]
    for run in runs:
        print({k: v for k, v in run.items() if k != "timings"}, flush=True)
    reference = next((r for r in runs if r["precision"] == "fp32"), None)
    lines = [
        "# SciFact nDCG@10 per embeddings.precision",
        "",
        f"Produced by `{command}` (from the repository root): `rag-pipeline eval configs/scifact-dense.yaml` cold "
        "(fresh index folder, every abstract embedded) once per precision, in one run on a shared 2-core machine. "
        "all-MiniLM-L6-v2, max_seq_length 256, 5183 abstracts, 300 test queries, exact search.",
        "",
        "| precision | nDCG@10 | vs fp32 | limit | eval wall s (process) | load avg at start |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        delta = run["ndcg@10"] - reference["ndcg@10"] if reference else float("nan")
        limit = LIMITS.get(run["precision"])
        verdict = "" if limit is None else (f"±{limit} {'met' if abs(delta) <= limit else 'MISSED'}")
        lines.append(
            f"| {run['precision']} | {run['ndcg@10']:.2f} | {delta:+.2f} | {verdict} | {run['wall_s']:.0f} | "
            f"{run['load_average_at_start']:.1f} |"
        )
    lines += ["", "The int8 wall time includes the one-off ONNX export and quantisation (cached for later runs).", ""]
    harness.record_run("precision-scifact", harness.run_label(args.name), markdown="\n".join(lines),
                       data={"command": command, "runs": runs}, results=args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
