"""Model change: the fingerprint guard names ``rag-pipeline reindex`` as the fix, and reindex builds
a new collection, switches to it only when it is complete (the old one serves until then), and
removes the old one; a killed reindex leaves the old index in service and its leftovers are dropped."""

from __future__ import annotations

import os

import pytest
from sync_helpers import cli_args, config_for, corpus_v1, paused_at_first_write, write_config, write_files
from warm_processes import run_cli

from rag_pipeline import IndexMismatchError, Pipeline
from rag_pipeline.cli import main
from rag_pipeline.indexing import IndexRecord


@pytest.fixture
def indexed(tmp_path, tiny_bge_dir, tiny_bge_other_dir):
    """Corpus indexed with one model; ``new`` configures another."""
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    old = config_for(corpus, tmp_path / "index", tiny_bge_dir)
    new = config_for(corpus, tmp_path / "index", tiny_bge_other_dir)
    count = Pipeline.from_config(old).ingest().collection_count
    return old, new, count


def _state(config) -> tuple[dict[str, str], set[str]]:
    pipe = Pipeline.from_config(config)
    store = pipe.store
    with IndexRecord(pipe.state.record_path, readonly=True) as record:
        return record.collections("test"), store.collection_names()


def test_model_change_is_refused_until_reindex_switches_to_a_complete_new_collection(indexed, tmp_path, capsys):
    old, new, count = indexed
    with pytest.raises(IndexMismatchError, match=r"run `rag-pipeline reindex CONFIG`.*or set vectorstore.collection"):
        Pipeline.from_config(new).ingest()

    path = write_config(new, tmp_path / "new.yaml")
    assert main(["reindex", str(path), "-q"]) == 0
    assert "now serving collection 'test.v2'" in capsys.readouterr().out
    # The old collection is retired, not dropped: a reader in another process may still hold it.
    assert _state(new) == ({"test": "retired", "test.v2": "active"}, {"test", "test.v2"})
    assert len(Pipeline.from_config(new).query("bees", k=3)) == 3
    with pytest.raises(IndexMismatchError):
        Pipeline.from_config(old).query("bees")  # the old model no longer matches the index
    again = Pipeline.from_config(new).ingest()
    assert (again.files_unchanged, again.added, again.collection_count) == (6, 0, count)
    assert _state(new) == ({"test.v2": "active"}, {"test.v2"})  # the next ingest dropped it

    # Reindexing with the same model again re-embeds nothing: the vectors are in the cache.
    report = Pipeline.from_config(new).reindex()
    assert report.collection == "test.v3" and report.added == count and report.embedded == 0
    assert _state(new) == ({"test.v2": "retired", "test.v3": "active"}, {"test.v2", "test.v3"})


def test_the_old_collection_serves_until_the_new_one_is_complete(indexed, tmp_path):
    old, new, count = indexed
    release = tmp_path / "release"
    with paused_at_first_write(write_config(new, tmp_path / "new.yaml"), "reindex", release) as child:
        # Half-built: the old collection is still the one served, and answers.
        assert _state(old) == ({"test": "active", "test.v2": "building"}, {"test", "test.v2"})
        assert len(Pipeline.from_config(old).query("tides", k=3)) == 3
        with pytest.raises(IndexMismatchError):
            Pipeline.from_config(new).query("tides")
    assert child.returncode == 0, child.stderr.read()
    assert _state(new) == ({"test": "retired", "test.v2": "active"}, {"test", "test.v2"})
    assert len(Pipeline.from_config(new).query("tides", k=3)) == 3


def test_a_killed_reindex_leaves_the_old_index_serving_and_its_leftovers_are_dropped(indexed, tmp_path):
    old, new, count = indexed
    child = run_cli(  # a `rag-pipeline reindex` process, killed at its first write
        cli_args(write_config(new, tmp_path / "new.yaml"), "reindex"),
        env={**os.environ, "RAG_PIPELINE_FAULT": "writing:1"}, timeout=300,
    )
    assert child.returncode == -9, child.stderr
    assert _state(old) == ({"test": "active", "test.v2": "building"}, {"test", "test.v2"})
    assert len(Pipeline.from_config(old).query("kites", k=3)) == 3

    report = Pipeline.from_config(old).ingest()  # the next ingest drops the half-built collection
    assert report.added == 0 and _state(old) == ({"test": "active"}, {"test"})

    report = Pipeline.from_config(new).reindex()
    assert report.collection_count == count
    assert _state(new) == ({"test": "retired", report.collection: "active"}, {"test", report.collection})
