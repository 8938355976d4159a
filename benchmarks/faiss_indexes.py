"""FAISS index factories side by side: recall@10 against Flat, query p50, memory and build time.

    python benchmarks/faiss_indexes.py synthetic --n 1000000          # 1M clustered 384-d vectors
    python benchmarks/faiss_indexes.py scifact --dataset ../shared/datasets/scifact

``synthetic`` measures FAISS itself with the factory strings, metric and vector preparation that
``vectorstore.type: faiss`` uses (inner product on unit vectors = cosine): the store's SQLite chunk
table is not in these numbers (it is the same for every factory). The vectors are a mixture of 1,000
Gaussian clusters (uniform random vectors in 384-d have no neighbours worth finding). Ground truth is
Flat's exact top-10; recall@10 = |ANN top-10 ∩ exact top-10| / 10, averaged over the queries.

``scifact`` runs the product: ``evaluate()`` on SciFact with ``vectorstore.type: faiss`` and
``retriever.search: ann``, once per factory over one index folder (the first run embeds, the others
rebuild the index from the stored vectors), and reports nDCG@10 and recall@10 against Flat's run.

Each puts its run in ``benchmarks/results/faiss-<mode>.json`` (the run it replaces moves to
``faiss-<mode>-history.json``); ``faiss-indexes.md`` is written by hand from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from harness import rss_mib


def clustered(rng, n: int, centers: np.ndarray, spread: float = 0.6, block: int = 100_000) -> np.ndarray:
    import faiss

    out = np.empty((n, centers.shape[1]), dtype=np.float32)
    for start in range(0, n, block):
        size = min(block, n - start)
        part = centers[rng.integers(0, len(centers), size)] + spread * rng.standard_normal((size, centers.shape[1]), dtype=np.float32)
        faiss.normalize_L2(part)
        out[start : start + size] = part
    return out


def p50_ms(index, queries: np.ndarray, k: int = 10) -> float:
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search(q[None, :], k)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(found, truth)]))


def synthetic(args) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1000, args.dim), dtype=np.float32)
    started = time.perf_counter()
    data = clustered(rng, args.n, centers)
    queries = clustered(rng, args.queries, centers)
    generated = time.perf_counter() - started
    rows = []

    def measure(name: str, factory: str, settings: list[tuple[str, int | None]]):
        before = rss_mib()
        started = time.perf_counter()
        index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
        trained_on = 0
        if not index.is_trained:
            sample = data[rng.choice(args.n, size=min(args.train_size, args.n), replace=False)]
            index.train(sample)
            trained_on = len(sample)
        train_s = time.perf_counter() - started
        index.add(data)
        build_s = time.perf_counter() - started
        size = len(faiss.serialize_index(index))
        grown = rss_mib() - before
        for parameter, value in settings:
            if parameter is not None:
                faiss.ParameterSpace().set_index_parameter(index, parameter, value)
            _, found = index.search(queries, 10)
            rows.append({
                "factory": factory, "search": f"{parameter}={value}" if parameter else "exact",
                "recall@10": recall_at_10(found, truth) if truth is not None else 1.0,
                "p50_ms": p50_ms(index, queries[: args.latency_queries]),
                "index_mib": size / 2**20, "bytes_per_vector": size / args.n, "rss_growth_mib": grown,
                "train_s": train_s, "build_s": build_s, "trained_on": trained_on,
            })
            print(json.dumps(rows[-1]), flush=True)
        return index

    truth = None
    flat = measure("Flat", "Flat", [(None, None)])
    _, truth = flat.search(queries, 10)
    rows[-1]["recall@10"] = 1.0
    del flat
    measure("IVF-PQ", "IVF1024,PQ48", [("nprobe", 8), ("nprobe", 32)])
    measure("HNSW", "HNSW32", [("efSearch", 64), ("efSearch", 256)])
    return {
        "command": harness.command_line(__file__), "date": harness.utc_now(), "n": args.n, "dim": args.dim, "queries": args.queries,
        "latency_queries": args.latency_queries, "threads": args.threads, "generate_s": generated,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0], "platform": platform.platform()},
        "faiss": faiss.__version__, "rows": rows,
    }


def scifact(args) -> dict:
    import faiss

    from rag_pipeline import Pipeline, load_config
    from rag_pipeline.evaluation import eval_collection_name, evaluate, load_beir

    faiss.omp_set_num_threads(args.threads)
    dataset = load_beir(Path(args.dataset))
    folder = Path(args.index or tempfile.mkdtemp(prefix="faiss-scifact-"))
    settings = [("Flat", {}), ("HNSW32", {"ef_search": 64}), ("HNSW32", {"ef_search": 256}),
                ("IVF64,PQ48x4", {"nprobe": 8}), ("IVF64,PQ48x4", {"nprobe": 32}),
                ("IVF64,PQ48x4", {"nprobe": 32, "refine_factor": 10}), ("IVF1024,PQ48", {"nprobe": 32})]
    rows, flat_runs = [], None
    for factory, extra in settings:
        overrides = {
            "vectorstore.type": "faiss", "vectorstore.persist_directory": str(folder),
            "vectorstore.index_factory": factory, "retriever.search": "ann", "embeddings.show_progress": False,
            **{f"vectorstore.{key}": value for key, value in extra.items()},
        }
        config = load_config(harness.REPO / "configs" / "scifact-dense.yaml", overrides)
        started = time.perf_counter()
        result = evaluate(config, dataset, search="ann", show_progress=False)  # the FAISS index, not exact scoring
        wall = time.perf_counter() - started
        runs = result.runs["first_stage"]
        if flat_runs is None:
            flat_runs = runs
        recall = float(np.mean([len(set(_top10(runs[q])) & set(_top10(flat_runs[q]))) / 10 for q in flat_runs]))
        eval_collection = eval_collection_name(config.vectorstore.collection, dataset)
        pipe = Pipeline.from_config(config, overrides={"vectorstore.collection": eval_collection})
        store = pipe.store
        queries = pipe.embeddings.embed_queries(list(dataset.queries.values())[: args.latency_queries])
        # The served FAISS index and whether it is trained: the store has no public call for these yet.
        index = store._current_index(store._table())
        p50 = statistics.median(
            _timed(lambda q=q: store.search_batch(q[None, :], 10)) for q in queries
        )
        rows.append({
            "factory": factory, "search": ", ".join(f"{k}={v}" for k, v in extra.items()) or "exact",
            "ndcg@10": result.metrics["first_stage"]["ndcg@10"], "recall@10_vs_flat": recall,
            "p50_ms_store_search": p50, "index_mib": len(faiss.serialize_index(index)) / 2**20,
            "trained": not store._exact, "vectors": index.ntotal, "eval_wall_s": wall,
            "index_s": result.timings.get("index"),
        })
        print(json.dumps(rows[-1]), flush=True)
    return {
        "command": harness.command_line(__file__), "date": harness.utc_now(), "dataset": str(args.dataset), "queries": len(dataset.queries),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0]}, "faiss": faiss.__version__,
        "rows": rows,
    }


def _top10(run: dict[str, float]) -> list[str]:
    return sorted(run, key=lambda doc: (-run[doc], doc))[:10]


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--dim", type=int, default=384)
    s.add_argument("--queries", type=int, default=200)
    s.add_argument("--latency-queries", type=int, default=100)
    s.add_argument("--train-size", type=int, default=50_000)
    s.add_argument("--threads", type=int, default=1)
    f = sub.add_parser("scifact")
    f.add_argument("--dataset", required=True)
    f.add_argument("--index", help="index folder to reuse (default: a fresh temporary one)")
    f.add_argument("--latency-queries", type=int, default=100)
    f.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    payload = synthetic(args) if args.mode == "synthetic" else scifact(args)
    payload["peak_rss_mib"] = harness.peak_rss_mib()
    harness.record_run(f"faiss-{args.mode}", harness.run_label(), data=payload)
    print(f"wrote {harness.RESULTS / f'faiss-{args.mode}.json'}")


if __name__ == "__main__":
    main()
