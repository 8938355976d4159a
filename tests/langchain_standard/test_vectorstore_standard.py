"""LangChain's own standard suite (``langchain-tests``) for the record-aware vector store behind
``pipe.vectorstore`` / ``Pipeline.as_vectorstore()``: real objects, the packaged all-MiniLM-L6-v2
and a real persistent Chroma in a temporary folder, a fresh empty index per test.

The suite only needs embeddings under which a text is nearest to itself; it offers its own fake
ones (``get_embeddings``), but the store must run with the pipeline's embeddings (the collection
records their fingerprint), so the real model is used. Every test of the suite applies: none is
skipped or expected to fail.
"""

from __future__ import annotations

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
