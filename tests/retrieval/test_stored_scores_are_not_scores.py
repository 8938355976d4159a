"""Scores in results come from the retrieval path, never from stored metadata: a document stored
with ``rerank_score``, ``bm25_rank``, ``score``, ... fields gets none of them reported as a score
(the server's ``ranked_by`` follows ``rerank_score``, so a stored one would flip it)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.retrieval import SCORE_KEYS

# Values no retrieval path computes: cosines and fused scores are at most 1, ranks here at most 2,
# BM25 (lucene) scores are never negative, and no reranker is configured.
STORED = {
    "score": 1000.0, "dense_score": 5.0, "dense_rank": 77, "bm25_score": -3.0, "bm25_rank": 99,
    "sparse_score": 4.0, "sparse_rank": 55, "colbert_score": 6.0, "rerank_score": 99.0,
}
NOTES = [
    "Tides rise and fall twice a day, pulled by the moon.",
    "The moon has no air; astronauts walked on the moon in 1969.",
]


def test_every_score_key_is_stored_by_the_test():
    assert set(STORED) == set(SCORE_KEYS)


@pytest.mark.parametrize(
    "retriever",
    [
        {"type": "dense", "k": 5},
        {"type": "dense", "k": 5, "search": "exact"},
        {"type": "hybrid", "k": 5},
        {"type": "hybrid", "arms": ["bm25"], "k": 5},
    ],
    ids=["dense-ann", "dense-exact", "hybrid", "bm25"],
)
def test_stored_score_fields_never_come_back_as_scores(tmp_path, tiny_bge_dir, retriever):
    (tmp_path / "corpus").mkdir()
    config = pipeline_config(tmp_path / "corpus", tmp_path / "index", str(tiny_bge_dir), lexical={"type": "bm25"}, retriever=retriever)
    pipe = Pipeline.from_config(config)
    pipe.add_documents([Document(page_content=text, metadata={**STORED, "author": "me"}) for text in NOTES], source="notes")

    hits = pipe.as_retriever().invoke("the moon")

    assert len(hits) == 2
    for hit in hits:
        assert hit.metadata["author"] == "me"  # the document's own fields are kept
        reported = {key: hit.metadata[key] for key in SCORE_KEYS if key in hit.metadata}
        assert not any(reported.get(key) == value for key, value in STORED.items()), reported
        assert "rerank_score" not in reported and "sparse_score" not in reported  # no reranker, no BGE-M3
        assert -1.0 <= reported["score"] <= 1.0 or retriever.get("arms") == ["bm25"]
        for arm in ("dense", "bm25"):  # a rank reported is the arm's own (fusion reports them)
            assert reported.get(f"{arm}_rank", 1) in (1, 2)
