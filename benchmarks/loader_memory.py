"""Loader memory benchmark: peak RSS of reading and chunking one large JSONL file, old way vs new.

A JSONL file of ~1 kB records is generated in a temporary folder (deleted afterwards, never
committed) at each size asked for, and read in a fresh process per measurement, so each peak RSS
(``resource.getrusage(...).ru_maxrss``) is that strategy's alone:

- ``old``: what the loader did before streaming, re-implemented here as the baseline: read the
  whole file, decode it, ``splitlines()``, ``json.loads`` each line into a list of Documents, then
  chunk them all into one list (the whole file's chunks were one group).
- ``new``: ``DirectoryLoader.iter_file``, chunking each document as it comes and dropping its
  chunks (the ingest writes them in bounded groups; this measures the reader's part).

No model is loaded and nothing is embedded: this is the reader and the chunker only.

    .venv/bin/python benchmarks/loader_memory.py                           # 100 MB and 1 GB (~15 min on 2 busy cores)
    .venv/bin/python benchmarks/loader_memory.py --sizes-mb 20 100 --out /tmp/loader-memory.md   # a quick look

The run goes on top of ``--out`` (default ``benchmarks/results/loader-memory.md``); the run it
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
import time
from datetime import datetime, timezone
from pathlib import Path

import harness
from harness import peak_rss_mib

CHUNK_SIZE, CHUNK_OVERLAP = 1000, 100
WORDS = (
    "river stone light harbour maple copper garden signal winter orbit lantern meadow bridge ember "
    "canyon falcon glacier island juniper kettle ledger marble nectar oyster pepper quartz saddle "
    "timber violet walnut yonder zephyr anchor basket candle desert engine feather grain hollow"
).split()


def generate(path: Path, size_bytes: int, seed: int = 7) -> int:
    """Write ~``size_bytes`` of JSONL (~1 kB records); returns the number of records."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(120, 200))) + "." for _ in range(997)]
    written = count = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < size_bytes:
            lines = []
            for _ in range(1000):
                record = {"id": f"r{count}", "text": texts[count % len(texts)], "category": WORDS[count % len(WORDS)]}
                lines.append(json.dumps(record) + "\n")
                count += 1
            block = "".join(lines)
            handle.write(block)
            written += len(block)
    return count


def _old_documents(path: Path, max_bytes: int):
    """The pre-streaming JSONL reader and loader, as they were: whole file, then every record."""
    from langchain_core.documents import Document

    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    text = data.decode("utf-8")
    del data
    source, documents = path.name, []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        key = f"line={obj['id']}" if obj.get("id") not in (None, "") else f"line={number}"
        metadata = {k: v for k, v in obj.items() if k != "text" and v is not None and k}
        metadata.update(source=source, doc_id=f"{source}#{key}", file_type="jsonl")
        documents.append(Document(page_content=str(obj["text"]), metadata=metadata))
    return documents


def worker(strategy: str, path: Path) -> dict:
    from rag_pipeline.chunkers.recursive import RecursiveChunker, RecursiveChunkerConfig
    from rag_pipeline.loaders import DirectoryLoader, DirectoryLoaderConfig

    chunker = RecursiveChunker(RecursiveChunkerConfig(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP))
    chunker.split_documents([])  # import the splitter's modules before the baseline is taken
    size = path.stat().st_size
    after_imports = peak_rss_mib()
    started = time.perf_counter()
    if strategy == "old":
        documents = _old_documents(path, size)
        chunks = chunker.split_documents(documents)
        document_count, chunk_count = len(documents), len(chunks)
    else:
        loader = DirectoryLoader(DirectoryLoaderConfig(path=path.parent, max_file_size=size, show_progress=False))
        document_count = chunk_count = 0
        warnings: list[str] = []
        for document in loader.iter_file(path, warnings):
            document_count += 1
            chunk_count += len(chunker.split_documents([document]))
        assert not warnings, warnings[:3]
    return {
        "strategy": strategy,
        "file_mb": size / 1e6,
        "documents": document_count,
        "chunks": chunk_count,
        "seconds": time.perf_counter() - started,
        "rss_after_imports_mb": after_imports,
        "peak_rss_mb": peak_rss_mib(),
    }


def measure(strategy: str, path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", strategy, str(path)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"{strategy} on {path.name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict], command: str) -> str:
    lines = [
        "# Loader memory: one large JSONL, old whole-file reading vs streaming (`iter_file`)",
        "",
        f"Command: `{command}`",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}); reader + recursive chunker "
        f"({CHUNK_SIZE}/{CHUNK_OVERLAP} characters), no embedding. Each figure is one fresh process; "
        "peak RSS is `ru_maxrss`, and \"over imports\" subtracts the RSS the process had after its imports.",
        "",
        "| file | strategy | documents | chunks | seconds | peak RSS (MB) | over imports (MB) | over imports / file size |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        over = row["peak_rss_mb"] - row["rss_after_imports_mb"]
        lines.append(
            f"| {row['file_mb']:.0f} MB | {row['strategy']} | {row['documents']:,} | {row['chunks']:,} | "
            f"{row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | {over:.0f} | {over / row['file_mb']:.2f}x |"
        )
    lines += ["", "| file | old peak / new peak (RSS) | old / new (over imports) |", "| ---: | ---: | ---: |"]
    by_size: dict[float, dict[str, dict]] = {}
    for row in rows:
        by_size.setdefault(round(row["file_mb"]), {})[row["strategy"]] = row
    for size, pair in sorted(by_size.items()):
        old, new = pair["old"], pair["new"]
        over_old = old["peak_rss_mb"] - old["rss_after_imports_mb"]
        over_new = new["peak_rss_mb"] - new["rss_after_imports_mb"]
        ratio, ratio_over = old["peak_rss_mb"] / new["peak_rss_mb"], over_old / max(over_new, 1)
        lines.append(f"| {size} MB | {ratio:.1f}x | {ratio_over:.0f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "loader-memory.md")
    parser.add_argument("--name", default=None, help="label of this run on that page (default: the date)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the generated files (default: a temp dir)")
    parser.add_argument("--worker", nargs=2, metavar=("STRATEGY", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))))
        return
    folder = Path(tempfile.mkdtemp(prefix="loader-memory-", dir=args.tmp))
    rows = []
    try:
        for size_mb in args.sizes_mb:
            path = folder / f"records-{size_mb}mb.jsonl"
            generate(path, size_mb * 1_000_000)
            for strategy in ("old", "new"):
                rows.append(measure(strategy, path))
                print(json.dumps(rows[-1]), flush=True)
            path.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = report(rows, harness.command_line(__file__))
    harness.record_run(args.out.stem, harness.run_label(args.name), markdown=text, results=args.out.parent)
    print(text)


if __name__ == "__main__":
    main()
