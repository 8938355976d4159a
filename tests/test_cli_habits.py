"""Everyday command-line habits (issue 13.8) and one verbosity for our bars and the libraries' (13.7)."""

from __future__ import annotations

import logging

import pytest
import yaml

from conftest import pipeline_config
from model_factory import build_tiny_bge
from rag_pipeline import ConfigError, Pipeline, __version__, load_config
from rag_pipeline.cli import _parser, main


@pytest.mark.parametrize(
    "argv",
    [["-q", "ingest", "c.yaml"], ["ingest", "c.yaml", "-q"], ["--quiet", "query", "c.yaml", "text"], ["config", "validate", "c.yaml", "-q"]],
)
def test_quiet_is_accepted_before_or_after_the_subcommand(argv):
    assert _parser().parse_args(argv).quiet is True


def test_without_quiet_it_is_off():
    assert _parser().parse_args(["ingest", "c.yaml"]).quiet is False
    assert _parser().parse_args(["--debug", "run", "c.yaml"]).quiet is False


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"rag-pipeline {__version__}"


def test_a_yaml_syntax_error_names_the_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loader:\n  type: directory\n   path: docs\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:3:8: not valid YAML: mapping values are not allowed here"


def test_an_unclosed_bracket_names_where_it_was_opened(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loader:\n  type: directory\n  include: [a.md, b.md\nchunker: {type: none}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4:8: not valid YAML: expected ',' or '\]', but got ':' "
                       r"\(while parsing a flow sequence that starts at line 3\)$"):
        load_config(path)


@pytest.fixture
def tiny_config(tmp_path, sample_corpus, tiny_bge_dir):
    config = pipeline_config(sample_corpus, tmp_path / "index", str(tiny_bge_dir))
    config["sample_queries"] = ["how do I proof sourdough?", "fix a flat tyre"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_run_ends_with_a_summary_line(tiny_config, capsys):
    assert main(["run", str(tiny_config), "-q"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    chunks = Pipeline.from_yaml(tiny_config).store.count()
    assert last.startswith(f"done: 2 sample queries answered (0 with no result) from {chunks} chunks of ")
    assert last.endswith(f"next: rag-pipeline query {tiny_config} \"...\" or rag-pipeline serve {tiny_config}")


def test_reindex_says_the_config_keeps_the_logical_collection_name(tiny_config, capsys):
    assert main(["ingest", str(tiny_config), "-q"]) == 0
    assert main(["reindex", str(tiny_config), "-q"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    physical = Pipeline.from_yaml(tiny_config).store.collection_name
    assert physical != "test"
    assert last == (
        f"now serving collection {physical!r} under the name 'test': keep vectorstore.collection: test "
        "in your configs (the record maps the name to the current collection)"
    )


@pytest.fixture
def library_bars_on():
    """The libraries' bars as a fresh Python process has them (the CLI tests' main() turns them off)."""
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()
    yield
    (transformers_logging.enable_progress_bar if was_on else transformers_logging.disable_progress_bar)()


def test_show_progress_false_also_silences_the_libraries_loading_bars(tmp_path, library_bars_on, capfd):
    from transformers.utils import logging as transformers_logging

    # a model of its own: one already loaded in this process would not be loaded again
    model = build_tiny_bge(tmp_path / "models" / "bge-quiet-en-v1.5", seed=7)
    config = pipeline_config(tmp_path, None, str(model))  # embeddings.show_progress: false
    capfd.readouterr()  # (building the model shows bars of its own)
    Pipeline.from_config(config).embeddings.warm_up()
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
    assert transformers_logging.is_progress_bar_enabled()  # put back as it was


def test_eval_without_its_extra_says_which_to_install(tiny_config, tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytrec_eval" else real_find_spec(name, *a))
    assert main(["eval", str(tiny_config), "--dataset", str(tmp_path / "no-such-dataset")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: eval needs pytrec_eval, which is not installed: pip install 'rag-pipeline[eval]'"
    )
