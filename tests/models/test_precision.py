"""Device and dtype come from the config, not from the loaded weights."""

import logging

import numpy as np
import pytest
import torch

from rag_pipeline.embeddings import BgeEmbeddings, BgeEmbeddingsConfig
from rag_pipeline.models import Precision, resolve_precision


def test_auto_is_fp32_on_cpu_and_fp16_on_a_gpu(monkeypatch):
    assert resolve_precision("cpu", "auto", "embeddings") == Precision("cpu", "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision("auto", "auto", "embeddings") == Precision("cuda", "float16")
    assert resolve_precision("cuda:1", "bfloat16", "embeddings") == Precision("cuda:1", "bfloat16")


def test_fp16_on_cpu_becomes_fp32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("cpu", "float16", "reranker") == Precision("cpu", "float32")
    assert "reranker.dtype is float16" in caplog.text
    assert resolve_precision("cpu", "bfloat16", "embeddings").torch_dtype is torch.bfloat16


class _WeightlessBackend:
    """Stands in for an ONNX or int8 model: it encodes, but has no torch parameters to read."""

    max_seq_length = 128
    tokenizer = None

    def get_embedding_dimension(self):
        return 32

    def encode(self, texts, **_):
        return np.ones((len(texts), 32), dtype=np.float32)


@pytest.mark.parametrize("dtype, expected", [("auto", "float32"), ("bfloat16", "bfloat16")])
def test_cache_identity_takes_the_dtype_from_the_config(tiny_bge_dir, dtype, expected):
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), device="cpu", dtype=dtype))
    embeddings._model = _WeightlessBackend()
    identity = embeddings.cache_identity()
    assert identity["dtype"] == expected
    assert identity["identity"] == embeddings.identity and identity["max_seq_length"] == 128
