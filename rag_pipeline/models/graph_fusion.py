"""oneDNN Graph fusion of a transformer encoder on the CPU: attention in one kernel.

Why: in bf16 on a CPU with AVX512-BF16, oneDNN runs the linear layers near the matrix ceiling,
but PyTorch's fused CPU attention (``scaled_dot_product_attention``) runs at ~100 GFLOP/s in
bf16 and fp32 alike. So attention, 10% of MiniLM's FLOPs at 256 tokens, took 45% of the time.
Traced with TorchScript and frozen, the eager attention's ops (matmul, scale, mask, softmax,
matmul) become one oneDNN Graph partition, and the layer norms and GELUs are fused around the
linears. Encoding then runs 1.6x faster in bf16 and 2x in fp32 (``benchmarks/results/precision.md``).
``torch.compile`` with freezing gained only 1.2x here: inductor leaves attention to the same
slow kernel.

How: the Hugging Face model inside a sentence-transformers ``Transformer`` module keeps its
weights and its eager ``forward``. Its instance ``forward`` becomes a :class:`FusedForward`.
On the first batch worth fusing, it traces the model (eager attention) on a corner of that batch,
freezes it, and checks the graph against the eager model on a corner of another shape. From then
on the graph answers. Anything it was not traced for runs eagerly, as before: hidden states asked
for, other inputs, gradients, small batches. A trace that fails or disagrees, or a graph that
fails or disagrees later, switches fusion off for that model with one warning. No result is
served from a graph that did not pass the checks.

The checks cover padding. A sorted batch starts with its longest rows, which have no padding, so
the corners the trace and its check take are given padding of their own (later rows keep half,
then a quarter of the tokens): a graph that traced away the attention mask (a library that skips
an all-ones mask while tracing, say) disagrees there. And the first ``CHECKED_CALLS_PER_SHAPE``
calls of the graph at each new piece shape (the profiling run, then the first run of the
compiled kernels) are compared with eager on two of their rows, the first and the last (the most
padded in a sorted batch): each costs an eager run of two rows, paid only while a shape is new.
Token states are compared as directions (cosine per row, over the tokens the mask keeps: what
pooling reads), scores (``logits``) as numbers, since a reranker ranks by their values; either
must reach ``AGREEMENT``.

The graph is compiled per input shape: a new shape's first call is TorchScript's profiling pass
(attention unfused, about twice the steady time), its second compiles oneDNN's kernels. Two
things keep that cost down. Sequence lengths are padded up to a multiple of ``PAD_TO`` (the
outputs are cut back), so a sorted corpus meets a handful of lengths. And batches run in pieces
of ``ROWS`` rows, which cost the same per row but a quarter as much to warm up.

``RAG_PIPELINE_GRAPH_FUSION=0`` switches it off for the process (to compare, or to rule it out).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any

logger = logging.getLogger(__name__)

GRAPH_FUSION_ENV = "RAG_PIPELINE_GRAPH_FUSION"
PAD_TO = 32
TRACE_LENGTH = PAD_TO // 2  # the trace's example is 2 rows of this many tokens; the check's, 3 rows of twice it
# The graph runs batches in pieces of this many rows.
# Per row, 8 rows run as fast as 32 (8.4 vs 8.8 ms at 256 tokens), but each new shape's first two
# calls (profiling, then compiling) cost a quarter as much: 0.14 s instead of 0.58 s over steady.
ROWS = 8
# Batches smaller than this many tokens (batch x padded length) run eagerly: a query is one short
# sequence, where a new shape's compile would cost more than fusion ever saves on it.
MIN_TOKENS = 1024
AGREEMENT = 0.999  # lowest agreement (cosine, or its equivalent for scores) between graph and eager accepted
# A new piece shape's first calls are checked against eager: the profiling run and the first run
# of the kernels compiled for that shape.
CHECKED_CALLS_PER_SHAPE = 2
_FUSABLE_DTYPES = ("bfloat16", "float32")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Output fields a Transformer module reads: the token states (cut back to the unpadded length),
# a pooled state, a classification head's logits.
_OUTPUTS = ("last_hidden_state", "pooler_output", "logits")


def graph_fusion_enabled() -> bool:
    return os.environ.get(GRAPH_FUSION_ENV, "").strip() != "0"


def fuse_for_cpu(model: Any, *, device: str, dtype: str, eager_calls_first: int = 0) -> bool:
    """Give each Hugging Face encoder inside a sentence-transformers model (bi- or cross-encoder) a
    :class:`FusedForward`. Returns whether any was installed; a model this does not apply to
    (not on the CPU, fp16/int8, no Transformer module, fusion switched off) is left as it was.

    ``eager_calls_first``: batches worth fusing that still run eagerly before the trace. The first
    graph call at a new shape costs more than an eager one (trace, then a profiling run), so a
    process that reranks once (``rag-pipeline query``) is faster without the graph; the reranker
    waits one call, the embedder (which ingests in many batches) none."""
    if device != "cpu" or dtype not in _FUSABLE_DTYPES or not graph_fusion_enabled():
        return False
    installed = False
    for module in _transformer_modules(model):
        hf_model = getattr(module, "model", None)
        if hf_model is None or isinstance(getattr(hf_model, "forward", None), FusedForward):
            continue
        if not _is_encoder(hf_model):
            continue
        hf_model.forward = FusedForward(hf_model, eager_calls_first=eager_calls_first)
        installed = True
    return installed


def _transformer_modules(model: Any) -> list[Any]:
    try:
        from sentence_transformers.models import Transformer
    except ImportError:  # pragma: no cover - sentence-transformers is a core dependency
        return []
    modules = getattr(model, "modules", None)
    if not callable(modules):
        return []
    return [m for m in modules() if isinstance(m, Transformer)]


def _is_encoder(hf_model: Any) -> bool:
    """Bidirectional text encoders with an eager attention to switch to (BERT, XLM-R, ...)."""
    config = getattr(hf_model, "config", None)
    if config is None or getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return False
    return hasattr(hf_model, "set_attn_implementation") and getattr(config, "pad_token_id", None) is not None


class GraphDisagreesWithEager(RuntimeError):
    """The graph's answer on a checked call is not the eager model's: fusion goes off."""


class FusedForward:
    """Stands in for a Hugging Face model's ``forward``; see the module docstring."""

    def __init__(self, hf_model: Any, *, eager_calls_first: int = 0) -> None:
        self._model = hf_model
        self._eager_calls_left = eager_calls_first
        self._eager = hf_model.forward  # the bound method, whatever attention the model was loaded with
        self._pad_id = int(hf_model.config.pad_token_id)
        self._graphs: dict[tuple[str, ...], Any] = {}  # input names -> traced graph and its outputs
        # (input names, piece shape) -> graph calls at that shape so far, up to CHECKED_CALLS_PER_SHAPE
        self._calls_at_shape: dict[tuple[tuple[str, ...], tuple[int, ...]], int] = {}
        self._lock = threading.Lock()
        self.disabled_because: str | None = None
        self.fused_calls = 0  # batches answered by the graph

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inputs = self._fusable_inputs(args, kwargs)
        if inputs is None:
            return self._eager(*args, **kwargs)
        names = tuple(inputs)
        graph = self._graphs.get(names)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(names)
                if graph is None:
                    if self.disabled_because is not None or self._eager_calls_left > 0:
                        self._eager_calls_left -= 1
                        return self._eager(*args, **kwargs)
                    return self._trace(inputs, args, kwargs)
        if graph is False:
            return self._eager(*args, **kwargs)
        try:
            answer = self._run(graph, inputs)
            self.fused_calls += 1
            return answer
        except RuntimeError as exc:  # a shape or input the graph cannot take, or a wrong answer: eager from now on
            with self._lock:
                self._disable(names, exc)
            return self._eager(*args, **kwargs)

    def _fusable_inputs(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        import torch

        if args or self.disabled_because is not None or torch.is_grad_enabled():
            # A frozen graph has no backward: training and anything else that wants gradients runs eagerly.
            return None
        extra = {k: v for k, v in kwargs.items() if k not in _INPUTS and v is not None}
        if any(k != "return_dict" for k in extra) or extra.get("return_dict", True) is not True:
            return None  # hidden states, attentions, position ids ...: not what the graph was traced for
        inputs = {k: kwargs[k] for k in _INPUTS if kwargs.get(k) is not None}
        ids = inputs.get("input_ids")
        if ids is None or "attention_mask" not in inputs or ids.dim() != 2:
            return None
        if ids.shape[0] * _padded_length(ids.shape[1]) < MIN_TOKENS:
            return None
        return inputs

    def _padded(self, inputs: dict[str, Any]) -> tuple[list[Any], int]:
        import torch.nn.functional as F

        length = inputs["input_ids"].shape[1]
        extra = _padded_length(length) - length
        values = []
        for name, tensor in inputs.items():
            fill = self._pad_id if name == "input_ids" else 0
            values.append(F.pad(tensor, (0, extra), value=fill) if extra else tensor)
        return values, length

    def _trace(self, inputs: dict[str, Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        """Trace on a corner of this batch, check the graph against eager on another corner of a
        different shape (a trace that had baked one shape in would show it there), both with
        padded rows (a trace that had lost the attention mask would show it there), then answer
        the batch with the graph. Tracing and checking on a few short rows costs ~0.3 s for
        MiniLM; on the whole batch it cost ~1.5 s more (benchmarks/results/precision.md)."""
        names = tuple(inputs)
        values, _ = self._padded(inputs)
        trace_example = self._with_padding(names, [v[:2, :TRACE_LENGTH] for v in values])
        check_example = dict(zip(names, self._with_padding(names, [v[:3, : 2 * TRACE_LENGTH] for v in values])))
        try:
            graph = self._build(names, trace_example)
            reference = self._eager(**check_example, return_dict=True)
            outputs = tuple(name for name in _OUTPUTS if _field(reference, name) is not None)
            graph = (graph, outputs)
            fused = self._run(graph, check_example, check_new_shapes=False)  # compared here, in full
            _check_agreement(fused, reference, outputs, check_example["attention_mask"], "on the trace's check")
            answer = self._run(graph, inputs)
            self.fused_calls += 1
        except Exception as exc:  # noqa: BLE001 - any failure means: stay eager, and say so once
            self._disable(names, exc)
            return self._eager(*args, **kwargs)
        self._graphs[names] = graph
        logger.debug("oneDNN Graph fusion on for %s (inputs %s)", type(self._model).__name__, names)
        return answer

    def _with_padding(self, names: tuple[str, ...], values: list[Any]) -> list[Any]:
        """The rows after the first keep half, then a quarter ... of their tokens, the rest made
        padding (pad id, mask 0): an example whose attention mask matters."""
        import torch

        rows, length = values[0].shape
        keep = torch.tensor([length] + [max(1, length >> row) for row in range(1, rows)])
        padding = torch.arange(length).unsqueeze(0) >= keep.unsqueeze(1)
        padded = []
        for name, tensor in zip(names, values):
            fill = self._pad_id if name == "input_ids" else 0
            padded.append(tensor.masked_fill(padding, fill))
        return padded

    def _check_piece(self, names: tuple[str, ...], piece: list[Any], answer: tuple, outputs: tuple[str, ...]) -> None:
        """Compare the graph's answer for one piece with eager on a few of its rows: the first, and
        the last (in a sorted batch the shortest, so the most padded)."""
        rows = piece[0].shape[0]
        picked = sorted({0, rows - 1})
        example = {name: value[picked] for name, value in zip(names, piece)}
        reference = self._eager(**example, return_dict=True)
        fused = {name: answer[i][picked] for i, name in enumerate(outputs)}
        # scores are judged against the scale of the whole piece's scores, not just the rows compared
        score_scale = _largest_row(answer[outputs.index("logits")]) if "logits" in outputs else 0.0
        _check_agreement(fused, reference, outputs, example["attention_mask"], f"at {rows}x{piece[0].shape[1]} tokens",
                         score_scale=score_scale)

    def _disable(self, names: tuple[str, ...], exc: Exception) -> None:
        self._graphs[names] = False
        if self.disabled_because is not None:  # another thread's call saw it first, and said so
            return
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        self.disabled_because = f"{type(exc).__name__}: {message}"
        logger.warning("oneDNN Graph fusion off for %s (%s); running it eagerly",
                       type(self._model).__name__, self.disabled_because)

    def _build(self, names: tuple[str, ...], example: list[Any]) -> Any:
        import torch

        model = self._model
        eager_forward = self._eager

        class Traced(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, *values):
                out = eager_forward(**dict(zip(names, values)), return_dict=True)
                return tuple(_field(out, name) for name in _OUTPUTS if _field(out, name) is not None)

        previous = _attention_implementation(model)
        torch.jit.enable_onednn_fusion(True)
        try:
            # Eager attention is what oneDNN Graph pattern-matches into one fused partition; SDPA
            # would stay a single opaque (and, on CPU, slow) op in the graph.
            model.set_attn_implementation("eager")
            with torch.no_grad(), warnings.catch_warnings():
                # The tracer warns about every Python-level shape check in the model's code; the
                # check against eager below is what decides whether the trace is right.
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(Traced().eval(), tuple(example), strict=False, check_trace=False)
                return torch.jit.freeze(traced)
        finally:
            model.set_attn_implementation(previous)

    def _run(self, graph: Any, inputs: dict[str, Any], *, check_new_shapes: bool = True) -> Any:
        import torch
        from transformers.modeling_outputs import ModelOutput

        traced, outputs = graph
        names = tuple(inputs)
        values, length = self._padded(inputs)
        pieces: list[tuple] = []
        with torch.no_grad():
            for start in range(0, values[0].shape[0], ROWS):
                # A last piece of fewer rows runs at its own shape: filling it up with padding rows
                # would cost compute on every call (20 reranker candidates are 8 + 8 + 4).
                piece = [v[start : start + ROWS] for v in values]
                answer = traced(*piece)
                if check_new_shapes:
                    shape = (names, tuple(piece[0].shape))
                    calls = self._calls_at_shape.get(shape, 0)
                    if calls < CHECKED_CALLS_PER_SHAPE:
                        self._check_piece(names, piece, answer, outputs)
                        self._calls_at_shape[shape] = calls + 1
                pieces.append(answer)
        fields = {}
        for i, name in enumerate(outputs):
            value = torch.cat([piece[i] for piece in pieces])
            fields[name] = value[:, :length] if name == "last_hidden_state" else value
        return ModelOutput(fields)


def _padded_length(length: int) -> int:
    return -(-length // PAD_TO) * PAD_TO


def _field(output: Any, name: str) -> Any:
    try:
        return output[name]
    except (KeyError, TypeError, IndexError):
        return getattr(output, name, None)


def _attention_implementation(model: Any) -> str:
    return getattr(model.config, "_attn_implementation", None) or "sdpa"


def _check_agreement(
    fused: Any, reference: Any, outputs: tuple[str, ...], mask: Any, where: str, *, score_scale: float = 0.0
) -> None:
    """Raise :class:`GraphDisagreesWithEager` when an output of the graph is not eager's."""
    for name in outputs:
        ours, theirs = _field(fused, name), _field(reference, name)
        if name == "last_hidden_state":
            # the states of padding tokens are read by nothing (pooling follows the mask)
            keep = mask[:, : theirs.shape[1]].unsqueeze(-1).to(theirs.dtype)
            ours, theirs = ours[:, : theirs.shape[1]] * keep, theirs * keep
        agreement = _score_agreement(ours, theirs, score_scale) if name == "logits" else _min_cosine(ours, theirs)
        if not agreement >= AGREEMENT:  # (NaN fails too)
            raise GraphDisagreesWithEager(f"{name} differs from eager {where} (agreement {agreement:.4f} < {AGREEMENT})")


def _min_cosine(a: Any, b: Any) -> float:
    import torch

    a = a.float().reshape(a.shape[0], -1)
    b = b.float().reshape(b.shape[0], -1)
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).min().item()


def _score_agreement(a: Any, b: Any, scale: float = 0.0) -> float:
    """Scores compared as numbers (a cosine of one score a row would only compare signs): the
    largest error relative to the scores' scale, as ``1 - error**2 / 2``, which is the cosine of
    two equally long vectors at that relative error. The scale is the largest score among these
    rows and ``scale`` (a batch's largest), so that a score near 0 is not judged against itself;
    a batch whose scores are all near 0 may still be refused, which costs speed, never results."""
    a = a.float().reshape(a.shape[0], -1)
    b = b.float().reshape(b.shape[0], -1)
    scale = max(_largest_row(b), scale)
    error = (a - b).norm(dim=1).max().item()
    if error == 0.0:
        return 1.0
    relative = error / scale if scale > 0 else float("inf")
    return 1.0 - relative * relative / 2


def _largest_row(values: Any) -> float:
    return values.float().reshape(values.shape[0], -1).norm(dim=1).max().item()
