"""LangChain's own standard suite (``langchain-tests``) for the record-aware vector store behind
``pipe.vectorstore`` / ``Pipeline.as_vectorstore()``: real objects, the packaged all-MiniLM-L6-v2
and a real persistent Chroma in a temporary folder, a fresh empty index per test.

The suite only needs embeddings under which a text is nearest to itself; it offers its own fake
ones (``get_embeddings``), but the store must run with the pipeline's embeddings (the collection
records their fingerprint), so the real model is used. Every test of the suite applies: none is
skipped or expected to fail.
"""

from __future__ import annotations

import importlib.util
from typing import Iterator

import pytest
from conftest import MINILM, pipeline_config
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from rag_pipeline import Pipeline


class TestIndexedVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path) -> Iterator[VectorStore]:
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        pipe = Pipeline.from_config(pipeline_config(corpus, tmp_path / "index", MINILM))
        store = pipe.as_vectorstore()
        yield store
        # the next ingest keeps what was added from code: the index holds what the record lists
        assert not pipe.ingest().recovered


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu is not installed (pip install 'rag-pipeline[faiss]')")
class TestIndexedVectorStoreOnFaiss(VectorStoreIntegrationTests):
    """The same suite with ``vectorstore.type: faiss`` (exact ``Flat`` index) behind the record."""

    @pytest.fixture
    def vectorstore(self, tmp_path) -> Iterator[VectorStore]:
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        config = pipeline_config(corpus, tmp_path / "index", MINILM)
        config["vectorstore"] = {"type": "faiss", "persist_directory": str(tmp_path / "index"), "collection": "test"}
        pipe = Pipeline.from_config(config)
        yield pipe.as_vectorstore()
        assert not pipe.ingest().recovered
