"""``ingest.engine: ray``: files read and chunked as Ray Data tasks, vectors from an actor pool, the
record, cache and writes on the driver. The result must be the local engine's, to the chunk: same
ids, documents, metadata and record, vectors within 1e-5; incremental sync and crash recovery too.

One local Ray (``ray.init(num_cpus=2)``) serves the whole module; a killed ingest is a CLI child
process that joins it by address and SIGKILLs itself mid-embedding.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from sync_helpers import config_for, corpus_v1, ingest_killed_at, mutate_to_v2, snapshot, write_config, write_files

from rag_pipeline import Pipeline
from rag_pipeline.cli import main
from rag_pipeline.errors import ConfigError
from rag_pipeline.indexing.cache import EmbeddingCache
from rag_pipeline.indexing.ray_engine import RayChunkSource

ray = pytest.importorskip("ray")

RAY_SETTINGS = {"batch_size": 4, "concurrency": 2, "files_per_round": 4}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def ray_config(corpus, index, model, **ray_settings) -> dict:
    config = config_for(corpus, index, model)
    # fp32: the parity check below is to 1e-5, tighter than bf16 arithmetic is reproducible
    config["embeddings"]["precision"] = "fp32"
    config["ingest"] = {"engine": "ray", "ray": {**RAY_SETTINGS, **ray_settings}}
    return config


def local_config(corpus, index, model) -> dict:
    config = ray_config(corpus, index, model)
    config["ingest"] = {"engine": "local"}
    return config


def contents(config: dict) -> dict:
    """Everything a reader of the index sees, chunk by chunk."""
    store = Pipeline.from_config(config).store
    ids = sorted(store.ids())
    documents = {d.id: (d.page_content, d.metadata) for d in store.documents(ids)}
    return {"ids": ids, "documents": documents, "vectors": store.vectors(ids)}


def assert_same_index(ray_run: dict, local_run: dict) -> None:
    got, expected = contents(ray_run), contents(local_run)
    assert got["ids"] == expected["ids"] and got["ids"]
    assert got["documents"] == expected["documents"]
    np.testing.assert_allclose(got["vectors"], expected["vectors"], atol=1e-5, rtol=0)
    assert snapshot(ray_run)["record"] == snapshot(local_run)["record"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-corpus") / "corpus"
    write_files(root, corpus_v1())
    # a file the loader reads with a warning, and one it cannot read: both reported as locally
    write_files(root, {"records.jsonl": '{"text": "Otters hold hands while they sleep."}\nnot json\n', "empty.txt": ""})
    return root


def test_ray_ingest_equals_local_adds_nothing_again_and_follows_changes(ray_cluster, corpus, tmp_path, tiny_bge_dir):
    work = tmp_path / "corpus"
    shutil.copytree(corpus, work)
    local = local_config(work, tmp_path / "local", tiny_bge_dir)
    # One round per ingest: each round starts the actor pool anew (two actors, each loading torch
    # and the model: ~10-30 s on two cores). Rounds are the CLI test's (reading) and, with
    # embedding, the killed and reindex tests' (-m slow).
    on_ray = ray_config(work, tmp_path / "ray", tiny_bge_dir, files_per_round=8)
    local_report = Pipeline.from_config(local).ingest()
    report = Pipeline.from_config(on_ray).ingest()

    assert_same_index(on_ray, local)
    assert report.files_added == local_report.files_added == 7
    assert report.embedded == report.added == local_report.embedded
    assert sorted(map(str, report.errors)) == sorted(map(str, local_report.errors)) != []

    again = Pipeline.from_config(on_ray).ingest()
    assert (again.files_added, again.files_updated, again.added, again.embedded, again.deleted) == (0, 0, 0, 0, 0)
    assert again.files_unchanged == 7

    mutate_to_v2(work)  # two files changed, one deleted, two added
    local_report = Pipeline.from_config(local).ingest()
    report = Pipeline.from_config(on_ray).ingest()

    assert_same_index(on_ray, local)
    for key in ("files_added", "files_updated", "files_removed", "added", "embedded", "deleted"):
        assert getattr(report, key) == getattr(local_report, key), key
    assert report.files_updated == 2 and report.files_added == 2 and report.files_removed == 1


@pytest.mark.slow  # a CLI child process (imports, its own Ray connection), ~1-3 min on 2 loaded cores
def test_a_killed_ray_ingest_reruns_to_the_clean_index(ray_cluster, corpus, tmp_path, tiny_bge_dir):
    clean = ray_config(corpus, tmp_path / "clean", tiny_bge_dir)
    Pipeline.from_config(clean).ingest()
    config = ray_config(corpus, tmp_path / "index", tiny_bge_dir, address=ray_cluster, files_per_round=3)
    config_path = write_config(config, tmp_path / "config.yaml")

    # rounds of 3 files: killed at the second batch of vectors of the second round, with the
    # first round written and recorded
    ingest_killed_at(config_path, "ray_embedding:4")
    crashed = snapshot(config)
    assert crashed["dirty"] and crashed["record"]["files"], "the killed run had written and recorded a round"
    assert crashed["record"] != snapshot(clean)["record"]

    pipe = Pipeline.from_config(config)
    cache = EmbeddingCache(pipe.state.embedding_cache_path, pipe.embeddings.cache_identity())
    clean_store = Pipeline.from_config(clean).store
    texts = sorted({d.page_content for d in clean_store.documents(sorted(clean_store.ids()))})
    uncached = sum(1 for vector in cache.get(texts) if vector is None)
    cache.close()
    rerun = pipe.ingest()

    assert rerun.recovered
    assert snapshot(config) == snapshot(clean)
    assert_same_index(config, clean)
    assert 0 < rerun.embedded == uncached < len(texts)  # what the killed run got back is not embedded again


@pytest.mark.slow  # two Ray passes over the corpus, ~40 s on 2 loaded cores
def test_reindex_on_ray_equals_a_local_ingest(ray_cluster, corpus, tmp_path, tiny_bge_dir, monkeypatch):
    local = local_config(corpus, tmp_path / "local", tiny_bge_dir)
    Pipeline.from_config(local).ingest()
    on_ray = ray_config(corpus, tmp_path / "ray", tiny_bge_dir)
    Pipeline.from_config(on_ray).ingest()
    rounds = []
    read_round = RayChunkSource._read_round
    monkeypatch.setattr(RayChunkSource, "_read_round", lambda self, changes: rounds.append(len(changes)) or read_round(self, changes))

    report = Pipeline.from_config(on_ray).reindex()

    assert sum(rounds) == 8 and report.embedded == 0  # every file read again on Ray, every vector from the cache
    assert report.collection != "test"
    got, expected = contents(on_ray), contents(local)
    assert got["ids"] == expected["ids"] and got["documents"] == expected["documents"]
    np.testing.assert_allclose(got["vectors"], expected["vectors"], atol=1e-5, rtol=0)


def seed_embedding_cache(config: dict, source: dict) -> None:
    """Put the vector of every chunk of ``source``'s index into ``config``'s embedding cache (the
    same model): an ingest of ``config`` then computes none, on Ray or here."""
    store = Pipeline.from_config(source).store
    ids = sorted(store.ids())
    texts = {d.id: d.page_content for d in store.documents(ids)}
    pipe = Pipeline.from_config(config)
    cache = EmbeddingCache(pipe.state.embedding_cache_path, pipe.embeddings.cache_identity())
    cache.put([texts[i] for i in ids], np.asarray(store.vectors(ids), dtype=np.float32))
    cache.close()


def test_cli_engine_flag_chooses_ray_and_address_needs_it(ray_cluster, corpus, tmp_path, tiny_bge_dir, monkeypatch, capsys):
    local = local_config(corpus, tmp_path / "local", tiny_bge_dir)
    Pipeline.from_config(local).ingest()
    config = local_config(corpus, tmp_path / "index", tiny_bge_dir)  # the file says local
    config["ingest"]["ray"] = {"files_per_round": 4}  # for when the engine is ray: two rounds
    config_path = str(write_config(config, tmp_path / "config.yaml"))

    assert main(["ingest", config_path, "-q", "--address", ray_cluster]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--address" in error and "--engine ray" in error
    assert not (tmp_path / "index").exists()

    # The vectors are in the cache already: this test is about the flag choosing the engine (every
    # file read on Ray, the local engine's index). Embedding on the actor pool is the first test's:
    # an actor pool start loads torch and the model in a new process, ~10-30 s on two cores.
    seed_embedding_cache(config, local)
    rounds = []
    read_round = RayChunkSource._read_round
    monkeypatch.setattr(RayChunkSource, "_read_round", lambda self, changes: rounds.append(len(changes)) or read_round(self, changes))
    assert main(["ingest", config_path, "-q", "--engine", "ray", "--address", ray_cluster]) == 0
    assert sum(rounds) == 7 + 1 and len(rounds) == 2  # every file read on Ray (the empty one too), in rounds of 4
    assert_same_index(config, local)


def test_ray_not_installed_is_one_clear_line(monkeypatch, corpus, tmp_path, tiny_bge_dir):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    config = ray_config(corpus, tmp_path / "index", tiny_bge_dir)
    with pytest.raises(ConfigError) as raised:
        Pipeline.from_config(config).ingest()
    message = str(raised.value)
    assert "\n" not in message and "ingest.engine: ray" in message and "rag-pipeline[ray]" in message
    assert not (tmp_path / "index").exists()  # refused before anything was written


def test_ray_engine_needs_the_embedding_cache(corpus, tiny_bge_dir):
    config = ray_config(corpus, None, tiny_bge_dir)  # in memory: no state folder, no cache
    with pytest.raises(ConfigError, match="embedding cache"):
        Pipeline.from_config(config).ingest()


def test_ray_settings_are_validated(corpus, tmp_path, tiny_bge_dir):
    config = ray_config(corpus, tmp_path / "index", tiny_bge_dir, concurrency=0)
    with pytest.raises(ConfigError, match=r"ingest\.ray\.concurrency"):
        Pipeline.from_config(config)
    config = ray_config(corpus, tmp_path / "index", tiny_bge_dir)
    config["ingest"]["engine"] = "spark"
    with pytest.raises(ConfigError, match=r"ingest\.engine"):
        Pipeline.from_config(config)
