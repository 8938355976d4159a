"""Hybrid retrieval on SciFact: the convex weight chosen on train, the test numbers, latency, BM25 cost.

    python benchmarks/eval_hybrid.py --dataset ../shared/datasets/scifact

Phases (``--phases``, default all; each merges its results into ``scifact-hybrid.json``, and the
Markdown is rewritten from it, so one phase can be rerun alone):

  sweep    the dense weight of configs/scifact-hybrid.yaml's convex fusion, 0.0 ... 1.0 by 0.1, scored
           on the TRAIN split through ``evaluate`` (the path ``rag-pipeline eval`` runs); the best
           (ties: nearest 0.5) is the weight used on test. The test split is never looked at here.
  test     ``rag-pipeline eval --split test`` once per config: scifact-bm25, scifact-hybrid (convex,
           the train-chosen weight; its report holds both arms alone, measured in the same run),
           scifact-hybrid-rrf.
  latency  one query at a time through ``Pipeline.as_retriever(k=10)`` (serving: ``search: ann``)
           over the eval collection: p50/p95 of hybrid, dense alone and BM25 alone, in one process.
  report   nothing run: the Markdown rewritten from the JSON.
  defaults are the shipped fusion defaults tuned to SciFact? train vs test, flatness, method,
           depth, query-length slices, bootstrap (``hybrid_defaults.py``); not run by default.
  bm25     BM25 index of the 5,183 abstracts (title + " " + text): build time, size on disk, and the
           cost of a 1% change (52 abstracts edited) against a build from scratch.

All runs share one index folder (``--index``, default .index/scifact-hybrid, as the configs): the
dense vectors are embedded once (minutes on a CPU) and come from its embedding cache after that.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import hybrid_defaults  # the ``defaults`` phase

CONFIGS = {name: harness.REPO / "configs" / f"scifact-{name}.yaml" for name in ("bm25", "hybrid", "hybrid-rrf")}
WEIGHTS = [round(0.1 * i, 1) for i in range(11)]
# What published work says about defaults, beside what SciFact alone can show.
PUBLISHED = [
    "### From published results",
    "",
    "* Convex combination over RRF, and min-max: Bruch, Gai and Ingber (An Analysis of Fusion Functions for Hybrid "
    "Retrieval, ACM TOIS 2023) find that a convex combination beats RRF both in-domain and out-of-domain on BEIR "
    "collections, that it is largely agnostic to the score normalisation, and that RRF is sensitive to its "
    "parameters; the published all-MiniLM-L6-v2 + bm25s benchmark quoted in issue 9 has the same order on SciFact "
    "(convex 73.4, RRF 71.4). Weaviate made min-max (`relativeScoreFusion`) its default fusion from v1.24.",
    "* Equal weights: across BEIR, BM25 and all-MiniLM-L6-v2 are close on average, each winning on some collections "
    "(BM25 by 3.4 points on SciFact; MiniLM on FiQA and Quora), so neither arm is known to be the stronger on an "
    "unseen collection. A weight fitted to one collection leans towards whichever arm wins there; equal weights are "
    "the choice that does not bet on either. SciFact's flat top (above) says that 0.1 off the optimum costs under a "
    "point, and a weight tuned finer on train did worse on test than 0.5. Where a collection with judgments exists, `rag-pipeline compare --grid "
    "retriever.fusion.weights=...` on its train or dev split is the way to move off 0.5 (Bruch et al.: a small "
    "training set suffices for the one parameter).",
    "* 100 per arm: a document one arm ranks first is credited by the other only if it is in that arm's list. "
    "Ten deep loses 0.4 (train) to 1.8 (test) points against 100; from 100 on, the table moves by less than 0.4 "
    "either way, while each arm's search and the fusion grow with the depth (the hybrid p50 above is at 100).",
]
PUBLISHED_BM25 = 68.0  # bm25s, Lucene, k1 1.2, b 0.75, stemmed, English stopwords (issue 9)


def weights_override(dense: float) -> list[str]:
    return ["--set", f"retriever.fusion.weights.dense={dense}", "--set", f"retriever.fusion.weights.bm25={round(1 - dense, 1)}"]


def sweep(dataset: Path, index: Path) -> dict:
    from rag_pipeline.evaluation import evaluate, load_beir

    train = load_beir(dataset, split="train")
    scores = {}
    for dense in WEIGHTS:
        result = evaluate(
            CONFIGS["hybrid"], train, show_progress=False,
            overrides={
                "vectorstore.persist_directory": str(index),
                "retriever.fusion.weights": {"dense": dense, "bm25": round(1 - dense, 1)},
            },
        )
        scores[str(dense)] = result.metrics["first_stage"]["ndcg@10"]
        print(f"train  dense weight {dense:.1f}: nDCG@10 {100 * scores[str(dense)]:.2f}", flush=True)
    best = max(scores.values())
    chosen = min((float(w) for w, s in scores.items() if s == best), key=lambda w: abs(w - 0.5))
    return {"split": "train", "queries": len(train.queries), "ndcg@10": scores, "chosen_dense_weight": chosen}


def run_eval(config: Path, dataset: Path, index: Path, out: Path, *extra: str) -> dict:
    command = [
        sys.executable, "-m", "rag_pipeline.cli", "eval", str(config), "--dataset", str(dataset), "--split", "test",
        "--json", str(out), "-q", "--set", f"vectorstore.persist_directory={index}", *extra,
    ]
    shown = "rag-pipeline " + " ".join(shlex.quote(_relative(c)) for c in command[3:])
    print("$", shown, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    print(done.stdout, flush=True)
    report = json.loads(out.read_text())
    return {"command": shown, "wall_s": time.perf_counter() - started, "table": done.stdout.strip(), "report": report}


def _relative(argument: str) -> str:
    """An absolute path (alone, or after ``key=``) as seen from the working directory."""
    key, sep, value = argument.rpartition("=")
    if value.startswith("/"):
        return f"{key}{sep}{os.path.relpath(value)}"
    return argument


def test_runs(dataset: Path, index: Path, dense_weight: float, out: Path) -> dict:
    runs = {}
    runs["bm25"] = run_eval(CONFIGS["bm25"], dataset, index, out / "scifact-bm25.json")
    extra = weights_override(dense_weight) if dense_weight != 0.5 else []
    runs["hybrid"] = run_eval(CONFIGS["hybrid"], dataset, index, out / "scifact-hybrid-test.json", *extra)
    runs["hybrid-rrf"] = run_eval(CONFIGS["hybrid-rrf"], dataset, index, out / "scifact-hybrid-rrf.json")
    return {
        name: {
            "command": run["command"],
            "wall_s": run["wall_s"],
            "table": run["table"],
            "first_stage": run["report"]["metrics"]["first_stage"],
            "arms": run["report"].get("arms", {}),
        }
        for name, run in runs.items()
    }


def latency(dataset: Path, index: Path, repeats: int = 1, precision: str | None = None) -> dict:
    from rag_pipeline import Pipeline
    from rag_pipeline.evaluation import eval_collection_name, load_beir

    test = load_beir(dataset, split="test")
    queries = list(test.queries.values())
    results = {}
    for label, overrides in (
        ("hybrid (convex)", {}),
        ("hybrid (rrf)", {"retriever.fusion.method": "rrf", "retriever.fusion.weights": {"dense": 1.0, "bm25": 1.0}}),
        ("dense alone", {"retriever.arms": ["dense"]}),
        ("bm25 alone", {"retriever.arms": ["bm25"]}),
    ):
        if precision is not None:  # the configs pin fp32; `auto` is what a user's pipeline runs
            overrides = {**overrides, "embeddings.precision": precision}
        pipe = Pipeline.from_yaml(CONFIGS["hybrid"], overrides={"vectorstore.persist_directory": str(index), **overrides})
        collection = eval_collection_name(pipe.config.vectorstore.collection, test)
        pipe = Pipeline.from_config(pipe.config, overrides={"vectorstore.collection": collection, "retriever.search": "ann"})
        retriever = pipe.as_retriever(k=10)
        for query in queries[:20]:  # warm-up: model loaded, index opened, BM25 matrices mapped
            retriever.invoke(query)
        times = []
        for _ in range(repeats):
            for query in queries:
                started = time.perf_counter()
                retriever.invoke(query)
                times.append(1000 * (time.perf_counter() - started))
        times.sort()
        results[label] = {
            "queries": len(times),
            "p50_ms": statistics.median(times),
            "p95_ms": times[int(0.95 * (len(times) - 1))],
            "mean_ms": statistics.fmean(times),
        }
        print(f"latency {label}: p50 {results[label]['p50_ms']:.1f} ms, p95 {results[label]['p95_ms']:.1f} ms", flush=True)
    # the query embedding alone (the last pipeline's model, already warm): its share of a dense query
    embed_times = []
    for query in queries:
        started = time.perf_counter()
        pipe.embeddings.embed_query(query)
        embed_times.append(1000 * (time.perf_counter() - started))
    embed_times.sort()
    results["query embedding only"] = {
        "queries": len(embed_times),
        "p50_ms": statistics.median(embed_times),
        "p95_ms": embed_times[int(0.95 * (len(embed_times) - 1))],
        "mean_ms": statistics.fmean(embed_times),
        "precision": pipe.embeddings.precision.name,
    }
    print(f"latency query embedding only: p50 {results['query embedding only']['p50_ms']:.1f} ms", flush=True)
    import torch

    results["torch_threads"] = torch.get_num_threads()
    results["load_average"] = os.getloadavg()[0]
    return results


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bm25_cost(dataset: Path) -> dict:
    from langchain_core.documents import Document

    from rag_pipeline.evaluation import load_beir
    from rag_pipeline.lexical.bm25 import BUILT_FOLDER, STORE_FILENAME, BM25Config, BM25Index

    documents = load_beir(dataset, split="test").documents()
    chunks = [Document(page_content=d.page_content, metadata=d.metadata, id=d.metadata["doc_id"]) for d in documents]
    work = Path(tempfile.mkdtemp(prefix="rag-bm25-"))
    try:
        index = BM25Index(BM25Config())
        index.place(work, "scifact")
        started = time.perf_counter()
        with index.writing():
            index.upsert_texts(chunks)
            stored = time.perf_counter()
        first = {"store_s": stored - started, "build_and_save_s": time.perf_counter() - stored}
        first["total_s"] = first["store_s"] + first["build_and_save_s"]
        size = {
            "matrices_bytes": folder_bytes(work / "scifact" / BUILT_FOLDER),
            "text_store_bytes": (work / "scifact" / STORE_FILENAME).stat().st_size,
        }
        in_memory = BM25Index(BM25Config())
        in_memory.place(None, "scifact")
        with in_memory.writing():  # the end of a write session builds the matrices; in memory, nothing is saved
            in_memory.upsert_texts(chunks)
            started = time.perf_counter()
        build_only = time.perf_counter() - started

        changed = [
            Document(page_content=c.page_content + " revised", metadata=c.metadata, id=c.id) for c in chunks[:: 100]
        ]
        started = time.perf_counter()
        with index.writing():
            index.upsert_texts(changed)
            stored = time.perf_counter()
        change = {
            "chunks_changed": len(changed),
            "store_s": stored - started,
            "rebuild_and_save_s": time.perf_counter() - stored,
        }
        change["total_s"] = change["store_s"] + change["rebuild_and_save_s"]

        reader = BM25Index(BM25Config())
        reader.place(work, "scifact")
        started = time.perf_counter()
        reader._current()  # what a reader's first search pays to memory-map the matrices; no public call does only this
        load_s = time.perf_counter() - started
        return {
            "chunks": len(chunks), "first_build": first, "build_in_memory_s": build_only, "size": size,
            "one_percent_change": change, "mmap_load_s": load_s,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(results: dict, command: str) -> str:
    lines = [
        "# Hybrid retrieval on SciFact (BEIR): BM25 + all-MiniLM-L6-v2",
        "",
        f"Produced by `{command}` (from the repository root). Text = title + \" \" + text, one chunk per abstract, "
        "dense arm exact search in evaluation, each arm 100 deep before fusion; BM25: bm25s, Lucene, k1 1.2, b 0.75, "
        "English Snowball stemmer and stopwords. Metrics x100 (pytrec_eval).",
        "",
        "Phases as last run (each merges into `scifact-hybrid.json`; the test runs' own `--json` reports are "
        "`scifact-bm25.json`, `scifact-hybrid-test.json`, `scifact-hybrid-rrf.json`):",
        "",
        *[f"    {command}" for phases, command in results.get("commands", {}).items()],
        "",
    ]
    sweep_result = results.get("sweep")
    if sweep_result:
        chosen = sweep_result["chosen_dense_weight"]
        lines += [
            f"## Convex weight, chosen on the train split ({sweep_result['queries']} queries; test never looked at)",
            "",
            "| dense weight (bm25 = 1 - w) | " + " | ".join(sweep_result["ndcg@10"]) + " |",
            "| --- |" + " ---: |" * len(sweep_result["ndcg@10"]),
            "| train nDCG@10 | " + " | ".join(f"{100 * v:.2f}" for v in sweep_result["ndcg@10"].values()) + " |",
            "",
            f"Chosen: dense {chosen}, bm25 {round(1 - chosen, 1)} (the best on train; ties go to the weight nearest 0.5).",
            "",
        ]
    test = results.get("test")
    if test:
        hybrid, rrf, bm25 = test["hybrid"], test["hybrid-rrf"], test["bm25"]
        lines += [
            "## Test split (300 queries), each config once",
            "",
            "| metric | BM25 alone (scifact-bm25) | dense arm | BM25 arm | convex hybrid (scifact-hybrid) | RRF hybrid (scifact-hybrid-rrf) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for metric in hybrid["first_stage"]:
            lines.append(
                f"| {metric} | {100 * bm25['first_stage'][metric]:.2f} | {100 * hybrid['arms']['dense'][metric]:.2f} | "
                f"{100 * hybrid['arms']['bm25'][metric]:.2f} | {100 * hybrid['first_stage'][metric]:.2f} | "
                f"{100 * rrf['first_stage'][metric]:.2f} |"
            )
        b, c, r = (100 * x["first_stage"]["ndcg@10"] for x in (bm25, hybrid, rrf))
        d, l = (100 * hybrid["arms"][arm]["ndcg@10"] for arm in ("dense", "bm25"))
        lines += [
            "",
            f"* BM25 alone: **{b:.2f}** against the published {PUBLISHED_BM25} (bm25s): "
            f"{'within' if abs(b - PUBLISHED_BM25) <= 1.0 else 'OUTSIDE'} ±1.0.",
            f"* RRF (k 60, equal weights): **{r:.2f}** ({'≥' if r >= 71.0 else 'below'} 71.0).",
            f"* Convex (train-chosen weight): **{c:.2f}** ({'≥' if c >= 73.0 else 'below'} 73.0), against its own arms in "
            f"the same run: dense {d:.2f} ({c - d:+.2f}), BM25 {l:.2f} ({c - l:+.2f}).",
            "",
            "Commands:",
            "",
            *[f"    {x['command']}" for x in (bm25, hybrid, rrf)],
            "",
        ]
    lat = results.get("latency")
    if lat:
        base = lat["dense alone"]["p50_ms"]
        lines += [
            "## Query latency, k 10, one query at a time (serving path: `as_retriever`, dense arm through Chroma's HNSW)",
            "",
            "| retriever | p50 ms | p95 ms | mean ms | p50 / dense alone |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, row in lat.items():
            if isinstance(row, dict):
                lines.append(
                    f"| {label} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['mean_ms']:.1f} | {row['p50_ms'] / base:.2f}x |"
                )
        lines += [
            "",
            f"{lat['hybrid (convex)']['queries']} test queries, after 20 warm-up queries; torch threads "
            f"{lat['torch_threads']}, load average {lat['load_average']:.2f} at the end (the machine is shared)"
            + (f"; query embedding in {lat['query embedding only']['precision']} (`precision: auto`)." if "query embedding only" in lat else "."),
            "",
        ]
    cost = results.get("bm25")
    if cost:
        first, change = cost["first_build"], cost["one_percent_change"]
        mib = 1024 * 1024
        lines += [
            f"## BM25 index: build, size, and a 1% change ({cost['chunks']} abstracts)",
            "",
            "| | seconds |",
            "| --- | ---: |",
            f"| first build: texts into the store | {first['store_s']:.2f} |",
            f"| first build: tokenize + stem + index + save (memory-mappable) | {first['build_and_save_s']:.2f} |",
            f"| build in memory only (tokenize + stem + index) | {cost['build_in_memory_s']:.2f} |",
            f"| 1% change ({change['chunks_changed']} abstracts edited): store write | {change['store_s']:.3f} |",
            f"| 1% change: rebuild + save | {change['rebuild_and_save_s']:.2f} |",
            f"| a reader's load (memory-mapped) | {cost['mmap_load_s']:.3f} |",
            "",
            f"Size on disk: matrices {cost['size']['matrices_bytes'] / mib:.1f} MiB, text store "
            f"{cost['size']['text_store_bytes'] / mib:.1f} MiB.",
            "",
            "Update strategy: rebuild on change from the text store. A 1% change costs "
            f"{change['total_s']:.2f} s against {first['total_s']:.2f} s for a first build "
            f"({change['total_s'] / first['total_s']:.2f}x): the rebuild is the whole cost, whatever the size of the "
            "change. Segments with tombstones would make a small change cheaper, but BM25's idf and average length "
            "are corpus-wide, so a segment's scores drift from a fresh build's until it is merged; the rebuild keeps "
            "every score equal to a from-scratch index (the crash tests compare them exactly), at about "
            f"{1000 * cost['build_in_memory_s'] / cost['chunks']:.2f} ms per chunk.",
            "",
        ]
    if results.get("defaults"):
        lines += [*hybrid_defaults.markdown(results["defaults"]), "", *PUBLISHED, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=harness.SCIFACT)
    parser.add_argument("--index", type=Path, default=harness.REPO / ".index" / "scifact-hybrid")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    parser.add_argument("--phases", default="sweep,test,latency,bm25")
    parser.add_argument("--precision", default=None, help="latency: embeddings.precision for the query embedder (default: the config's)")
    args = parser.parse_args()
    command = harness.command_line(__file__)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "scifact-hybrid.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    phases = args.phases.split(",")
    if "sweep" in phases:
        results["sweep"] = sweep(args.dataset, args.index)
    if "test" in phases:
        chosen = results.get("sweep", {}).get("chosen_dense_weight")
        if chosen is None:
            raise SystemExit("run the sweep phase first: the test run uses the weight chosen on train")
        results["test"] = test_runs(args.dataset, args.index, chosen, args.out)
    if "latency" in phases:
        results["latency"] = latency(args.dataset, args.index, precision=args.precision)
    if "bm25" in phases:
        results["bm25"] = bm25_cost(args.dataset)
    if "defaults" in phases:
        results["defaults"] = hybrid_defaults.measure(args.dataset, args.index, CONFIGS["hybrid"])
    if phases != ["report"]:  # `--phases report` only rewrites the Markdown from the JSON
        commands = results.setdefault("commands", {})
        for phase in phases:
            commands.pop(phase, None)
        commands[args.phases] = command
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = markdown(results, "python benchmarks/eval_hybrid.py --dataset ../shared/datasets/scifact")
    (args.out / "scifact-hybrid.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
