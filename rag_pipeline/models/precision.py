"""Device and precision, decided from the config alone.

The embedder and the reranker both ask for a ``Precision`` before loading. Because it is worked
out from the configured ``device``/``precision`` (whether a GPU is present, whether the CPU has
native bf16 matrix instructions), the embedding cache key and the handle cache know the precision
without reading it back from loaded weights, which the int8 ONNX Runtime backend does not have.

``precision: auto`` picks the fastest precision whose vectors stay interchangeable with fp32:
fp16 on a GPU; bf16 on a CPU with bf16 matrix instructions (AVX512-BF16 or AMX), where oneDNN runs
bf16 GEMMs several times faster than fp32 (benchmarks/results/precision.md); fp32 elsewhere, where
bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, field_validator, model_validator

from ..errors import ConfigError

logger = logging.getLogger(__name__)

PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16", "int8"]
DType = Literal["auto", "float32", "float16", "bfloat16"]  # the older ``dtype`` key's values

# ``dtype`` (the old key) and torch's names are accepted wherever a precision is.
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_BF16_ENV = "RAG_PIPELINE_CPU_BF16"


@dataclass(frozen=True)
class Precision:
    device: str  # "cpu", "cuda", "cuda:1", "mps", ...
    # torch's name for the weights' dtype, or "int8" for the ONNX Runtime backend. This (not the
    # short name) goes into the embedding cache key, so caches written before ``precision`` existed
    # stay valid.
    dtype: Literal["float32", "float16", "bfloat16", "int8"]
    reason: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return {v: k for k, v in _TORCH_NAMES.items()}[self.dtype]

    @property
    def is_int8(self) -> bool:
        return self.dtype == "int8"

    @property
    def torch_dtype(self):
        """The dtype torch loads the weights in; int8 exports from the fp32 weights."""
        import torch

        return torch.float32 if self.is_int8 else getattr(torch, self.dtype)


def normalise_precision(value: Any) -> Any:
    """``float32``/``bfloat16``/``float16`` (the ``dtype`` spellings) as ``fp32``/``bf16``/``fp16``."""
    return _ALIASES.get(value, value) if isinstance(value, str) else value


def migrate_dtype(data: Any, section: str) -> Any:
    """A config section's ``dtype`` (the key before ``precision``) read as ``precision``."""
    if not isinstance(data, dict) or "dtype" not in data:
        return data
    data = dict(data)
    dtype = normalise_precision(data.pop("dtype"))
    if dtype is None:
        return data
    current = normalise_precision(data.get("precision"))
    if current is not None and current != dtype:
        raise ConfigError(
            f"{section}.dtype ({dtype}) and {section}.precision ({current}) disagree; "
            f"keep only {section}.precision (dtype is its old name)"
        )
    data["precision"] = dtype
    return data


class ReadsPrecisionAliases(BaseModel):
    """Mixin for a pydantic model with a ``precision`` field: the old ``dtype`` key and torch's
    spellings (``bfloat16`` ...) are read as ``precision``; ``precision_section`` names the config
    section in the error when both keys are given and disagree."""

    precision_section: ClassVar[str] = "embeddings"

    @model_validator(mode="before")
    @classmethod
    def _dtype_is_precision(cls, data: Any) -> Any:
        return migrate_dtype(data, cls.precision_section)

    @field_validator("precision", mode="before", check_fields=False)
    @classmethod
    def _precision_aliases(cls, value: Any) -> Any:
        return normalise_precision(value)


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 matrices natively, and the evidence (for ``config show``).

    ``RAG_PIPELINE_CPU_BF16=0`` (or ``1``) overrides the detection, so that ``auto`` gives the same
    precision on every machine (the test suite sets 0: its reference comparisons are fp32).
    """
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1", f"{CPU_BF16_ENV}={override}"
    capped = onednn_isa_cap()
    if capped is not None:
        return False, capped
    return cpu_flags_bf16_support("/proc/cpuinfo")


# oneDNN's ONEDNN_MAX_CPU_ISA values whose kernels include native bf16 dot products; any other
# value caps oneDNN below them, and bf16 would then be emulated (slower than fp32).
_ONEDNN_BF16_ISAS = frozenset({
    "ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
})


def onednn_isa_cap() -> str | None:
    """Why bf16 is off although the CPU may have it: ``ONEDNN_MAX_CPU_ISA`` (also spelled
    ``DNNL_MAX_CPU_ISA``) capping oneDNN, which runs the CPU's bf16 matrix products, below the
    instruction sets that have them; None when nothing caps it."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            return None if value in _ONEDNN_BF16_ISAS else f"{name}={value} caps oneDNN below bf16"
    return None


