"""The BM25 index on its own: what it finds, how it is kept, what a config may say."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from rag_pipeline.config import load_config
from rag_pipeline.errors import ConfigError
from rag_pipeline.lexical.bm25 import BUILT_FOLDER, BM25Config, BM25Index
from rag_pipeline.metadata import matches

TEXTS = {
    "a": "Honey bees dance to tell the hive where the flowers are.",
    "b": "Tides rise and fall twice a day, pulled by the moon.",
    "c": "Green tea is steeped at 80 degrees for two minutes.",
    "d": "The moon has no air; astronauts walked on the moon in 1969.",
}


def chunks(texts: dict[str, str] = TEXTS) -> list[Document]:
    return [Document(page_content=t, metadata={"doc_id": key, "topic": key.upper()}, id=key) for key, t in texts.items()]


def index_of(root, texts=TEXTS, **settings) -> BM25Index:
    index = BM25Index(BM25Config(**settings))
    index.place(root, "test")
    with index.writing():
        index.upsert_texts(chunks(texts))
    return index


@pytest.mark.parametrize("persistent", [True, False])
def test_an_exact_term_match_ranks_first_and_non_matches_are_no_hits(tmp_path, persistent):
    index = index_of(tmp_path / "lexical" if persistent else None)
    [hits] = index.search_batch_text(["when was the moon walked on"], k=10)
    assert [d.id for d in hits] == ["d", "b"]  # "moon" twice and "walked" beat "moon" once; a, c share nothing
    assert hits[0].metadata["score"] > hits[1].metadata["score"] > 0
    assert hits[0].page_content == TEXTS["d"] and hits[0].metadata["doc_id"] == "d"


def test_stemming_and_stopwords_follow_the_config(tmp_path):
    stemmed = index_of(None)
    assert [d.id for d in stemmed.search_batch_text(["steeping"], 5)[0]] == ["c"]  # steeping ~ steeped
    plain = index_of(None, stemmer=None)
    assert plain.search_batch_text(["steeping"], 5)[0] == []
    # "the" is an English stopword: alone it finds nothing; without stopwords it finds the three that hold it
    assert stemmed.search_batch_text(["the"], 5)[0] == []
    assert {d.id for d in index_of(None, stopwords=None).search_batch_text(["the"], 5)[0]} == {"a", "b", "d"}


def test_k1_and_b_change_scores(tmp_path):
    default = index_of(None).search_batch_text(["moon"], 5)[0]
    flat = index_of(None, k1=0.0).search_batch_text(["moon"], 5)[0]
    # k1 = 0: term frequency does not count, so both moon chunks score the idf alone... up to length
    assert flat[0].metadata["score"] == pytest.approx(flat[1].metadata["score"])
    assert default[0].metadata["score"] != pytest.approx(default[1].metadata["score"])


def test_saved_index_is_memory_mapped_by_another_process_view(tmp_path):
    root = tmp_path / "lexical"
    index_of(root)
    built = list((root / "test" / BUILT_FOLDER).iterdir())
    assert len(built) == 1 and (built[0] / "ids.json").is_file()
    reader = BM25Index(BM25Config())
    reader.place(root, "test")
    [hits] = reader.search_batch_text(["tea"], 3)
    assert [d.id for d in hits] == ["c"]
    import numpy as np

    assert isinstance(reader._built.model.scores["data"], np.memmap)


def test_a_write_rebuilds_and_keeps_only_the_current_matrices(tmp_path):
    root = tmp_path / "lexical"
    index = index_of(root)
    with index.writing():
        index.delete(["d"])
        index.upsert_texts([Document(page_content="Kites fly on windy beaches.", metadata={"doc_id": "e"}, id="e")])
    assert [d.id for d in index.search_batch_text(["moon"], 5)[0]] == ["b"]
    assert [d.id for d in index.search_batch_text(["kites"], 5)[0]] == ["e"]
    assert len(list((root / "test" / BUILT_FOLDER).iterdir())) == 1
    assert index.ids() == {"a", "b", "c", "e"} and index.count() == 4


def test_an_unfinished_write_session_is_rebuilt_by_the_reader(tmp_path):
    """A writer killed before its session ended leaves matrices older than the store: a reader
    builds the current ones itself."""
    root = tmp_path / "lexical"
    index_of(root)
    writer = BM25Index(BM25Config())
    writer.place(root, "test")
    writer.delete(["d"])  # outside writing(): nothing rebuilt
    reader = BM25Index(BM25Config())
    reader.place(root, "test")
    assert [d.id for d in reader.search_batch_text(["moon"], 5)[0]] == ["b"]


def test_changed_settings_need_no_reindex(tmp_path):
    root = tmp_path / "lexical"
    index_of(root)
    other = BM25Index(BM25Config(stemmer=None))
    other.place(root, "test")
    assert other.search_batch_text(["steeping"], 5)[0] == []
    assert [d.id for d in other.search_batch_text(["steeped"], 5)[0]] == ["c"]


def test_filter_in_chromas_where_syntax():
    index = index_of(None)
    assert [d.id for d in index.search_batch_text(["moon"], 5, {"topic": "B"})[0]] == ["b"]
    assert [d.id for d in index.search_batch_text(["moon"], 5, {"topic": {"$in": ["D", "A"]}})[0]] == ["d"]
    assert index.ids({"$or": [{"topic": "A"}, {"topic": {"$eq": "C"}}]}) == {"a", "c"}
    assert matches({"n": 3}, {"$and": [{"n": {"$gte": 3}}, {"n": {"$lt": 4}}]})
    assert not matches({"n": 3}, {"n": {"$ne": 3}})
    with pytest.raises(ConfigError, match=r"retriever.filter: unsupported operator '\$contains'"):
        matches({}, {"x": {"$contains": "y"}})


def test_ties_break_by_id_descending_and_k_cuts():
    index = index_of(None, texts={"x1": "same words here", "x2": "same words here", "x3": "same words here"})
    [hits] = index.search_batch_text(["words"], 2)
    assert [d.id for d in hits] == ["x3", "x2"]


def test_an_empty_index_and_an_empty_query_find_nothing(tmp_path):
    empty = BM25Index(BM25Config())
    empty.place(tmp_path / "lexical", "test")
    assert empty.search_batch_text(["moon"], 3) == [[]]
    assert not (tmp_path / "lexical").exists()  # a reader creates nothing
    assert index_of(None).search_batch_text(["", "zzz unknown"], 3) == [[], []]


def test_bad_settings_are_one_line_config_errors(tmp_path):
    base = {"loader": {"path": str(tmp_path)}, "embeddings": {"model": "x"}}
    with pytest.raises(ConfigError, match=r"^lexical.stemmer: unknown stemmer language 'klingon'"):
        load_config({**base, "lexical": {"stemmer": "klingon"}})
    with pytest.raises(ConfigError, match=r"^lexical.stopwords: no stopword list for 'elvish'"):
        load_config({**base, "lexical": {"stopwords": "elvish"}})
    with pytest.raises(ConfigError, match=r"^lexical.b: "):
        load_config({**base, "lexical": {"b": 2}})
    with pytest.raises(ConfigError, match=r"^retriever.arms: the bm25 arm needs a `lexical:` section"):
        load_config({**base, "retriever": {"type": "hybrid"}})


def test_chunks_without_any_indexable_word_are_held_and_never_hit():
    index = index_of(None, texts={"a": "the a an of", "b": "moon landing", "c": ""})
    assert index.count() == 3
    assert [[d.id for d in hits] for hits in index.search_batch_text(["moon", "the"], 5)] == [["b"], []]


def test_a_dense_only_process_does_not_import_bm25s():
    """bm25s brings numba and scipy (~0.3 s of every command's start-up); the lexical stage is
    registered in every process, but only a pipeline with a lexical section imports them."""
    import subprocess
    import sys

    probe = (
        "import sys, rag_pipeline.cli; from rag_pipeline.config import load_config; "
        "load_config({'loader': {'type': 'directory', 'path': '.'}, 'embeddings': {'type': 'bge', 'model': 'x'}}); "
        "print(sorted(m for m in ('bm25s', 'numba') if m in sys.modules)); "
        "load_config({'loader': {'type': 'directory', 'path': '.'}, 'embeddings': {'type': 'bge', 'model': 'x'}, 'lexical': {'type': 'bm25', 'stopwords': 'english'}}); "
        "print(sorted(m for m in ('bm25s', 'numba') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert "bm25s" in out[1]  # the stopword list is validated against bm25s's own
