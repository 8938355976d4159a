"""One writer per index: a second ingest while one runs waits for the lock or fails with a clear
one-line message; queries keep answering while an ingest writes.

A child ``rag-pipeline ingest`` is paused mid-write (``RAG_PIPELINE_FAULT=writing:1=wait:FILE``:
chunks upserted, the record not yet updated) while the test acts on the index from this process.
"""

from __future__ import annotations

import threading
import time

import pytest
from sync_helpers import (
    config_for,
    corpus_v1,
    mutate_to_v2,
    paused_at_first_write,
    snapshot,
    write_config,
    write_files,
)

from rag_pipeline import IndexBusyError, Pipeline
from rag_pipeline.cli import main


@pytest.fixture
def paused_ingest(tmp_path, tiny_bge_dir):
    """An index of corpus v1, and a child ingesting v2 into it, paused mid-write."""
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = config_for(corpus, tmp_path / "index", tiny_bge_dir)
    Pipeline.from_config(config).ingest()
    mutate_to_v2(corpus)
    release = tmp_path / "release"
    with paused_at_first_write(write_config(config, tmp_path / "config.yaml"), "ingest", release) as child:
        yield config, child, release


def test_a_second_ingest_fails_with_a_clear_message_and_queries_keep_answering(paused_ingest, tmp_path, capsys):
    config, child, release = paused_ingest

    # Queries answer from the index while the other process writes to it.
    hits = Pipeline.from_config(config).query("tides moon", k=3)
    assert len(hits) == 3 and all(h.page_content for h in hits)

    # A second ingest gives up after ingest.lock_timeout with one line naming the cause and the fix.
    config["ingest"] = {"lock_timeout": 0.5}
    started = time.monotonic()
    with pytest.raises(IndexBusyError, match=r"another ingest or reindex is writing to .*ingest\.lock_timeout"):
        Pipeline.from_config(config).ingest()
    assert time.monotonic() - started < 10
    capsys.readouterr()
    assert main(["ingest", str(write_config(config, tmp_path / "busy.yaml")), "-q"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: another ingest or reindex is writing to") and "(now 0.5s)" in error

    release.touch()
    assert child.wait(timeout=120) == 0, child.stderr.read()
    report = Pipeline.from_config(config).ingest()  # the lock is free again, and nothing is left to do
    assert report.added == report.deleted == 0 and not report.recovered


def test_a_second_ingest_waits_for_the_first_then_finds_nothing_to_do(paused_ingest):
    config, child, release = paused_ingest
    config["ingest"] = {"lock_timeout": 120}
    outcome = {}

    def second():
        outcome["report"] = Pipeline.from_config(config).ingest()
        outcome["finished"] = time.monotonic()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive(), "the second ingest did not wait for the lock"
    released = time.monotonic()
    release.touch()
    assert child.wait(timeout=120) == 0
    thread.join(timeout=120)
    assert outcome["finished"] > released
    report = outcome["report"]
    assert report.files_added == report.files_updated == report.added == 0  # the first one did it all
    state = snapshot(config)
    assert not state["dirty"] and state["duplicate_ids"] == 0
    assert set(state["ids"]) == {i for i, _ in state["record"]["chunks"]}