@lru_cache(maxsize=4)
def cpu_flags_bf16_support(cpuinfo: str) -> tuple[bool, str]:
    """The flags are what oneDNN dispatches on; ``torch.backends.cpu.get_cpu_capability()`` only
    says "AVX512" whether or not the bf16 extension is there."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False, f"{cpuinfo} not readable"
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    found = [f for f in _CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU has {'/'.join(found)}"
    return False, "CPU lacks amx_bf16/avx512_bf16"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def onnx_runtime_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime", "onnxscript"))


def resolve_precision(device: str, precision: str, what: str) -> Precision:
    """The precision a stage runs in; a request this device cannot serve falls back with a
    one-line warning. ``what`` is the config section (``embeddings``, ``reranker``)."""
    requested = normalise_precision(precision)
    resolved_device = resolve_device(device)
    on_cuda = resolved_device.startswith("cuda")
    on_cpu = resolved_device == "cpu"

    def fallback(to: str, why: str) -> Precision:
        logger.warning("%s.precision is %s but %s; using %s", what, requested, why, to)
        return Precision(resolved_device, _TORCH_NAMES[to], f"{requested} asked, but {why}")

    if requested == "auto":
        if on_cuda:
            return Precision(resolved_device, "float16", "auto: GPU")
        if on_cpu:
            has_bf16, evidence = cpu_bf16_support()
            return Precision(resolved_device, "bfloat16" if has_bf16 else "float32", f"auto: {evidence}")
        return Precision(resolved_device, "float32", f"auto: {resolved_device} is neither a GPU nor a CPU")
    if requested == "fp16" and not on_cuda:
        return fallback("fp32", f"the device is {resolved_device} (fp16 only on a GPU)")
    if requested == "bf16" and on_cpu:
        has_bf16, evidence = cpu_bf16_support()
        if not has_bf16:
            return fallback("fp32", f"the {evidence} (bf16 would be emulated, slower than fp32)")
        return Precision(resolved_device, "bfloat16", f"asked; {evidence}")
    if requested == "int8":
        if not on_cpu:
            return fallback("fp16" if on_cuda else "fp32", f"the device is {resolved_device} (int8 runs on ONNX Runtime's CPU kernels)")
        if not onnx_runtime_installed():
            raise ConfigError(
                f"{what}.precision is int8 but onnx/onnxruntime/onnxscript are not installed; "
                "pip install 'rag-pipeline[onnx]' or choose another precision"
            )
        return Precision(resolved_device, "int8", "asked; ONNX Runtime, dynamically quantised")
    if requested not in _TORCH_NAMES:
        raise ConfigError(f"{what}.precision: {precision!r} is not one of auto, fp32, bf16, fp16, int8")
    return Precision(resolved_device, _TORCH_NAMES[requested], "asked")


def describe_precision(device: str, precision: str, what: str, resolved: Precision | None = None) -> str:
    """One line for ``config show``: what ``precision`` becomes here, and why (``resolved``: the
    caller's own ``resolve_precision`` of the same, so that a fallback warns once)."""
    resolved = resolved or resolve_precision(device, precision, what)
    return f"{what}.precision: {normalise_precision(precision)} -> {resolved.name} on {resolved.device} ({resolved.reason})"
