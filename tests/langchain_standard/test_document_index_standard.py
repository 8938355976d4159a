"""LangChain's ``DocumentIndexerTestSuite`` and its async twin (``langchain-tests``) for
``Pipeline.as_document_index()``: the recorded vector store behind ``pipe.vectorstore`` as a
(beta) ``DocumentIndex``, with the packaged all-MiniLM-L6-v2 and a real Chroma in a temporary
folder. Every test of both suites applies: none is skipped or expected to fail."""

from __future__ import annotations

from typing import AsyncIterator, Iterator

import pytest
from conftest import MINILM, pipeline_config
from langchain_core.indexing.base import DocumentIndex
from langchain_tests.integration_tests.indexer import AsyncDocumentIndexTestSuite, DocumentIndexerTestSuite

from rag_pipeline import Pipeline


def _empty_pipeline(tmp_path) -> Pipeline:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    return Pipeline.from_config(pipeline_config(corpus, tmp_path / "index", MINILM))


class TestIndexedDocumentIndex(DocumentIndexerTestSuite):
    @pytest.fixture
    def index(self, tmp_path) -> Iterator[DocumentIndex]:
        pipe = _empty_pipeline(tmp_path)
        yield pipe.as_document_index()
        assert not pipe.ingest().recovered  # what was written is recorded: the next ingest keeps it


class TestIndexedDocumentIndexAsync(AsyncDocumentIndexTestSuite):
    @pytest.fixture
    async def index(self, tmp_path) -> AsyncIterator[DocumentIndex]:
        pipe = _empty_pipeline(tmp_path)
        yield pipe.as_document_index()
        assert not pipe.ingest().recovered
