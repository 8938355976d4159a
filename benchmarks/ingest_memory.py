"""Ingest memory benchmark: peak RSS of a whole `rag-pipeline ingest` of one large JSONL file, the
code before streaming (a git revision, checked out to a temporary worktree) against the code here,
side by side in one run.

A JSONL file of ~2 kB records (``--record-kb``) is generated in a temporary folder at each size
asked for (deleted afterwards, never committed). Each measurement is a fresh
`python -m rag_pipeline.cli ingest` into an empty index, run under a small wrapper process that
reports its child's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). The pipeline is an
ordinary one: the directory loader, the recursive chunker (1,000 characters), Chroma on disk; the
embedder is a tiny random model of bge-small's architecture (BERT, 2 layers, hidden 32, CLS
pooling, normalised; ``harness.tiny_bi_encoder``), because embedding a gigabyte with a real model
takes hours on this CPU and the embedder's own memory does not depend on the file's size.

    .venv/bin/python benchmarks/ingest_memory.py --baseline a79edb5 --sizes-mb 100 1000

The run goes on top of ``--out`` (default ``benchmarks/results/ingest-memory.md``); the run it
replaces moves to the page's history.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import yaml

import harness

REPO = harness.REPO
WORDS = "river stone light harbour maple copper garden signal winter orbit lantern meadow bridge ember".split()

_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "seconds = time.perf_counter() - started\n"
    "if code.returncode: sys.stderr.write(code.stderr[-2000:])\n"
    "print(code.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, seconds)\n"
)


def generate(path: Path, size_mb: int, record_bytes: int, seed: int = 0) -> int:
    """Records of ~``record_bytes`` of text each, until the file holds ``size_mb`` MB; returns the count."""
    rng = random.Random(seed)
    target, written, count = size_mb * 1_000_000, 0, 0
    with path.open("w", encoding="utf-8") as handle:
        while written < target:
            words = " ".join(rng.choice(WORDS) for _ in range(record_bytes // 7))
            line = json.dumps({"id": count, "category": rng.choice("abc"), "text": words}) + "\n"
            handle.write(line)
            written += len(line)
            count += 1
    return count


def config(corpus: Path, index: Path, model: Path) -> dict:
    return {
        "loader": {"type": "directory", "path": str(corpus), "show_progress": False, "max_file_size": 2_000_000_000},
        "chunker": {"type": "recursive", "chunk_size": 1000, "chunk_overlap": 0},
        "embeddings": {"type": "bge", "model": str(model), "batch_size": 64, "show_progress": False},
        "vectorstore": {"type": "chroma", "persist_directory": str(index), "collection": "bench"},
    }


def measure(source: Path, config_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "rag_pipeline.cli", "ingest", str(config_path), "-q"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=source, check=True)
    code, rss_kib, seconds = out.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"ingest failed ({source}): {out.stderr.strip()[-500:]}")
    return {"peak_rss_mib": int(rss_kib) / 1024, "seconds": float(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="a79edb5", help="git revision of the code before streaming")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--record-kb", type=int, default=2, help="size of one JSONL record")
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "ingest-memory.md")
    parser.add_argument("--name", default=None, help="label of this run on that page (default: the date)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-memory-"))
    baseline = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(baseline), args.baseline], check=True)
    model = harness.tiny_bi_encoder(work / "bge-tiny-en-v1.5")
    rows = []
    try:
        for size in args.sizes_mb:
            corpus = work / f"corpus-{size}"
            corpus.mkdir()
            records = generate(corpus / "records.jsonl", size, args.record_kb * 1000)
            row = {"size_mb": size, "records": records}
            for name, source in (("baseline", baseline), ("streaming", REPO)):
                index = work / f"index-{name}-{size}"
                path = work / f"{name}-{size}.yaml"
                path.write_text(yaml.safe_dump(config(corpus, index, model)))
                row[name] = measure(source, path)
                shutil.rmtree(index, ignore_errors=True)
                print(size, name, row[name], flush=True)
            rows.append(row)
            shutil.rmtree(corpus)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "# Ingest memory: one large JSONL file, whole `rag-pipeline ingest`",
        "",
        f"Command: `{harness.command_line(__file__)}`  ",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; baseline = revision {args.baseline} (the code before streaming).",
        "",
        "| file | records | baseline peak RSS | streaming peak RSS | baseline / streaming | baseline s | streaming s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        b, s = row["baseline"], row["streaming"]
        lines.append(
            f"| {row['size_mb']} MB | {row['records']} | {b['peak_rss_mib']:.0f} MiB | {s['peak_rss_mib']:.0f} MiB | "
            f"{b['peak_rss_mib'] / s['peak_rss_mib']:.1f}x | {b['seconds']:.0f} | {s['seconds']:.0f} |"
        )
    lines += [
        "",
        "Each figure is one fresh process (model load, Chroma, the record and the embedding cache included).",
        "The pipeline: directory loader, recursive chunker (1,000 characters), a tiny random bge-small-shaped "
        "embedder (`harness.tiny_bi_encoder`: the model's memory does not grow with the file), Chroma on disk.",
    ]
    harness.record_run(args.out.stem, harness.run_label(args.name), markdown="\n".join(lines) + "\n", results=args.out.parent)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
