"""Device and precision, decided from the config alone.

The embedder and the reranker both ask for a ``Precision`` before loading. Because it is worked
out from the configured ``device``/``dtype`` (and whether a GPU is present), the embedding cache
key and the handle cache know the precision without reading it back from loaded torch weights,
which an ONNX or int8 backend would not have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

DType = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class Precision:
    device: str  # "cpu", "cuda", "cuda:1", "mps", ...
    dtype: Literal["float32", "float16", "bfloat16"]

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(device: str, dtype: DType, what: str) -> Precision:
    """fp16 only on a GPU: on a CPU half precision is slow and loses accuracy for nothing.

    ``what`` is the config section (``embeddings``, ``reranker``) named in the warning.
    """
    resolved_device = resolve_device(device)
    on_cuda = resolved_device.startswith("cuda")
    if dtype == "auto":
        return Precision(resolved_device, "float16" if on_cuda else "float32")
    if dtype == "float16" and not on_cuda:
        logger.warning(
            "%s.dtype is float16 but the device is %s; using float32 (fp16 only on a GPU)", what, resolved_device
        )
        return Precision(resolved_device, "float32")
    return Precision(resolved_device, dtype)
