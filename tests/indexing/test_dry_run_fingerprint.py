"""``ingest --dry-run`` refuses a model change as the real ingest would (issue 7, item 20)."""

from rag_pipeline import Pipeline

from sync_helpers import cli_args, config_for, corpus_v1, write_config, write_files
from warm_processes import run_cli


def test_dry_run_reports_the_model_change_the_ingest_would_refuse(tmp_path, tiny_bge_dir, tiny_bge_other_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    Pipeline.from_config(config_for(corpus, tmp_path / "index", tiny_bge_dir)).ingest()
    other = write_config(config_for(corpus, tmp_path / "index", tiny_bge_other_dir), tmp_path / "other.yaml")
    result = run_cli(cli_args(other, "ingest", "--dry-run"), timeout=120)  # another process
    assert result.returncode == 2
    assert result.stderr.startswith("error: collection 'test' was built with another embedding setup")
    assert "rag-pipeline reindex" in result.stderr and result.stdout == ""
