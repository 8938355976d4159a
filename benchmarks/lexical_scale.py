"""The lexical indexes side by side: ``bm25`` (bm25s, rebuilt after a change) and ``tantivy``
(changed in place), on SciFact and on collections of 100,000 and 1,000,000 chunks.

    python benchmarks/lexical_scale.py scifact              # results/lexical-scifact.md: quality and costs on SciFact
    python benchmarks/lexical_scale.py scale 100000 1000000  # results/lexical-scale.md

Lexical index only (no embedding, no dense index): what is timed is the index's own work. Each
engine and size runs in its own process, one after the other (peak memory is that process's).

- Collections: SciFact's abstracts split into sentences, then lines of English prose that the
  installed Python packages ship (comments and docstrings of site-packages, deduplicated, in a
  fixed walk order): real text, no invented vocabulary. Which packages are installed changes the
  text past SciFact's ~50,000 sentences; the results record the environment.
- Build: every chunk written in batches of 5,000 in one write session (as an ingest does),
  including what the session's end does (bm25s rebuilds its matrices and saves them).
- Query latency: SciFact's 300 test queries, one per call, k 10 and k 100 (the hybrid
  retriever's fusion depth), p50 / p95; the first query of a new index object over the folder.
- Cost of a change, each its own write session: add 10 chunks, delete 10 (one file's), rewrite
  10 (an edited file: 10 new chunks, 10 old deleted).
- Quality (``scifact``): nDCG@10 of the top 100 on the test split, title + text as BEIR indexes it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import harness

ENGINES = ("bm25", "tantivy")
BATCH = 5_000
_LINE_START = re.compile(r"^[\s#\"'*/-]*")


def scifact_sentences() -> list[tuple[str, str]]:
    """(id, sentence) for every sentence of every SciFact abstract, in corpus order."""
    found = []
    with open(harness.SCIFACT / "corpus.jsonl", encoding="utf-8") as corpus:
        for line in corpus:
            doc = json.loads(line)
            for n, sentence in enumerate(re.split(r"(?<=[.!?])\s+", doc["text"])):
                if len(sentence.split()) >= 3:
                    found.append((f"scifact-{doc['_id']}-{n}", sentence))
    return found


def package_prose(limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` distinct lines of English prose from the installed packages' files."""
    root = sysconfig.get_paths()["purelib"]
    seen: dict[str, None] = {}
    for dirpath, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            if not name.endswith((".py", ".md", ".rst", ".txt")):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as file:
                    for line in file:
                        text = _LINE_START.sub("", line).strip()
                        if len(text) >= 30 and len(text.split()) >= 6 and sum(c.isalpha() or c == " " for c in text) >= 0.85 * len(text):
                            seen[text] = None
                            if len(seen) >= limit:
                                return [(f"prose-{i}", t) for i, t in enumerate(seen)]
            except (UnicodeDecodeError, OSError):
                continue
    return [(f"prose-{i}", t) for i, t in enumerate(seen)]


def collection(size: int) -> list:
    from langchain_core.documents import Document

    rows = scifact_sentences()[:size]
    if len(rows) < size:
        rows += package_prose(size - len(rows))
    if len(rows) < size:
        raise SystemExit(f"only {len(rows)} chunks of real text here; ask for fewer")
    # ten chunks per "file", so that deleting a file deletes ten chunks
    return [Document(page_content=text, metadata={"source": f"file-{n // 10}"}, id=chunk_id) for n, (chunk_id, text) in enumerate(rows)]


def scifact_documents() -> tuple[list, dict[str, str], dict]:
    from rag_pipeline.evaluation.beir import load_beir

    dataset = load_beir(harness.SCIFACT, split="test")
    return dataset.documents(), dataset.queries, dataset.qrels


def new_index(engine: str, folder: Path):
    from rag_pipeline.lexical.bm25 import BM25Config, BM25Index
    from rag_pipeline.lexical.tantivy_index import TantivyConfig, TantivyIndex

    index = BM25Index(BM25Config()) if engine == "bm25" else TantivyIndex(TantivyConfig())
    index.place(folder, "c")
    return index


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def latency(index, queries: list[str], k: int) -> dict[str, float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search_batch_text([query], k, with_text=False)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}


