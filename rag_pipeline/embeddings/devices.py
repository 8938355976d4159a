"""Device and precision choices shared by the embedder and the reranker."""

from __future__ import annotations

import logging
from typing import Literal

logger = logging.getLogger(__name__)

DType = Literal["auto", "float32", "float16", "bfloat16"]


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: DType, device: str, what: str):
    """fp16 only on a GPU: on a CPU half precision is slow and loses accuracy for nothing."""
    import torch

    on_cuda = device.startswith("cuda")
    if dtype == "auto":
        return torch.float16 if on_cuda else torch.float32
    if dtype == "float16" and not on_cuda:
        logger.warning("%s.dtype is float16 but the device is %s; using float32 (fp16 only on a GPU)", what, device)
        return torch.float32
    return getattr(torch, dtype)
