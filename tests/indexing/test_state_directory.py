"""An ``ingest.state_directory`` that cannot hold the index's state is one line naming the key,
before any work (issue 21, item 14); it used to be a traceback from whichever writer came first,
or a lock that looked held by another ingest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from langchain_core.documents import Document

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.cli import main
from rag_pipeline.errors import ConfigError

requires_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")


def config_with_state(tmp_path: Path, corpus: Path, model: Path, state: Path, *, persistent: bool = True) -> dict:
    config = pipeline_config(corpus, tmp_path / "index" if persistent else None, str(model))
    # lock_timeout 0: a lock file the OS refuses must not pass for another ingest's, waited on
    config["ingest"] = {"state_directory": str(state), "lock_timeout": 0}
    return config


def write(config: dict, tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "where, cause",
    [
        (lambda file: file / "state", "is under a file"),
        (lambda file: file, "is a file, not a folder"),
        pytest.param(lambda file: Path("/proc/rag-pipeline-state"), "cannot create /proc/rag-pipeline-state", marks=requires_proc),
        pytest.param(lambda file: Path("/proc"), "cannot create files in /proc", marks=requires_proc),
    ],
    ids=["under-a-file", "a-file", "under-proc", "proc"],
)
def test_ingest_reports_an_unusable_state_directory_in_one_line(tmp_path, small_corpus, tiny_bge_dir, a_file, capsys, where, cause):
    state = where(a_file)
    config = write(config_with_state(tmp_path, small_corpus, tiny_bge_dir, state), tmp_path)
    assert main(["ingest", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: ingest.state_directory: ") and cause in err
    # before any work: no index made, the file in the way untouched
    assert not (tmp_path / "index").exists()
    assert a_file.read_text(encoding="utf-8") == "a regular file\n"


def test_documents_from_code_get_the_same_error(tmp_path, small_corpus, tiny_bge_dir, a_file):
    """The documents API writes the same state; an in-memory index with a state folder too."""
    config = config_with_state(tmp_path, small_corpus, tiny_bge_dir, a_file / "state", persistent=False)
    with pytest.raises(ConfigError, match=r"^ingest\.state_directory: .* is under a file") as caught:
        Pipeline.from_config(config).add_documents([Document(page_content="Bees dance.", id="bees")], source="notes")
    assert "\n" not in str(caught.value)


def test_a_usable_state_directory_is_created_on_first_ingest(tmp_path, small_corpus, tiny_bge_dir, capsys):
    state = tmp_path / "state" / "deep"
    config = write(config_with_state(tmp_path, small_corpus, tiny_bge_dir, state), tmp_path)
    assert main(["ingest", str(config), "-q"]) == 0
    assert (state / "index_record.sqlite").is_file()
    assert list(state.glob("tmp*")) == []  # the probe of the folder leaves nothing behind
