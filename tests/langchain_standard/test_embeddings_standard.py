"""LangChain's standard embeddings suite (langchain-tests) against BgeEmbeddings on the packaged
all-MiniLM-L6-v2: the sync and the async methods (``aembed_*``: LangChain's default, run in an
executor; pytest-asyncio in auto mode runs them). No test is skipped or expected to fail."""

from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from conftest import MINILM
from rag_pipeline.embeddings import BgeEmbeddings

class TestBgeEmbeddingsStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[BgeEmbeddings]:
        return BgeEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": MINILM, "device": "cpu", "show_progress": False}
