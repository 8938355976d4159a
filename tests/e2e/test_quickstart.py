"""End to end with the real all-MiniLM-L6-v2 on the sample corpus: retrieval quality, for real."""

import asyncio
import json

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda

from conftest import QUICKSTART_OVERRIDES
from rag_pipeline import Pipeline


@pytest.fixture(scope="module")
def quickstart(repo_root, quickstart_index):
    """The quickstart pipeline over its index, and the report of the ingest that built it (once for
    the session: conftest.quickstart_index)."""
    index, report = quickstart_index
    pipe = Pipeline.from_yaml(
        repo_root / "configs" / "quickstart.yaml",
        overrides={**QUICKSTART_OVERRIDES, "vectorstore.persist_directory": str(index)},
    )
    return pipe, report


def _sample_queries(repo_root):
    lines = (repo_root / "data" / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_ingest_reads_the_whole_sample_corpus(quickstart):
    _, report = quickstart
    assert report.errors == []
    assert report.files_loaded == report.files_seen >= 20
    assert report.documents >= 30
    assert report.added == report.chunks == report.collection_count
    assert report.truncated == 0  # token chunks sized to the model's limit


def test_every_sample_query_finds_its_document_in_the_top_3(quickstart, repo_root):
    pipe, _ = quickstart
    samples = _sample_queries(repo_root)
    assert len(samples) >= 30
    retriever = pipe.as_retriever(k=3)
    results = retriever.batch([s["query"] for s in samples])
    misses = [
        (s["query"], s["expected"], [d.metadata["doc_id"] for d in docs])
        for s, docs in zip(samples, results)
        if s["expected"] not in {d.metadata["doc_id"] for d in docs}
    ]
    assert misses == []


def test_retriever_is_a_langchain_citizen(quickstart):
    pipe, _ = quickstart
    retriever = pipe.as_retriever()
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("how do I fix a punctured bike tyre?")
    assert len(docs) == 3  # retriever.k in the quickstart
    assert docs[0].metadata["source"] == "guides/bicycle-maintenance.md"
    for key in ("source", "doc_id", "chunk_index", "start_index", "score"):
        assert key in docs[0].metadata
    assert asyncio.run(retriever.ainvoke("how do I fix a punctured bike tyre?")) == docs
    chain = retriever | RunnableLambda(lambda found: "\n\n".join(d.page_content for d in found))
    context = chain.invoke("how do I fix a punctured bike tyre?")
    assert docs[0].page_content in context


def test_k_is_honoured(quickstart):
    pipe, _ = quickstart
    assert len(pipe.as_retriever(k=7).invoke("volcano")) == 7
    assert len(pipe.query("volcano", k=1)) == 1
