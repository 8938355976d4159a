"""A BM25 hit is a chunk that holds a term of the query, whatever its score's sign or size:
``method: robertson`` gives a term found in more than half the chunks no positive weight (its idf
is negative; bm25s floors it at 0) and such a chunk is still a match, and ``bm25l`` / ``bm25+`` give every chunk a score (and one that holds no
term of the query is still no match)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from conftest import pipeline_config
from rag_pipeline import Pipeline

NOTES = {
    "tides": "The harbour empties at low tide and the boats sit on the mud.",
    "gulls": "Gulls circle the harbour looking for scraps from the fishing boats.",
    "ferry": "The ferry leaves the harbour at seven and returns at noon.",
    "lamp": "The lighthouse lamp turns once every ten seconds through the night.",
}


def bm25_retriever(tmp_path, model, method: str):
    (tmp_path / "corpus").mkdir()
    config = pipeline_config(
        tmp_path / "corpus", tmp_path / "index", str(model),
        lexical={"type": "bm25", "method": method},
        retriever={"type": "hybrid", "arms": ["bm25"], "k": 10},
    )
    pipe = Pipeline.from_config(config)
    pipe.add_documents([Document(page_content=text) for text in NOTES.values()], source="notes")
    return pipe.as_retriever()


def topics(hits: list[Document]) -> list[str]:
    return [next(topic for topic, text in NOTES.items() if text == hit.page_content) for hit in hits]


def test_robertson_finds_the_chunks_that_hold_a_term_most_chunks_hold(tmp_path, tiny_bge_dir):
    retriever = bm25_retriever(tmp_path, tiny_bge_dir, "robertson")
    hits = retriever.invoke("harbour")  # in three chunks of four: a weight of 0 or below
    assert sorted(topics(hits)) == ["ferry", "gulls", "tides"]
    assert all(hit.metadata["score"] <= 0 for hit in hits)
    # a rarer term outweighs it, and a chunk holding only the common term still ranks, below
    mixed = retriever.invoke("harbour lighthouse")
    assert topics(mixed)[0] == "lamp" and sorted(topics(mixed)[1:]) == ["ferry", "gulls", "tides"]


@pytest.mark.parametrize("method", ["bm25+", "bm25l"])
def test_a_chunk_without_a_term_of_the_query_is_no_hit_whatever_it_scores(tmp_path, tiny_bge_dir, method):
    retriever = bm25_retriever(tmp_path, tiny_bge_dir, method)
    assert topics(retriever.invoke("lighthouse")) == ["lamp"]
    assert retriever.invoke("volcano") == []
