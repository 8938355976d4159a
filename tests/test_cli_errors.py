"""User mistakes on the command line: one line, exit 2, nothing created (issue 7, items 14-18)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.cli import main


@pytest.fixture
def config_file(tmp_path, small_corpus, tiny_bge_dir, tiny_reranker_dir):
    config = pipeline_config(small_corpus, tmp_path / "index", str(tiny_bge_dir))
    config["reranker"] = {"model": str(tiny_reranker_dir), "top_n": 2}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_query_without_an_index_says_so_and_creates_nothing(config_file, tmp_path, capsys):
    assert main(["query", str(config_file), "bees", "-q"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: no index at {tmp_path / 'index'}")
    assert line.endswith("run `rag-pipeline ingest CONFIG` first")
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("k", ["0", "-2"])
def test_k_must_be_positive_and_the_message_names_the_flag(config_file, capsys, k):
    assert main(["ingest", str(config_file), "-q"]) == 0
    capsys.readouterr()
    assert main(["query", str(config_file), "bees", "--k", k, "-q"]) == 2
    assert _error_line(capsys) == f"error: --k: must be a positive whole number, got {int(k)}"
    assert main(["query", str(config_file), "bees", "-q", "--set", f"retriever.k={k}"]) == 2
    assert _error_line(capsys).startswith("error: retriever.k: Input should be greater than 0")


def test_an_empty_query_is_refused(config_file, capsys):
    assert main(["ingest", str(config_file), "-q"]) == 0
    capsys.readouterr()
    assert main(["query", str(config_file), "   ", "-q"]) == 2
    assert _error_line(capsys) == "error: the query is empty: give the text to search for"


def test_a_bad_filter_is_one_line_naming_the_key(config_file, capsys):
    assert main(["ingest", str(config_file), "-q"]) == 0
    capsys.readouterr()
    assert main(["query", str(config_file), "bees", "-q", "--set", "retriever.filter={'file_type': {'$bogus': 1}}"]) == 2
    assert _error_line(capsys).startswith("error: retriever.filter: unknown operator '$bogus' on 'file_type'; use one of")


def test_sample_queries_jsonl_without_query_is_one_line(config_file, tmp_path, capsys):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query": "bees"}) + "\n" + json.dumps({"text": "tides"}) + "\n")
    assert main(["run", str(config_file), "-q", "--set", f"sample_queries={queries}"]) == 2
    assert _error_line(capsys) == f"error: sample_queries: {queries}: line 2: expected a JSON object with query"


def test_set_retriever_k_beats_a_top_n_from_the_file(config_file, capsys):
    """The user's latest word wins: --set retriever.k overrides the file's reranker.top_n (2)."""
    assert main(["ingest", str(config_file), "-q"]) == 0
    capsys.readouterr()
    assert main(["query", str(config_file), "bees", "--json", "-q"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2  # top_n from the file
    assert main(["query", str(config_file), "bees", "--json", "-q", "--set", "retriever.k=3"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["query", str(config_file), "bees", "--json", "-q", "--set", "retriever.k=3", "--set", "reranker.top_n=1"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1  # both given: top_n is the reranker's cut
    pipe = Pipeline.from_yaml(config_file, overrides={"retriever.k": 3})
    assert pipe.config.reranker.top_n is None and pipe.config.retriever.k == 3


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_or_after_the_subcommand(config_file, where):
    args = ["query", str(config_file), "bees", "-q"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    from rag_pipeline import RagPipelineError

    with pytest.raises(RagPipelineError, match="no index at"):  # --debug: the exception, not a line
        main(args)
