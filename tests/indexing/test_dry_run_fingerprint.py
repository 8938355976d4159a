"""``ingest --dry-run`` refuses a model change as the real ingest would (issue 7, item 20)."""

import subprocess

from rag_pipeline import Pipeline

from sync_helpers import cli_command, config_for, corpus_v1, write_config, write_files


def test_dry_run_reports_the_model_change_the_ingest_would_refuse(tmp_path, tiny_bge_dir, tiny_bge_other_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    Pipeline.from_config(config_for(corpus, tmp_path / "index", tiny_bge_dir)).ingest()
    other = write_config(config_for(corpus, tmp_path / "index", tiny_bge_other_dir), tmp_path / "other.yaml")
    result = subprocess.run(cli_command(other, "ingest", "--dry-run"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: collection 'test' was built with another embedding setup")
    assert "rag-pipeline reindex" in result.stderr and result.stdout == ""
