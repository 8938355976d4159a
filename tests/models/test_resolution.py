"""Where a model comes from: folders, packages, hub ids, and Hugging Face cache snapshots."""

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from rag_pipeline.embeddings import BgeEmbeddings, BgeEmbeddingsConfig
from rag_pipeline.models import BGE_EN_INSTRUCTION, default_query_instruction, resolve_model

COMMIT = "3c1f6a9e0b2d4c5f8a7e6d5c4b3a29180f1e2d3c"
REPO_ID = "BAAI/bge-tiny-en-v1.5"


def test_v15_english_models_get_the_v15_instruction():
    assert BGE_EN_INSTRUCTION == "Represent this sentence for searching relevant passages: "
    for model in ("BAAI/bge-small-en-v1.5", "BAAI/bge-base-en-v1.5", "BAAI/bge-large-en-v1.5", "BAAI/bge-large-en"):
        assert default_query_instruction(model) == BGE_EN_INSTRUCTION
    # LangChain's default says "question", which v1.5 was not trained with.
    from langchain_community.embeddings.huggingface import DEFAULT_QUERY_BGE_INSTRUCTION_EN

    assert DEFAULT_QUERY_BGE_INSTRUCTION_EN != BGE_EN_INSTRUCTION


def test_other_models_get_their_own_or_no_instruction():
    assert default_query_instruction("BAAI/bge-m3") == ""
    assert default_query_instruction("BAAI/bge-large-zh-v1.5") == "为这个句子生成表示以用于检索相关文章："
    assert default_query_instruction("sentence-transformers/all-MiniLM-L6-v2") == ""


@pytest.fixture
def hf_cache(tmp_path, tiny_bge_dir, monkeypatch):
    """The tiny model laid out as ``hf download`` leaves it: blobs, a snapshot of links, refs/main."""
    cache = tmp_path / "hub"
    repo = cache / "models--BAAI--bge-tiny-en-v1.5"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    for number, source in enumerate(sorted(p for p in tiny_bge_dir.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"{number:040x}"
        shutil.copy(source, blob)
        link = snapshot / source.relative_to(tiny_bge_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_CACHE once, at import: set both the variable and the constant.
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def _raw_encode(folder, texts):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)


@pytest.mark.parametrize("by", ["snapshot path", "hub id"])
def test_hf_cache_snapshot_keeps_its_repo_id_revision_and_instruction(hf_cache, by):
    reference = str(hf_cache) if by == "snapshot path" else REPO_ID
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model=reference, device="cpu", show_progress=False))
    assert embeddings.model_id == REPO_ID  # not the commit hash
    assert embeddings.resolved.revision == COMMIT
    assert embeddings.resolved.path == str(hf_cache)
    assert embeddings.identity == f"{REPO_ID}@{COMMIT}"
    assert embeddings.query_instruction == BGE_EN_INSTRUCTION
    raw = _raw_encode(hf_cache, [BGE_EN_INSTRUCTION + "how do bees find flowers"])
    np.testing.assert_allclose(embeddings.embed_query("how do bees find flowers"), raw[0], atol=1e-6)


def test_snapshot_path_and_hub_id_have_one_fingerprint(hf_cache):
    by_path = BgeEmbeddings(BgeEmbeddingsConfig(model=str(hf_cache), device="cpu"))
    by_id = BgeEmbeddings(BgeEmbeddingsConfig(model=REPO_ID, device="cpu"))
    assert by_path.fingerprint(load_model=False) == by_id.fingerprint(load_model=False)


def test_hub_id_is_looked_up_in_the_configured_cache_folder(hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache.parent.parent.parent / "elsewhere"))
    cache_folder = hf_cache.parent.parent.parent
    resolved = resolve_model(REPO_ID, cache_folder=cache_folder)
    assert (resolved.path, resolved.revision) == (str(hf_cache), COMMIT)


def test_a_folder_that_only_looks_like_a_snapshot_is_a_plain_folder(tmp_path, tiny_bge_dir):
    not_a_commit = tmp_path / "models--BAAI--bge-tiny-en-v1.5" / "snapshots" / "latest"
    shutil.copytree(tiny_bge_dir, not_a_commit)
    resolved = resolve_model(str(not_a_commit))
    assert (resolved.model_id, resolved.revision) == ("latest", None)


def test_a_hub_model_to_download_is_pinned_to_the_commit_the_hub_serves(tmp_path, monkeypatch):
    """Not in the cache, hub reachable: the identity is repo@commit, and the download is of that commit."""
    import huggingface_hub
    import sentence_transformers
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, timeout: SimpleNamespace(sha=COMMIT))
    loads = []

    class RecordingSentenceTransformer:
        def __init__(self, source, **kwargs):
            loads.append((source, kwargs["revision"], kwargs["local_files_only"]))

        def eval(self):
            return self

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", RecordingSentenceTransformer)
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model="BAAI/bge-small-en-v1.5", device="cpu"))
    assert (embeddings.resolved.path, embeddings.resolved.revision) == (None, COMMIT)
    assert embeddings.identity == f"BAAI/bge-small-en-v1.5@{COMMIT}"
    embeddings.warm_up()
    assert loads == [("BAAI/bge-small-en-v1.5", COMMIT, False)]
