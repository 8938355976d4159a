"""Preflight: every model the config names is found before any source file is read, and
`config validate --deep` finds them without loading weights."""

import time

import pytest
import yaml

import rag_pipeline.models.loading as loading
from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.cli import main
from rag_pipeline.errors import ModelNotAvailableError
from rag_pipeline.loaders.directory import DirectoryLoader

MISSING_HUB_RERANKER = "BAAI/bge-reranker-not-downloaded"


@pytest.fixture
def files_touched(monkeypatch):
    """Every source file the loader lists or opens from here on."""
    touched = []
    discover, iter_file = DirectoryLoader.discover, DirectoryLoader.iter_file

    def discovering(self):
        touched.append("discover")
        return discover(self)

    def reading(self, file, warnings):
        touched.append(file)
        return iter_file(self, file, warnings)

    monkeypatch.setattr(DirectoryLoader, "discover", discovering)
    monkeypatch.setattr(DirectoryLoader, "iter_file", reading)
    return touched


@pytest.mark.parametrize(
    ("reranker_model", "message"),
    [
        (MISSING_HUB_RERANKER, f"reranker.model: '{MISSING_HUB_RERANKER}' is not in the local Hugging Face cache and "
                               "HF_HUB_OFFLINE is set; on a machine with network run `hf download"),
        ("./no-such-reranker", "reranker.model: model folder not found: "),
    ],
)
def test_ingest_with_a_missing_reranker_fails_before_reading_a_file(
    sample_corpus, tiny_bge_dir, tmp_path, files_touched, reranker_model, message
):
    config = pipeline_config(
        sample_corpus, tmp_path / "index", str(tiny_bge_dir), reranker={"type": "bge-reranker", "model": reranker_model}
    )
    pipe = Pipeline.from_config(config, base_dir=tmp_path)
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as caught:
        pipe.ingest()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert time.perf_counter() - started < 5
    assert files_touched == []
    assert not (tmp_path / "index").exists()  # nothing created either


def test_reindex_runs_the_same_preflight(sample_corpus, tiny_bge_dir, tmp_path, files_touched):
    config = pipeline_config(
        sample_corpus, tmp_path / "index", str(tiny_bge_dir), reranker={"type": "bge-reranker", "model": MISSING_HUB_RERANKER}
    )
    with pytest.raises(ModelNotAvailableError, match="^reranker.model: "):
        Pipeline.from_config(config).reindex()
    assert files_touched == []


def test_preflight_names_every_model_and_loads_none(sample_corpus, tiny_bge_dir, tiny_reranker_dir, monkeypatch):
    loads = []
    shared = loading._shared
    monkeypatch.setattr(loading, "_shared", lambda key, load: shared(key, lambda: loads.append(key) or load()))
    config = pipeline_config(
        sample_corpus, None, str(tiny_bge_dir), reranker={"type": "bge-reranker", "model": str(tiny_reranker_dir)}
    )
    found = Pipeline.from_config(config).preflight()
    assert {key: resolved.path for key, resolved in found.items()} == {
        "embeddings.model": str(tiny_bge_dir),
        "reranker.model": str(tiny_reranker_dir),
    }
    assert loads == []


def _write(config: dict, path) -> str:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def test_config_validate_deep_finds_a_missing_model_that_plain_validate_cannot(sample_corpus, tiny_bge_dir, tmp_path, capsys):
    config = pipeline_config(
        sample_corpus, tmp_path / "index", str(tiny_bge_dir), reranker={"type": "bge-reranker", "model": MISSING_HUB_RERANKER}
    )
    path = _write(config, tmp_path / "config.yaml")
    assert main(["config", "validate", path]) == 0  # the shape is fine
    capsys.readouterr()
    assert main(["config", "validate", path, "--deep"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: reranker.model: '{MISSING_HUB_RERANKER}' is not in the local Hugging Face cache")
    assert err.count("\n") == 1


def test_config_validate_deep_lists_the_models(sample_corpus, tiny_bge_dir, tiny_reranker_dir, tmp_path, capsys):
    config = pipeline_config(
        sample_corpus, tmp_path / "index", str(tiny_bge_dir), reranker={"type": "bge-reranker", "model": str(tiny_reranker_dir)}
    )
    path = _write(config, tmp_path / "config.yaml")
    assert main(["config", "validate", path, "--deep"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"embeddings.model: bge-tiny-en-v1.5 ({tiny_bge_dir})",
        f"reranker.model: bge-reranker-tiny ({tiny_reranker_dir})",
        f"{path}: valid",
    ]
    assert not (tmp_path / "index").exists()
