"""Files of a type no reader handles are reported, not dropped in silence; a dry run that would
empty most of the index says so loudly."""

import yaml

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.cli import main

EXPECTED = "3 files of unsupported types: .docx ×2, .org"


def _corpus(root):
    root.mkdir()
    (root / "a.md").write_text("Alpha notes about rivers.\n", encoding="utf-8")
    (root / "b.txt").write_text("Beta notes about mountains.\n", encoding="utf-8")
    (root / "c.md").write_text("Gamma notes about forests.\n", encoding="utf-8")
    (root / "d.txt").write_text("Delta notes about deserts.\n", encoding="utf-8")
    (root / "report.docx").write_bytes(b"PK\x03\x04 not really a docx")
    (root / "old.DOCX").write_bytes(b"PK\x03\x04")
    (root / "todo.org").write_text("* TODO water the plants\n", encoding="utf-8")
    return root


def _config_file(tmp_path, model, **loader):
    config = pipeline_config(_corpus(tmp_path / "corpus"), tmp_path / "index", model)
    config["loader"].update(loader)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def test_summary_counts_types():
    from rag_pipeline.indexing.report import unsupported_summary

    assert unsupported_summary(["a/x.docx", "b.org", "y.DOCX"]) == EXPECTED
    assert unsupported_summary(["Makefile"]) == "1 file of unsupported types: (no extension)"


def test_ingest_and_dry_run_report_unsupported_files_even_when_include_names_them(tmp_path, tiny_bge_dir, capsys):
    config = _config_file(tmp_path, str(tiny_bge_dir), include=["**/*.md", "**/*.txt", "**/*.docx", "**/*.DOCX", "**/*.org"])
    assert main(["ingest", config, "--dry-run", "-q"]) == 0
    assert f"; {EXPECTED} (not read)" in capsys.readouterr().out
    pipe = Pipeline.from_yaml(config)
    report = pipe.ingest()
    assert sorted(report.unsupported) == ["old.DOCX", "report.docx", "todo.org"]
    assert EXPECTED in report.summary()
    assert report.files_seen == 4 and not report.errors


def test_a_single_unsupported_file_as_loader_path_is_reported(tmp_path, tiny_bge_dir):
    config = pipeline_config(_corpus(tmp_path / "corpus") / "todo.org", None, str(tiny_bge_dir))
    report = Pipeline.from_config(config).ingest()
    assert report.unsupported == ["todo.org"] and report.files_seen == 0


def test_dry_run_that_would_remove_most_of_the_index_warns_loudly(tmp_path, tiny_bge_dir, capsys):
    config = _config_file(tmp_path, str(tiny_bge_dir))
    assert main(["ingest", config, "-q"]) == 0
    capsys.readouterr()
    assert main(["ingest", config, "--dry-run", "--set", "loader.include=['**/*.md']"]) == 0  # 2 of 4 files: half
    assert "WARNING" not in capsys.readouterr().err
    assert main(["ingest", config, "--dry-run", "--set", "loader.include=['a.md']"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("WARNING: this ingest would remove 3 of the 4 chunks in the index (75%, 3 files no longer found)")
    assert err.count("\n") == 1
