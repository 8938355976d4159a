"""Crash safety of BGE-M3's sparse index (``lexical.type: m3-sparse``): it is written through the
same lexical sink as BM25, so an ingest killed with SIGKILL between the dense and the sparse write,
or after both but before the record, then run again, leaves the dense index, the sparse weights,
the ColBERT vectors and the record exactly as one clean run does."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
from sync_helpers import config_for, corpus_v1, ingest_killed_at, mutate_to_v2, snapshot, write_config, write_files

from rag_pipeline import Pipeline
from rag_pipeline.lexical.bm25 import STORE_FILENAME

pytest.importorskip("FlagEmbedding")

QUERIES = ["bees edition 2", "tides", "otters study", "kites"]
POINTS = {
    "writing:2": "a batch in Chroma, not yet in the sparse index",
    "lexical:2": "a batch in both indexes, not yet in the record",
}


def m3_config(corpus, index, model):
    config = config_for(corpus, index, model)
    config["embeddings"] = {"type": "bge-m3", "model": str(model), "show_progress": False, "batch_size": 16}
    config["lexical"] = {"type": "m3-sparse"}
    return config


def m3_snapshot(config) -> dict:
    pipe = Pipeline.from_config(config)
    lexical = pipe.lexical
    found = lexical.search_batch_text(QUERIES, 20)
    path = lexical.folder() / STORE_FILENAME
    with sqlite3.connect(path) as connection:
        rows = {
            chunk_id: (np.frombuffer(tokens, np.int32), np.frombuffer(weights, np.float32), np.frombuffer(colbert, np.float16))
            for chunk_id, tokens, weights, colbert in connection.execute("SELECT id, tokens, weights, colbert FROM m3")
        }
    return {
        **snapshot(config),
        "lexical_ids": sorted(lexical.ids()),
        "m3_rows": rows,
        "sparse": [[d.id for d in hits] for hits in found],
    }


def assert_same(snapshot_a: dict, snapshot_b: dict) -> None:
    """Equal, except that the model's outputs are compared as numbers: a passage encoded in another
    batch (other padding) differs in the last float bits, not in anything else."""
    rows_a, rows_b = snapshot_a["m3_rows"], snapshot_b["m3_rows"]
    assert {k: v for k, v in snapshot_a.items() if k != "m3_rows"} == {k: v for k, v in snapshot_b.items() if k != "m3_rows"}
    assert rows_a.keys() == rows_b.keys()
    for chunk_id, (tokens, weights, colbert) in rows_a.items():
        other_tokens, other_weights, other_colbert = rows_b[chunk_id]
        assert dict(zip(tokens.tolist(), weights)) == pytest.approx(dict(zip(other_tokens.tolist(), other_weights)), abs=1e-5)
        np.testing.assert_allclose(colbert.astype(np.float32), other_colbert.astype(np.float32), atol=2e-3)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_bge_m3_dir):
    root = tmp_path_factory.mktemp("m3-crash")
    corpus = root / "corpus"
    write_files(corpus, corpus_v1())
    template = root / "v1-index"
    Pipeline.from_config(m3_config(corpus, template, tiny_bge_m3_dir)).ingest()
    mutate_to_v2(corpus)
    clean_config = m3_config(corpus, root / "clean", tiny_bge_m3_dir)
    shutil.copytree(template, root / "clean")
    Pipeline.from_config(clean_config).ingest()
    return {"corpus": corpus, "template": template, "model": tiny_bge_m3_dir, "clean": m3_snapshot(clean_config)}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_at_any_point_then_rerun_equals_one_clean_run(scenario, point, tmp_path):
    clean = scenario["clean"]
    assert clean["lexical_ids"] == clean["ids"] == sorted(clean["m3_rows"]) and any(clean["sparse"])
    index = tmp_path / "index"
    shutil.copytree(scenario["template"], index)
    config = m3_config(scenario["corpus"], index, scenario["model"])
    config_path = write_config(config, tmp_path / "config.yaml")
    ingest_killed_at(config_path, point)
    crashed = m3_snapshot(config)
    assert crashed["dirty"] and (crashed["ids"] != clean["ids"] or crashed["record"] != clean["record"])

    rerun = Pipeline.from_config(config).ingest()
    assert rerun.recovered
    assert_same(m3_snapshot(config), clean)
