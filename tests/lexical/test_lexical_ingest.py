"""Ingest keeps the BM25 index in step with the dense one; reindex gives it a new generation; the
hybrid retriever fuses both arms through ``Pipeline.as_retriever()``."""

from __future__ import annotations

import os
import time

import pytest

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.lexical.bm25 import BUILT_FOLDER, STORE_FILENAME, BM25Index


def write(root, name, text, age=3600):
    path = root / name
    path.write_text(text, encoding="utf-8")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def hybrid_config(corpus, index, model, **retriever):
    return pipeline_config(
        corpus, index, str(model),
        lexical={"type": "bm25"},
        retriever={"type": "hybrid", "k": 3, "fetch_k": 10, "search": "exact", **retriever},
    )


def texts_by_source(pipe):
    lexical = pipe.lexical
    return sorted(d.page_content for d in lexical.documents(sorted(lexical.ids())))


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    write(root, "bees.txt", "Honey bees dance to tell the hive where flowers are.")
    write(root, "tides.txt", "Tides rise and fall twice a day, pulled by the moon.")
    write(root, "tea.txt", "Green tea is steeped at 80 degrees for two minutes.")
    return root


def test_ingest_keeps_bm25_in_step_with_the_dense_index(corpus, tmp_path, tiny_bge_dir, monkeypatch):
    config = hybrid_config(corpus, tmp_path / "index", tiny_bge_dir)
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    folder = tmp_path / "index" / "lexical" / "test"
    assert (folder / STORE_FILENAME).is_file() and len(list((folder / BUILT_FOLDER).iterdir())) == 1
    assert pipe.lexical.ids() == pipe.store.ids() and len(pipe.store.ids()) == 3

    write(corpus, "tea.txt", "Black tea is brewed with boiling water.")  # changed
    (corpus / "bees.txt").unlink()  # deleted
    write(corpus, "kites.txt", "Kites fly on windy beaches.")  # added
    report = Pipeline.from_config(config).ingest()
    assert (report.files_added, report.files_updated, report.files_removed) == (1, 1, 1)
    fresh = Pipeline.from_config(config)  # another process's view: memory-maps the saved matrices
    assert fresh.lexical.ids() == fresh.store.ids()
    assert texts_by_source(fresh) == sorted(
        ["Tides rise and fall twice a day, pulled by the moon.", "Black tea is brewed with boiling water.",
         "Kites fly on windy beaches."]
    )
    arm = fresh.as_retriever().path.arms[1]
    assert {d.metadata["source"] for d in arm.search_batch(["brewed kites"], 5)[0]} == {"kites.txt", "tea.txt"}
    assert arm.search_batch(["honey"], 5)[0] == []  # the deleted file is gone from BM25 too
    assert len(list((folder / BUILT_FOLDER).iterdir())) == 1  # older matrices removed

    builds = []
    original = BM25Index._build
    monkeypatch.setattr(BM25Index, "_build", lambda self, store: builds.append(1) or original(self, store))
    again = Pipeline.from_config(config)
    assert again.ingest().files_unchanged == 3
    again.as_retriever().invoke("moon")
    assert builds == []  # an unchanged re-ingest rebuilds nothing, and a reader loads the saved index


def test_adding_a_lexical_section_to_an_existing_index_fills_it(corpus, tmp_path, tiny_bge_dir):
    dense_only = pipeline_config(corpus, tmp_path / "index", str(tiny_bge_dir))
    Pipeline.from_config(dense_only).ingest()
    pipe = Pipeline.from_config(hybrid_config(corpus, tmp_path / "index", tiny_bge_dir))
    report = pipe.ingest()
    assert report.recovered and report.embedded == 0  # vectors came from the embedding cache
    assert pipe.lexical.ids() == pipe.store.ids() and len(pipe.lexical.ids()) == 3


def test_reindex_builds_a_new_lexical_generation(corpus, tmp_path, tiny_bge_dir):
    config = hybrid_config(corpus, tmp_path / "index", tiny_bge_dir)
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    reader = Pipeline.from_config(config).as_retriever()
    assert reader.invoke("moon")[0].metadata["source"] == "tides.txt"
    pipe.reindex()
    lexical_root = tmp_path / "index" / "lexical"
    assert pipe.store.collection_name == pipe.lexical.collection_name == "test.v2"
    assert (lexical_root / "test.v2" / STORE_FILENAME).is_file()
    assert pipe.lexical.ids() == pipe.store.ids()
    # the long-lived reader follows the switch; the retired generation is dropped by the next ingest
    assert reader.invoke("moon")[0].metadata["source"] == "tides.txt"
    assert reader.path.arms[1].index.collection_name == "test.v2"
    Pipeline.from_config(config).ingest()
    assert sorted(p.name for p in lexical_root.iterdir()) == ["test.v2"]


