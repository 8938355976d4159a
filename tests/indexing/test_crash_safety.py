"""Crash safety: an ingest killed with SIGKILL at any point, then run again, leaves the collection and
the record exactly as one clean run does (same ids, same count, no duplicates, no orphans), and the
re-run does not embed again what the killed run had embedded.

The kill is real: a child ``rag-pipeline ingest`` process sends itself SIGKILL at a named point
(``RAG_PIPELINE_FAULT``, see :mod:`rag_pipeline.indexing.faults`).
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time

import pytest
from sync_helpers import (
    cli_command,
    config_for,
    corpus_v1,
    ingest_killed_at,
    jsonl_corpus,
    mutate_to_v2,
    snapshot,
    write_config,
    write_files,
)

from rag_pipeline import Pipeline
from rag_pipeline.indexing.cache import EmbeddingCache

# point:N -> what the killed run must have done before dying (to be sure each case tests something)
POINTS = {
    "loading:3": "one group written, the third file parsed",
    "embedding:2": "vectors of a batch cached, not yet in Chroma",
    "writing:2": "chunks in Chroma, not yet in the record",
    "recorded:1": "record committed, the changed file's old chunks still in Chroma",
    "removing:1": "deleted file gone from the record, its chunks still in Chroma",
}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_bge_dir):
    """A v1 index (the template each case starts from), the v2 corpus, and what one clean
    v1 -> v2 ingest and one from-scratch v2 ingest leave behind."""
    root = tmp_path_factory.mktemp("crash")
    corpus = root / "corpus"
    write_files(corpus, corpus_v1())
    template = root / "v1-index"
    Pipeline.from_config(config_for(corpus, template, tiny_bge_dir)).ingest()
    mutate_to_v2(corpus)
    clean_config = config_for(corpus, root / "clean", tiny_bge_dir)
    shutil.copytree(template, root / "clean")
    clean_report = Pipeline.from_config(clean_config).ingest()
    scratch_config = config_for(corpus, root / "scratch", tiny_bge_dir)
    Pipeline.from_config(scratch_config).ingest()
    return {
        "root": root,
        "corpus": corpus,
        "template": template,
        "clean": snapshot(clean_config),
        "clean_report": clean_report,
        "scratch": snapshot(scratch_config),
        "model": tiny_bge_dir,
    }


def _v2_texts(config) -> list[str]:
    pipe = Pipeline.from_config(config)
    return [c.page_content for c in pipe.chunker.split_documents(pipe.loader.load().documents)]


def test_a_clean_incremental_run_equals_a_run_from_scratch(scenario):
    assert scenario["clean"] == scenario["scratch"]
    assert scenario["clean"]["duplicate_ids"] == scenario["clean"]["duplicate_positions"] == 0


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_at_any_point_then_rerun_equals_one_clean_run(scenario, point, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(scenario["template"], index)
    config = config_for(scenario["corpus"], index, scenario["model"])
    config_path = write_config(config, tmp_path / "config.yaml")

    ingest_killed_at(config_path, point)
    crashed = snapshot(config)
    assert crashed["dirty"], "the killed run had written something"  # each point is after a first write
    assert crashed != scenario["clean"]

    pipe = Pipeline.from_config(config)
    cache = EmbeddingCache(pipe.state.embedding_cache_path, pipe.embeddings.cache_identity())
    uncached = sum(1 for v in cache.get(sorted(set(_v2_texts(config)))) if v is None)
    cache.close()
    rerun = pipe.ingest()

    assert rerun.recovered
    assert snapshot(config) == scenario["clean"]
    # Nothing the killed run embedded is embedded again ...
    assert rerun.embedded == uncached
    # ... and past the first batch, the killed run had embedded some (so the check above bites).
    if point != "loading:3":
        assert uncached < scenario["clean_report"].embedded


def test_kill_in_the_middle_of_a_file_then_rerun_equals_one_clean_run(tmp_path, tiny_bge_dir):
    """A changed file written in several batches, killed after its second: its old chunks still
    serve (the record still lists them), the rerun sweeps the new ones written unrecorded."""
    corpus = tmp_path / "corpus"
    write_files(corpus, {"records.jsonl": jsonl_corpus(30)})
    template = tmp_path / "v1-index"
    Pipeline.from_config(config_for(corpus, template, tiny_bge_dir)).ingest()
    write_files(corpus, {"records.jsonl": jsonl_corpus(30, changed_every=2)})
    clean_config = config_for(corpus, tmp_path / "clean", tiny_bge_dir)
    shutil.copytree(template, tmp_path / "clean")
    Pipeline.from_config(clean_config).ingest()
    clean = snapshot(clean_config)

    config = config_for(corpus, tmp_path / "index", tiny_bge_dir)
    shutil.copytree(template, tmp_path / "index")
    before = snapshot(config)
    config_path = write_config(config, tmp_path / "config.yaml")
    ingest_killed_at(config_path, "writing:2")
    crashed = snapshot(config)
    assert crashed["dirty"] and crashed["record"] == before["record"]  # killed mid-file: nothing recorded
    assert set(before["ids"]) < set(crashed["ids"])  # new chunks written, the old ones still there

    rerun = Pipeline.from_config(config).ingest()
    assert rerun.recovered and rerun.files_updated == 1
    assert snapshot(config) == clean


@pytest.mark.slow
def test_kill_at_random_moments_then_rerun_equals_one_clean_run(scenario, tmp_path):
    """SIGKILL from outside at random moments (inside Chroma's writes too), several times over."""
    rng = random.Random(4)
    killed = 0
    for attempt in range(6):
        index = tmp_path / f"index-{attempt}"
        shutil.copytree(scenario["template"], index)
        config = config_for(scenario["corpus"], index, scenario["model"])
        config_path = write_config(config, tmp_path / f"config-{attempt}.yaml")
        child = subprocess.Popen(cli_command(config_path, "ingest"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 7.0))
        child.kill()
        killed += child.wait(timeout=60) == -signal.SIGKILL
        Pipeline.from_config(config).ingest()
        assert snapshot(config) == scenario["clean"], f"attempt {attempt}"
    assert killed, "no attempt was killed mid-run"