def worker(engine: str, size: str, folder: Path) -> dict:
    from langchain_core.documents import Document

    quality = size == "scifact"
    if quality:
        chunks, queries, qrels = scifact_documents()
    else:
        chunks = collection(int(size))
        _, queries, _ = scifact_documents()
    query_texts = list(queries.values())
    result: dict = {"engine": engine, "collection": size, "chunks": len(chunks)}

    index = new_index(engine, folder)

    def build():
        with index.writing():
            for start in range(0, len(chunks), BATCH):
                index.upsert_texts(chunks[start : start + BATCH])

    result["build_s"] = timed(build)
    result["build_peak_rss_mib"] = harness.peak_rss_mib()
    collection_folder = folder / "c"
    result["disk_bytes_per_chunk"] = {
        "chunk table": (sum(p.stat().st_size for p in collection_folder.glob("chunks.sqlite*"))) / len(chunks),
        "engine": (folder_bytes(collection_folder / "bm25") + folder_bytes(collection_folder / "tantivy")) / len(chunks),
    }

    cold = new_index(engine, folder)
    result["first_query_ms"] = timed(lambda: cold.search_batch_text([query_texts[0]], 10, with_text=False)) * 1000
    result["query_k10"] = latency(cold, query_texts, 10)
    result["query_k100"] = latency(cold, query_texts, 100)

    if quality:
        from rag_pipeline.evaluation.metrics import evaluate_run

        ids = list(queries)
        run = {}
        for start in range(0, len(ids), 50):
            part = ids[start : start + 50]
            for query_id, hits in zip(part, cold.search_batch_text([queries[q] for q in part], 100, with_text=False)):
                run[query_id] = {hit.id: hit.metadata["score"] for hit in hits}
        result["ndcg@10"] = evaluate_run(qrels, run, ["ndcg@10"]).mean["ndcg@10"] * 100

    fresh = [Document(page_content=f"{c.page_content} (revised)", metadata={"source": "added"}, id=f"added-{n}") for n, c in enumerate(chunks[:10])]
    one_file = [c.id for c in chunks[100:110]]
    edited_old = [c.id for c in chunks[200:210]]
    edited_new = [Document(page_content=c.page_content + " Edited.", metadata=c.metadata, id=f"{c.id}-edited") for c in chunks[200:210]]

    def session(action):
        def run():
            with index.writing():
                action()
        return timed(run)

    result["change_s"] = {
        "add 10 chunks": session(lambda: index.upsert_texts(fresh)),
        "delete 10 chunks": session(lambda: index.delete(one_file)),
        "rewrite 10 chunks": session(lambda: (index.upsert_texts(edited_new), index.delete(edited_old))),
    }
    result["after_changes_first_query_ms"] = timed(lambda: cold.search_batch_text([query_texts[1]], 10, with_text=False)) * 1000
    result["peak_rss_mib"] = harness.peak_rss_mib()
    return result


def run_all(sizes: list[str]) -> list[dict]:
    rows = []
    for size in sizes:
        for engine in ENGINES:
            work = Path(tempfile.mkdtemp(prefix=f"lexical-{engine}-{size}-"))
            try:
                rows.append(harness.json_from_script(__file__, "_worker", engine, size, str(work), what=f"{engine} at {size}"))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    out = [
        "| collection | engine | chunks | build s | peak MiB | disk B/chunk (table + engine) | first query ms | k10 p50 / p95 ms | k100 p50 / p95 ms | add 10 s | delete 10 s | rewrite 10 s | nDCG@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        disk = r["disk_bytes_per_chunk"]
        change = r["change_s"]
        out.append(
            f"| {r['collection']} | {r['engine']} | {r['chunks']:,} | {r['build_s']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{disk['chunk table']:.0f} + {disk['engine']:.0f} | {r['first_query_ms']:.0f} | "
            f"{r['query_k10']['p50_ms']:.1f} / {r['query_k10']['p95_ms']:.1f} | {r['query_k100']['p50_ms']:.1f} / {r['query_k100']['p95_ms']:.1f} | "
            f"{change['add 10 chunks']:.2f} | {change['delete 10 chunks']:.2f} | {change['rewrite 10 chunks']:.2f} | "
            f"{r['ndcg@10']:.2f} |" if "ndcg@10" in r else
            f"| {r['collection']} | {r['engine']} | {r['chunks']:,} | {r['build_s']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{disk['chunk table']:.0f} + {disk['engine']:.0f} | {r['first_query_ms']:.0f} | "
            f"{r['query_k10']['p50_ms']:.1f} / {r['query_k10']['p95_ms']:.1f} | {r['query_k100']['p50_ms']:.1f} / {r['query_k100']['p95_ms']:.1f} | "
            f"{change['add 10 chunks']:.2f} | {change['delete 10 chunks']:.2f} | {change['rewrite 10 chunks']:.2f} | - |"
        )
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["_worker"]:
        engine, size, folder = sys.argv[2:5]
        print(json.dumps(worker(engine, size, Path(folder))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["scifact", "scale"])
    parser.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    args = parser.parse_args()
    sizes = ["scifact"] if args.what == "scifact" else [str(n) for n in args.sizes]
    rows = run_all(sizes)
    command = harness.command_line(__file__)
    env = harness.environment()
    import bm25s
    import tantivy

    body = (
        f"# Lexical indexes: bm25s rebuilt against tantivy in place\n\nCommand: `{command}`\n\n"
        f"Machine: {env['cpu_model']}, {os.cpu_count()} cores; load average at the end {env['load_average']}; "
        f"bm25s {bm25s.__version__}, tantivy {tantivy.__version__}.\n\n{markdown(rows)}\n"
    )
    harness.record_run(f"lexical-{args.what}", harness.run_label(), markdown=body, data=rows)


if __name__ == "__main__":
    main()
