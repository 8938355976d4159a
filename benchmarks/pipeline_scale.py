"""The whole pipeline at 100,000 and 1,000,000 chunks: ingest and where its time goes, disk per
chunk, query latency of the dense, BM25 and hybrid retrievers, the cost of a change, the unchanged
re-ingest and a server's memory.

    python benchmarks/pipeline_scale.py 100000 1000000

Pipeline-only figures: the embedder is a tiny random bi-encoder of BGE's kind (2 layers, hidden
32; ``harness.tiny_bi_encoder``), so that what is timed is the pipeline (reading, chunking,
writing the indexes, the record) and not the model; embedding with a real model adds its own
cost per chunk, measured in ``benchmarks/results/benchmarks.md``. Retrieval quality is not
measured here (random vectors).

The collection is ``lexical_scale.collection``'s real text (SciFact's sentences, then the prose
the installed packages ship), written as JSONL files of 1,000 records, one chunk per record
(``chunker: none``). One index per size: Chroma for the dense arm, ``lexical: tantivy``; the
three retrievers read the same index. Each size runs in its own process (peak memory is its own).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import harness

RECORDS_PER_FILE = 1_000
RETRIEVERS = {"dense": ["dense"], "bm25": ["bm25"], "hybrid": ["dense", "bm25"]}


def config_for(work: Path, arms: list[str]) -> dict:
    return {
        "name": "scale",
        "loader": {"type": "directory", "path": str(work / "corpus"), "include": ["*.jsonl"], "show_progress": False},
        "chunker": {"type": "none"},
        "embeddings": {"type": "bge", "model": str(work / "model"), "batch_size": 256, "show_progress": False},
        "vectorstore": {"type": "chroma", "persist_directory": str(work / "index"), "collection": "scale"},
        "lexical": {"type": "tantivy"},
        "reranker": None,
        "retriever": {
            "type": "hybrid", "arms": arms, "k": 10, "fetch_k": 100,
            "fusion": {"method": "convex", "normalize": "minmax", "weights": {"dense": 0.5, "bm25": 0.5}, "depth": 100},
        },
    }


def write_corpus(work: Path, size: int) -> None:
    from lexical_scale import collection

    folder = work / "corpus"
    folder.mkdir(parents=True)
    chunks = collection(size)
    for start in range(0, size, RECORDS_PER_FILE):
        part = chunks[start : start + RECORDS_PER_FILE]
        (folder / f"part-{start // RECORDS_PER_FILE:05d}.jsonl").write_text(
            "".join(json.dumps({"id": c.id, "text": c.page_content}) + "\n" for c in part), encoding="utf-8"
        )
    harness.tiny_bi_encoder(work / "model")


class Spent:
    """Seconds spent inside chosen functions, by what they do (wrapped for the worker's life)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, what: str) -> None:
        original = getattr(owner, name)
        seconds = self.seconds

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[what] += time.perf_counter() - start

        setattr(owner, name, timed)


def disk_per_chunk(index: Path, chunks: int) -> dict[str, float]:
    def size(paths) -> int:
        return sum(p.stat().st_size for path in paths for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())

    hnsw = [p for p in index.iterdir() if p.is_dir() and p.name != "lexical"]
    parts = {
        "vectors and metadata (chroma.sqlite3)": size(index.glob("chroma.sqlite3*")),
        "HNSW": size(hnsw),
        "lexical (chunk table + tantivy)": size([index / "lexical"]),
        "record": size(index.glob("index_record.sqlite*")),
        "embedding cache": size(index.glob("embedding_cache.sqlite*")),
    }
    return {part: n / chunks for part, n in parts.items()}


def latency(retriever, queries: list[str]) -> dict[str, float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        retriever.invoke(query)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}


def server_rss_mib(config_path: Path, queries: list[str]) -> float:
    """Resident memory of ``rag-pipeline serve`` holding the index, after it answered a few queries."""
    import urllib.request

    with harness.serving(config_path) as url:
        for query in queries:
            request = urllib.request.Request(f"{url}/query", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=120).read()
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
                cmdline = (status.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if b"serve" in cmdline and str(config_path).encode() in cmdline:
                return int(next(line for line in text.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    raise RuntimeError("the server process was not found")


def worker(work: Path) -> dict:
    import yaml
    from langchain_core.documents import Document

    from rag_pipeline import Pipeline
    from rag_pipeline.evaluation.beir import load_beir
    from rag_pipeline.indexing import sinks
    from rag_pipeline.indexing.record import IndexRecord
    from rag_pipeline.lexical.tantivy_index import TantivyIndex
    from rag_pipeline.vectorstores.chroma import ChromaStore

    spent = Spent()
    spent.wrap(sinks, "encode_with_cache", "embed")
    spent.wrap(ChromaStore, "upsert", "write Chroma")
    spent.wrap(TantivyIndex, "upsert_texts", "write lexical")
    for name in ("commit_files", "update_stats", "remove_sources", "put_api_chunks", "remove_chunks", "confirm_deleted"):
        spent.wrap(IndexRecord, name, "record")

    config = config_for(work, RETRIEVERS["hybrid"])
    start = time.perf_counter()
    report = Pipeline.from_config(config).ingest()
    total = time.perf_counter() - start
    chunks = report.collection_count
    phases = dict(spent.seconds)
    phases["read, chunk, plan and the rest"] = total - sum(phases.values())
    result: dict = {"chunks": chunks, "files": report.files_seen, "ingest_s": total, "ingest_phases_s": phases,
                    "ingest_peak_rss_mib": harness.peak_rss_mib(), "disk_bytes_per_chunk": disk_per_chunk(work / "index", chunks)}

    start = time.perf_counter()
    again = Pipeline.from_config(config).ingest()
    result["unchanged_reingest_s"] = time.perf_counter() - start
    assert again.files_unchanged == report.files_seen, again.summary()

    files = sorted((work / "corpus").glob("*.jsonl"))
    edited = files[len(files) // 2]
    lines = edited.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[0])
    record["text"] += " Edited."
    edited.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n", encoding="utf-8")
    pipe = Pipeline.from_config(config)
    start = time.perf_counter()
    changed = pipe.ingest()
    result["edit_one_file"] = {"s": time.perf_counter() - start, "embedded": changed.embedded, "deleted": changed.deleted,
                               "records_in_file": len(lines)}

    documents = [Document(page_content=f"An added note, number {n}, on sentence splitting.", metadata={}) for n in range(10)]
    start = time.perf_counter()
    pipe.add_documents(documents, source="added-notes")
    result["add_documents_10_s"] = time.perf_counter() - start
    start = time.perf_counter()
    removed = pipe.delete(source="added-notes")
    result["delete_one_source_s"] = time.perf_counter() - start
    assert removed == 10, removed

    queries = list(load_beir(harness.SCIFACT, split="test").queries.values())
    result["queries"] = {}
    for name, arms in RETRIEVERS.items():
        start = time.perf_counter()
        retriever = Pipeline.from_config(config_for(work, arms)).as_retriever()
        opened = time.perf_counter()
        retriever.invoke(queries[0])
        first = time.perf_counter()
        result["queries"][name] = {"open_s": opened - start, "first_query_ms": (first - opened) * 1000, **latency(retriever, queries)}

    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_for(work, RETRIEVERS["hybrid"])), encoding="utf-8")
    result["server_rss_mib"] = server_rss_mib(config_path, queries[:20])
    return result


def markdown(rows: list[dict]) -> str:
    out = ["### Ingest", "", "| chunks | files | ingest s | " + " | ".join(f"{p} s" for p in rows[0]["ingest_phases_s"]) + " | peak MiB |",
           "|---:|---:|---:|" + "---:|" * len(rows[0]["ingest_phases_s"]) + "---:|"]
    for r in rows:
        out.append(f"| {r['chunks']:,} | {r['files']:,} | {r['ingest_s']:.0f} | " + " | ".join(f"{v:.1f}" for v in r["ingest_phases_s"].values()) + f" | {r['ingest_peak_rss_mib']:.0f} |")
    out += ["", "### Disk, bytes per chunk", "", "| chunks | " + " | ".join(rows[0]["disk_bytes_per_chunk"]) + " |", "|---:|" + "---:|" * len(rows[0]["disk_bytes_per_chunk"])]
    for r in rows:
        out.append(f"| {r['chunks']:,} | " + " | ".join(f"{v:.0f}" for v in r["disk_bytes_per_chunk"].values()) + " |")
    out += ["", "### Changes", "", "| chunks | unchanged re-ingest s | edit one file (1,000 records, 1 changed) s | embedded | add_documents 10 s | delete one source s | server RSS MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e = r["edit_one_file"]
        out.append(f"| {r['chunks']:,} | {r['unchanged_reingest_s']:.1f} | {e['s']:.2f} | {e['embedded']} | {r['add_documents_10_s']:.2f} | {r['delete_one_source_s']:.2f} | {r['server_rss_mib']:.0f} |")
    out += ["", "### Queries (k 10; SciFact's 300 test queries, one per call, in process)", "",
            "| chunks | retriever | open s | first query ms | p50 ms | p95 ms |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        for name, q in r["queries"].items():
            out.append(f"| {r['chunks']:,} | {name} | {q['open_s']:.1f} | {q['first_query_ms']:.0f} | {q['p50_ms']:.1f} | {q['p95_ms']:.1f} |")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["_worker"]:
        print(json.dumps(worker(Path(sys.argv[2]))))
        return
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    rows = []
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"pipeline-scale-{size}-"))
        try:
            write_corpus(work, size)
            rows.append(harness.json_from_script(__file__, "_worker", str(work), what=f"{size} chunks"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    env = harness.environment()
    body = (
        f"# The whole pipeline at scale (tiny random embedder: pipeline-only figures)\n\n"
        f"Command: `{harness.command_line(__file__)}`\n\nMachine: {env['cpu_model']}, {os.cpu_count()} cores; "
        f"load average at the end {env['load_average']}.\n\n{markdown(rows)}\n"
    )
    harness.record_run("pipeline-scale", harness.run_label(), markdown=body, data=rows)


if __name__ == "__main__":
    main()
