"""``vectorstore.type: faiss``: the Chroma store's promises (sync, fingerprint guard, crash safety,
readers in other processes) with a FAISS index, plus what is FAISS's own: training, id-mapped
deletes, an index that cannot delete in place, and the index_factory chosen per config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexing"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))

from conftest import MINILM, pipeline_config  # noqa: E402
from sync_helpers import cli_command, config_for, corpus_v1, ingest_killed_at, jsonl_corpus, mutate_to_v2, snapshot, text_about, write_config, write_files  # noqa: E402

from rag_pipeline import ConfigError, IndexMismatchError, Pipeline  # noqa: E402
from rag_pipeline.contracts import VectorIndex  # noqa: E402

pytest.importorskip("faiss")


def faiss_config(corpus, index, model, **store) -> dict:
    config = config_for(corpus, index, model)
    config["vectorstore"] = {
        "type": "faiss", "persist_directory": str(index) if index is not None else None, "collection": "test",
        "write_batch_size": 4, **store,
    }
    return config


def assert_exact(pipe, query: str, hits) -> None:
    """The hits are every chunk, best first, each with its brute-force cosine (the tiny model's
    cosines differ in the 6th digit, so the order is checked through the scores)."""
    store = pipe.store
    ids = sorted(store.ids())
    query_vector = np.asarray([pipe.embeddings.embed_query(query)])
    exact = dict(zip(ids, store.similarity(query_vector, store.vectors(ids))[0]))
    assert sorted(d.id for d in hits) == ids
    scores = [d.metadata["score"] for d in hits]
    np.testing.assert_allclose(scores, [exact[d.id] for d in hits], atol=1e-6)
    assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:]))


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_files(root, corpus_v1())
    return root


def test_faiss_store_syncs_like_chroma_and_is_a_vector_index(corpus, tmp_path, tiny_bge_dir):
    config = faiss_config(corpus, tmp_path / "index", tiny_bge_dir)
    pipe = Pipeline.from_config(config)
    assert isinstance(pipe.store, VectorIndex)
    first = pipe.ingest()
    assert first.added == first.chunks > 0
    again = Pipeline.from_config(config).ingest()
    assert (again.added, again.embedded, again.skipped) == (0, 0, first.chunks)

    chroma = config_for(corpus, tmp_path / "chroma", tiny_bge_dir)
    Pipeline.from_config(chroma).ingest()
    assert snapshot(config)["ids"] == snapshot(chroma)["ids"]
    assert snapshot(config)["record"] == snapshot(chroma)["record"]

    mutate_to_v2(corpus)  # two changed, one deleted, two added: deletes go through the id map
    report = Pipeline.from_config(config).ingest()
    Pipeline.from_config(chroma).ingest()
    ours, theirs = snapshot(config), snapshot(chroma)
    assert ours["ids"] == theirs["ids"] and ours["record"] == theirs["record"]
    assert report.deleted > 0
    reader = Pipeline.from_config(config)
    assert reader.store.faiss.read_index(str(tmp_path / "index" / "test" / "index.faiss")).ntotal == len(ours["ids"])
    hits = reader.as_retriever(k=len(ours["ids"])).invoke("kites")
    assert sorted(d.id for d in hits) == ours["ids"]  # nothing removed comes back, nothing is missing
    assert_exact(reader, "kites", hits)
    np.testing.assert_allclose(
        [d.metadata["score"] for d in hits],
        [d.metadata["score"] for d in Pipeline.from_config(chroma).store.search("kites", k=len(hits))],
        atol=1e-5,
    )
    where = {"source": "bees.txt"}
    filtered = reader.store.search("bees", k=50, where=where)
    assert filtered and {d.metadata["source"] for d in filtered} == {"bees.txt"}


def test_fingerprint_and_distance_guards(corpus, tmp_path, tiny_bge_dir, tiny_bge_other_dir):
    Pipeline.from_config(faiss_config(corpus, tmp_path / "index", tiny_bge_dir)).ingest()
    other = Pipeline.from_config(faiss_config(corpus, tmp_path / "index", tiny_bge_other_dir))
    with pytest.raises(IndexMismatchError, match="index has 'bge-tiny-en-v1.5', config gives 'bge-other-en-v1.5'"):
        other.ingest()
    with pytest.raises(IndexMismatchError):
        other.query("bees")
    l2 = Pipeline.from_config(faiss_config(corpus, tmp_path / "index", tiny_bge_dir, distance="l2"))
    with pytest.raises(IndexMismatchError, match=r"^vectorstore.distance: collection 'test' was built with distance 'cosine'"):
        l2.query("bees")
    bad = Pipeline.from_config(faiss_config(corpus, tmp_path / "bad", tiny_bge_dir, index_factory="IVF4,PQ5"))
    with pytest.raises(ConfigError, match=r"^vectorstore.index_factory: FAISS cannot build 'IVF4,PQ5' for 32-d"):
        bad.ingest()


def test_without_faiss_installed_the_error_says_how_to_install_it(corpus, tmp_path, tiny_bge_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match=r"vectorstore.type: faiss needs the faiss-cpu package; install it with"):
        Pipeline.from_config(faiss_config(corpus, tmp_path / "index", tiny_bge_dir)).store


def test_an_ivf_pq_index_is_trained_once_there_is_enough_to_train_on(tmp_path, tiny_bge_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, {"records.jsonl": jsonl_corpus(40)})
    config = faiss_config(corpus, tmp_path / "index", tiny_bge_dir, index_factory="IVF4,PQ8x4", nprobe=4)
    config["chunker"] = {"type": "none"}
    config["vectorstore"]["write_batch_size"] = 64
    Pipeline.from_config(config).ingest()
    small = Pipeline.from_config(config).store
    small.check()
    small._current_index(small._table())
    assert small._exact  # 40 vectors cannot train 16 PQ codes (FAISS wants 39 each): searched exactly meanwhile
    assert [d.id for d in small.search("Record 3", k=40)] and small.count() == 40

    write_files(corpus, {"records.jsonl": jsonl_corpus(700)})
    Pipeline.from_config(config).ingest()
    reader = Pipeline.from_config(config)
    index = reader.store._current_index(reader.store._table())
    assert not reader.store._exact and index.ntotal == 700 and reader.store._trained_on == 700
    inner = reader.store.faiss.downcast_index(index.index)
    assert type(inner).__name__ == "IndexIVFPQ" and inner.nprobe == 4
    hits = reader.store.search("kites", k=10)
    assert len({d.id for d in hits}) == 10 and {d.id for d in hits} <= reader.store.ids()
    # PQ scores are approximate; refine_factor re-scores the candidates with the stored vectors (here
    # every vector is a candidate, so the result is the exact one)
    refined = Pipeline.from_config(config, overrides={"vectorstore.refine_factor": 70})
    top = refined.store.search("kites", k=10)
    ids = sorted(refined.store.ids())
    exact = refined.store.similarity(np.asarray([refined.embeddings.embed_query("kites")]), refined.store.vectors(ids))[0]
    best = sorted(exact, reverse=True)[:10]
    np.testing.assert_allclose([d.metadata["score"] for d in top], best, atol=1e-6)

    # Another index_factory rebuilds the index from the stored vectors: nothing is embedded again.
    # IVF with every list probed is exact, which checks the training, the id map and the scores.
    config["vectorstore"]["index_factory"] = "IVF4,Flat"
    report = Pipeline.from_config(config).ingest()
    assert report.embedded == 0
    exact = Pipeline.from_config(config)
    assert type(exact.store.faiss.downcast_index(exact.store._current_index(exact.store._table()).index)).__name__ == "IndexIVFFlat"
    assert_exact(exact, "kites", exact.store.search("kites", k=700))


def test_hnsw_skips_removed_chunks_and_compacts_when_many_are_dead(corpus, tmp_path, tiny_bge_dir):
    config = faiss_config(corpus, tmp_path / "index", tiny_bge_dir, index_factory="HNSW8", ef_search=64)
    Pipeline.from_config(config).ingest()
    total = Pipeline.from_config(config).store.count()
    (corpus / "kites.txt").unlink()  # HNSW cannot remove in place
    Pipeline.from_config(config).ingest()
    reader = Pipeline.from_config(config)
    remaining = sorted(reader.store.ids())
    assert len(remaining) < total
    index = reader.store._current_index(reader.store._table())
    assert index.ntotal == len(remaining)  # more than a tenth was dead: compacted at session end
    hits = reader.store.search("kites", k=total)
    assert sorted(d.id for d in hits) == remaining


@pytest.mark.slow
def test_sigkill_of_an_ingest_then_rerun_equals_a_clean_run(corpus, tmp_path, tiny_bge_dir):
    clean = faiss_config(corpus, tmp_path / "clean", tiny_bge_dir)
    crashed = faiss_config(corpus, tmp_path / "index", tiny_bge_dir)
    Pipeline.from_config(clean).ingest()
    Pipeline.from_config(crashed).ingest()
    mutate_to_v2(corpus)
    Pipeline.from_config(clean).ingest()
    path = write_config(crashed, tmp_path / "pipeline.yaml")
    ingest_killed_at(path, "writing:2")
    assert snapshot(crashed)["dirty"]
    assert Pipeline.from_config(crashed).ingest().recovered
    ours, theirs = snapshot(crashed), snapshot(clean)
    assert ours["ids"] == theirs["ids"] and ours["record"] == theirs["record"] and not ours["dirty"]
    reader = Pipeline.from_config(crashed)
    assert_exact(reader, "otters", reader.store.search("otters", k=100))


@pytest.mark.slow
def test_a_long_lived_reader_follows_other_processes_ingest_and_reindex(corpus, tmp_path, tiny_bge_dir):
    config = faiss_config(corpus, tmp_path / "index", tiny_bge_dir)
    path = write_config(config, tmp_path / "pipeline.yaml")
    subprocess.run(cli_command(path, "ingest"), check=True, capture_output=True, timeout=180)
    reader = Pipeline.from_config(config).as_retriever(k=100)
    assert "otters.txt" not in {d.metadata["source"] for d in reader.invoke("otters")}
    write_files(corpus, {"otters.txt": text_about("otters")})
    subprocess.run(cli_command(path, "ingest"), check=True, capture_output=True, timeout=180)
    assert "otters.txt" in {d.metadata["source"] for d in reader.invoke("otters")}
    (corpus / "bees.txt").unlink()
    subprocess.run(cli_command(path, "reindex"), check=True, capture_output=True, timeout=180)
    found = {d.metadata["source"] for d in reader.invoke("otters")}
    assert "otters.txt" in found and "bees.txt" not in found
    assert reader.path.arms[0].index.collection_name == "test.v2"
    assert (tmp_path / "index" / "test").is_dir()  # retired, kept for readers mid-query ...
    assert Pipeline.from_config(config).ingest().added == 0
    assert not (tmp_path / "index" / "test").exists()  # ... and dropped by the next ingest


@pytest.mark.slow
def test_eval_and_hybrid_fusion_on_faiss_equal_chroma_with_a_flat_index(tmp_path):
    from eval_helpers import write_beir

    from rag_pipeline.evaluation import evaluate, load_beir

    dataset = load_beir(write_beir(tmp_path / "tiny"))
    results = {}
    for store in ("chroma", "faiss"):
        config = pipeline_config(
            tmp_path, tmp_path / store, str(MINILM), chunker={"type": "none"}, lexical={"type": "bm25"},
            retriever={"type": "hybrid", "k": 10, "fetch_k": 10},
        )
        config["vectorstore"]["type"] = store
        results[store] = evaluate(config, dataset, show_progress=False)
    for run in ("dense", "bm25"):
        for query, ranking in results["chroma"].arm_runs[run].items():
            ours = results["faiss"].arm_runs[run][query]
            assert list(ours) == list(ranking)
            np.testing.assert_allclose(list(ours.values()), list(ranking.values()), atol=1e-5)
    assert json.dumps(results["faiss"].metrics, sort_keys=True) == json.dumps(results["chroma"].metrics, sort_keys=True)


def test_documents_from_code_stats_and_reindex_work_on_faiss(corpus, tmp_path, tiny_bge_dir, tiny_bge_other_dir):
    """The document API, `stats` and a reindex that carries documents from code read the FAISS
    store through the same calls they make of Chroma."""
    from langchain_core.documents import Document

    config = faiss_config(corpus, tmp_path / "index", tiny_bge_dir)
    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).add_documents([Document(page_content="Emperor penguins huddle in winter.")], source="penguins")
    stats = Pipeline.from_config(config).stats()
    expected = Pipeline.from_config(config).embeddings.fingerprint(load_model=False)
    assert stats["fingerprint"] is not None and expected.items() <= stats["fingerprint"].items()
    config["embeddings"]["model"] = str(tiny_bge_other_dir)
    Pipeline.from_config(config).reindex()
    pipe = Pipeline.from_config(config)
    carried = [s for s in pipe.sources() if s.source == "penguins"]
    assert len(carried) == 1 and carried[0].chunks == 1
    hits = pipe.as_retriever(k=50).invoke("penguins")
    assert "Emperor penguins huddle in winter." in [d.page_content for d in hits]