@pytest.mark.parametrize("method", ["convex", "rrf"])
def test_hybrid_retriever_returns_fused_scores_and_per_arm_metadata(corpus, tmp_path, tiny_bge_dir, method):
    pipe = Pipeline.from_config(hybrid_config(corpus, None, tiny_bge_dir, fusion={"method": method}))
    pipe.ingest()
    results = pipe.as_retriever(k=3).invoke("green tea steeped")
    assert len(results) == 3
    top = results[0]
    assert top.metadata["source"] == "tea.txt"  # the only exact-term match, whatever the random model says
    assert top.metadata["bm25_rank"] == 1 and top.metadata["bm25_score"] > 0
    assert {"dense_rank", "dense_score"} <= top.metadata.keys()
    assert all("bm25_rank" not in d.metadata for d in results[1:])  # nothing else shares a word
    assert [d.metadata["score"] for d in results] == sorted((d.metadata["score"] for d in results), reverse=True)
    if method == "convex":  # minmax, equal weights: bm25's only hit is its best (1) + dense's min-max share
        assert top.metadata["score"] == pytest.approx(0.5 + 0.5 * _minmax(results, top))


def _minmax(results, top):
    dense = [d.metadata["dense_score"] for d in results]
    return (top.metadata["dense_score"] - min(dense)) / (max(dense) - min(dense))


def test_bm25_alone_and_with_a_filter(corpus, tmp_path, tiny_bge_dir):
    pipe = Pipeline.from_config(hybrid_config(corpus, None, tiny_bge_dir, arms=["bm25"]))
    pipe.ingest()
    results = pipe.as_retriever().invoke("the moon and the tea")
    assert sorted(d.metadata["source"] for d in results) == ["tea.txt", "tides.txt"]  # bees shares no word
    assert all(d.metadata["score"] > 0 for d in results)
    filtered = Pipeline.from_config(
        hybrid_config(corpus, None, tiny_bge_dir, filter={"source": "tea.txt"})
    )
    filtered.ingest()
    assert {d.metadata["source"] for d in filtered.as_retriever().invoke("moon tea")} == {"tea.txt"}


def test_a_lexical_section_added_after_ingest_asks_for_an_ingest(corpus, tmp_path, tiny_bge_dir):
    from rag_pipeline.errors import IndexNotFoundError

    Pipeline.from_config(pipeline_config(corpus, tmp_path / "index", str(tiny_bge_dir))).ingest()
    pipe = Pipeline.from_config(hybrid_config(corpus, tmp_path / "index", tiny_bge_dir))
    with pytest.raises(IndexNotFoundError, match=r"^no lexical index for collection 'test' .*run `rag-pipeline ingest CONFIG`"):
        pipe.as_retriever()
    assert not (tmp_path / "index" / "lexical").exists()  # creates nothing


def test_an_empty_corpus_leaves_an_empty_lexical_index(tmp_path, tiny_bge_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    pipe = Pipeline.from_config(hybrid_config(empty, tmp_path / "index", tiny_bge_dir))
    pipe.ingest()
    assert pipe.lexical.exists() and pipe.lexical.count() == 0


def test_reindex_in_memory_keeps_bm25(corpus, tiny_bge_dir):
    pipe = Pipeline.from_config(hybrid_config(corpus, None, tiny_bge_dir, arms=["bm25"]))
    pipe.ingest()
    pipe.reindex()
    assert pipe.lexical.collection_name == "test.v2"
    assert [d.metadata["source"] for d in pipe.as_retriever().invoke("moon")] == ["tides.txt"]


def test_query_prints_where_each_arm_ranked_a_fused_result(capsys):
    from langchain_core.documents import Document

    from rag_pipeline.cli import _print_results

    fused = Document(page_content="tides", metadata={"score": 0.75, "dense_rank": 2, "bm25_rank": 1, "doc_id": "t"}, id="t")
    dense_only = Document(page_content="moon", metadata={"score": 0.5, "dense_rank": 1, "doc_id": "m"}, id="m")
    _print_results("q", [fused, dense_only])
    out = capsys.readouterr().out
    assert "[score=0.750 dense#2 bm25#1] t" in out and "[score=0.500 dense#1 bm25#-] m" in out


def test_the_reranker_reranks_the_fused_list(corpus, tiny_bge_dir, tiny_reranker_dir):
    config = hybrid_config(corpus, None, tiny_bge_dir)
    config["reranker"] = {"model": str(tiny_reranker_dir), "top_n": 2}
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    retriever = pipe.as_retriever()
    candidates = retriever.candidates("moon tides")
    assert len(candidates) == 3 and candidates[0].metadata["bm25_rank"] == 1  # the fused list, all 3 chunks
    results = retriever.invoke("moon tides")
    assert len(results) == 2
    assert all("rerank_score" in d.metadata and "dense_rank" in d.metadata for d in results)
    scores = {d.id: d.metadata["rerank_score"] for d in pipe.reranker.rank("moon tides", candidates)}
    assert [d.id for d in results] == sorted(scores, key=scores.get, reverse=True)[:2]
