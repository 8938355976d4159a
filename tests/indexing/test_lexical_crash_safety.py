"""Crash safety with a lexical (BM25) index beside the dense one: an ingest killed with SIGKILL at
any point, then run again, leaves both indexes and the record exactly as one clean run does, and
BM25 scores every query as a clean run's index does (same corpus statistics)."""

from __future__ import annotations

import shutil

import pytest
from sync_helpers import config_for, corpus_v1, ingest_killed_at, mutate_to_v2, snapshot, write_config, write_files

from rag_pipeline import Pipeline

QUERIES = ["bees edition 2", "tides", "otters study", "comets people like", "kites"]
POINTS = {
    "writing:2": "a batch in Chroma, not yet in the lexical index",
    "lexical:2": "a batch in both indexes, not yet in the record",
    "recorded:1": "record committed, the changed file's old chunks still in both indexes",
    "removing:1": "deleted file gone from the record, its chunks still in both indexes",
}


def lexical_config(corpus, index, model, lexical_type="bm25"):
    config = config_for(corpus, index, model)
    config["lexical"] = {"type": lexical_type}
    return config


def lexical_snapshot(config) -> dict:
    pipe = Pipeline.from_config(config)
    lexical = pipe.lexical
    found = lexical.search_batch_text(QUERIES, 20)
    return {
        **snapshot(config),
        "lexical_ids": sorted(lexical.ids()),
        "lexical_collections": sorted(p.name for p in lexical.root.iterdir()) if lexical.root.exists() else [],
        "bm25": [[(d.id, round(d.metadata["score"], 5)) for d in hits] for hits in found],
    }


# bm25s rebuilds its matrices from the chunk table; tantivy changes its index in place, so a kill
# can leave it holding chunks the table does not: both must come back to what a clean run leaves.
@pytest.fixture(scope="module", params=["bm25", "tantivy"])
def scenario(request, tmp_path_factory, tiny_bge_dir):
    lexical_type = request.param
    root = tmp_path_factory.mktemp(f"lexical-crash-{lexical_type}")
    corpus = root / "corpus"
    write_files(corpus, corpus_v1())
    template = root / "v1-index"
    Pipeline.from_config(lexical_config(corpus, template, tiny_bge_dir, lexical_type)).ingest()
    mutate_to_v2(corpus)
    clean_config = lexical_config(corpus, root / "clean", tiny_bge_dir, lexical_type)
    shutil.copytree(template, root / "clean")
    Pipeline.from_config(clean_config).ingest()
    scratch_config = lexical_config(corpus, root / "scratch", tiny_bge_dir, lexical_type)
    Pipeline.from_config(scratch_config).ingest()
    return {
        "corpus": corpus, "template": template, "model": tiny_bge_dir, "type": lexical_type,
        "clean": lexical_snapshot(clean_config), "scratch": lexical_snapshot(scratch_config),
    }


def test_a_clean_incremental_run_equals_a_run_from_scratch(scenario):
    assert scenario["clean"] == scenario["scratch"]
    assert scenario["clean"]["lexical_ids"] == scenario["clean"]["ids"]
    assert any(scenario["clean"]["bm25"])


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_at_any_point_then_rerun_equals_one_clean_run(scenario, point, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(scenario["template"], index)
    config = lexical_config(scenario["corpus"], index, scenario["model"], scenario["type"])
    config_path = write_config(config, tmp_path / "config.yaml")
    ingest_killed_at(config_path, point)
    crashed = lexical_snapshot(config)
    assert crashed["dirty"] and crashed != scenario["clean"]

    rerun = Pipeline.from_config(config).ingest()
    assert rerun.recovered
    assert lexical_snapshot(config) == scenario["clean"]
