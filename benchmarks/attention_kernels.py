"""Why graph fusion: CPU attention kernels, and whole-encoder variants, side by side in one process.

    python benchmarks/attention_kernels.py --dataset ../shared/datasets/scifact

1. One attention op at MiniLM's shape for a batch of 32 x 256 tokens (12 heads of 32), best of 5:
   PyTorch's fused CPU kernel (``scaled_dot_product_attention``) in bf16 and fp32, with and
   without a padding mask; its math backend; the same ops written out (matmul, softmax, matmul);
   and ``flex_attention`` compiled by inductor.
2. all-MiniLM-L6-v2 in bf16 encoding the first ``--docs`` SciFact abstracts (batch 32, 256
   tokens), rounds alternating between: eager with SDPA (sentence-transformers as loaded), eager
   with the written-out attention, ``torch.compile`` with freezing, and the library's oneDNN
   Graph fusion (``rag_pipeline.models.graph_fusion``). Compile and trace times are reported.
3. The fused graph's cost per new input shape: each shape's first three calls against its
   steady rate and against eager SDPA at that shape.

The run goes on top of ``benchmarks/results/attention-kernels.{md,json}`` (the run it replaces
moves to the page's history).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import harness


def best_ms(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return 1000 * min(times)


def attention_ops() -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, heads, length, head_dim = 32, 12, 256, 32
    gflop = 4 * batch * heads * length * length * head_dim / 1e9
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(200, length + 1, (batch,), generator=generator)
    keep = torch.arange(length)[None, :] < lengths[:, None]
    results = {"shape": [batch, heads, length, head_dim], "gflop_per_call": gflop, "ms": {}}
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        q, k, v = (torch.randn(batch, heads, length, head_dim, generator=generator).to(dtype) for _ in range(3))
        additive = torch.zeros(batch, 1, 1, length, dtype=dtype).masked_fill(~keep[:, None, None, :], float("-inf"))

        def written_out():
            scores = torch.matmul(q, k.transpose(-1, -2)) * head_dim**-0.5 + additive
            return torch.matmul(torch.softmax(scores, -1, dtype=torch.float32).to(dtype), v)

        def math_backend():
            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=additive)

        with torch.inference_mode():
            results["ms"][f"sdpa {name}, no mask"] = best_ms(lambda: F.scaled_dot_product_attention(q, k, v))
            results["ms"][f"sdpa {name}, padding mask"] = best_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=additive))
            results["ms"][f"sdpa math backend {name}, padding mask"] = best_ms(math_backend)
            results["ms"][f"written out (matmul, softmax, matmul) {name}"] = best_ms(written_out)
            if dtype == torch.bfloat16:
                block_mask = create_block_mask(lambda b, h, qi, kv: kv < lengths[b], batch, None, length, length, device="cpu")
                compiled = torch.compile(flex_attention)
                tick = time.perf_counter()
                compiled(q, k, v, block_mask=block_mask)
                results["flex_compile_s"] = time.perf_counter() - tick
                results["ms"][f"flex_attention compiled {name}, padding mask"] = best_ms(lambda: compiled(q, k, v, block_mask=block_mask))
    results["gflops"] = {label: gflop / (ms / 1000) for label, ms in results["ms"].items()}
    return results


def encoder_variants(texts: list[str], rounds: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from rag_pipeline.models.graph_fusion import FusedForward, fuse_for_cpu

    path = str(harness.minilm_path())

    def load(attention: str = "sdpa"):
        model = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": torch.bfloat16, "attn_implementation": attention})
        model.max_seq_length = 256
        return model.eval()

    def encode(model):
        with torch.inference_mode():
            return model.encode(texts, batch_size=32, convert_to_numpy=True)

    variants, setup_s = {}, {}
    variants["eager, SDPA (as loaded)"] = load()
    variants["eager, written-out attention"] = load("eager")
    compiled = load()
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    tick = time.perf_counter()
    compiled[0].model = torch.compile(compiled[0].model, dynamic=True)
    encode(compiled)  # compiles
    setup_s["torch.compile (freezing, dynamic shapes)"] = time.perf_counter() - tick
    variants["torch.compile (freezing, dynamic shapes)"] = compiled
    fused = load()
    fuse_for_cpu(fused, device="cpu", dtype="bfloat16")
    tick = time.perf_counter()
    encode(fused)  # traces, then profiles and compiles each shape of this corpus once
    setup_s["oneDNN Graph fusion (this library)"] = time.perf_counter() - tick
    variants["oneDNN Graph fusion (this library)"] = fused
    assert isinstance(fused[0].model.forward, FusedForward) and fused[0].model.forward.fused_calls > 0

    reference = encode(variants["eager, SDPA (as loaded)"]).astype("float32")
    chunks_per_s: dict[str, list[float]] = {name: [] for name in variants}
    agreement = {}
    for _ in range(rounds):
        for name, model in variants.items():
            tick = time.perf_counter()
            vectors = encode(model)
            chunks_per_s[name].append(len(texts) / (time.perf_counter() - tick))
            a = vectors.astype("float32")
            agreement[name] = float(((a * reference).sum(1) / (
                (a * a).sum(1) ** 0.5 * (reference * reference).sum(1) ** 0.5)).min())
    return {"docs": len(texts), "rounds": rounds, "chunks_per_s": chunks_per_s, "setup_s": setup_s,
            "min_cosine_to_eager_sdpa": agreement}


def shape_warmup() -> dict:
    """First calls at each new shape of the fused graph, against eager SDPA at that shape."""
    import torch
    from transformers import AutoModel

    from rag_pipeline.models.graph_fusion import FusedForward

    path = str(harness.minilm_path())
    model = AutoModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    eager = AutoModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    model.forward = FusedForward(model)
    generator = torch.Generator().manual_seed(0)
    shapes = {}
    with torch.inference_mode():
        for batch, length in ((32, 256), (32, 224), (32, 192), (32, 128), (8, 128)):
            ids = torch.randint(1000, 20000, (batch, length), generator=generator)
            mask = torch.ones(batch, length, dtype=torch.long)
            calls = []
            for _ in range(5):
                tick = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                calls.append(1000 * (time.perf_counter() - tick))
            shapes[f"{batch}x{length}"] = {
                "fused_calls_ms": calls,
                "eager_sdpa_ms": best_ms(lambda: eager(input_ids=ids, attention_mask=mask), n=3),
            }
    return shapes


def render(r: dict) -> str:
    ops, enc = r["attention_ops"], r["encoder"]
    lines = [
        "# CPU attention kernels and whole-encoder variants",
        "",
        f"Produced by `{r['command']}` (from the repository root) on {r['date']}, {r['threads']} threads, "
        f"load average {r['load_before']:.1f} before, {r['load_after']:.1f} after.",
        "",
        f"## 1. One attention op, batch {ops['shape'][0]} x {ops['shape'][1]} heads x {ops['shape'][2]} tokens x head size "
        f"{ops['shape'][3]} ({ops['gflop_per_call']:.2f} GFLOP), best of 5",
        "",
        "| kernel | ms | GFLOP/s |",
        "| --- | ---: | ---: |",
    ]
    for label, ms in ops["ms"].items():
        lines.append(f"| {label} | {ms:.1f} | {ops['gflops'][label]:.0f} |")
    lines += [
        "",
        f"(flex_attention's compile: {ops['flex_compile_s']:.1f} s.) The fused SDPA kernel runs at the same rate in bf16 as in "
        "fp32: it does not use the bf16 matrix instructions. Written out, attention is slower still (each op "
        "goes through memory).",
        "",
        f"## 2. all-MiniLM-L6-v2, bf16, {enc['docs']} SciFact abstracts (batch 32, 256 tokens), {enc['rounds']} alternating rounds",
        "",
        "| variant | chunks/s (best) | all rounds | vs eager SDPA | setup s (first encode, incl. compile/trace) | min cosine to eager SDPA |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    base = max(enc["chunks_per_s"]["eager, SDPA (as loaded)"])
    for name, values in enc["chunks_per_s"].items():
        setup = enc["setup_s"].get(name)
        lines.append(f"| {name} | {max(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} | {max(values) / base:.2f}x | "
                     f"{'' if setup is None else f'{setup:.1f}'} | {enc['min_cosine_to_eager_sdpa'][name]:.5f} |")
    lines += [
        "",
        "## 3. The fused graph per new input shape: its first five calls against eager SDPA",
        "",
        "The graph runs a batch in pieces of 8 rows (`ROWS`). At a new shape, the first piece runs TorchScript's profiling "
        "pass (unfused attention, about twice the steady time) and the second compiles oneDNN Graph's kernels for it; the "
        "rest run at the steady rate. So a 32-row batch absorbs a new shape's warm-up within its first call. Shapes are "
        "padded to multiples of 32 tokens (`PAD_TO`) so a sorted corpus meets few of them. The first row's first call also "
        "traces the model and checks the graph against eager (the first batch a model ever fuses).",
        "",
        "| shape | fused calls ms (1st ... 5th) | eager SDPA ms | steady fused vs eager |",
        "| --- | --- | ---: | ---: |",
    ]
    for shape, x in r["shapes"].items():
        steady = statistics.median(x["fused_calls_ms"][2:])
        lines.append(f"| {shape} | {', '.join(f'{v:.0f}' for v in x['fused_calls_ms'])} | {x['eager_sdpa_ms']:.0f} | "
                     f"{x['eager_sdpa_ms'] / steady:.2f}x |")
    lines += ["", "Raw numbers: `attention-kernels.json` beside this file (earlier runs: `attention-kernels-history.json`).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=harness.SCIFACT)
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--name", default=None, help="label of this run in results/attention-kernels.md (default: the date)")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    command = harness.command_line(__file__)
    texts = []
    with (args.dataset / "corpus.jsonl").open(encoding="utf-8") as corpus:
        for line in corpus:
            doc = json.loads(line)
            texts.append(f"{doc.get('title', '')} {doc['text']}".strip())
            if len(texts) == args.docs:
                break
    load_before = os.getloadavg()[0]
    results = {"command": command, "date": harness.utc_now(), "threads": args.threads, "load_before": load_before,
               "name": args.name}
    results["attention_ops"] = attention_ops()
    print(json.dumps(results["attention_ops"]["ms"], indent=1), flush=True)
    results["encoder"] = encoder_variants(texts, args.rounds)
    print(json.dumps(results["encoder"]["chunks_per_s"], indent=1), flush=True)
    results["shapes"] = shape_warmup()
    results["load_after"] = os.getloadavg()[0]
    harness.record_run("attention-kernels", harness.run_label(args.name), markdown=render(results), data=results, results=args.out)
    print(render(results))


if __name__ == "__main__":
    main()
