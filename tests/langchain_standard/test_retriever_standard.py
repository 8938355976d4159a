"""LangChain's standard retriever suite (langchain-tests) against the pipeline's retriever, for each
retriever the package offers: dense, hybrid (dense + BM25), BM25 alone (``hybrid`` with one arm)
dense reranked by a cross-encoder (the tiny random one: the suite checks behaviour, not
quality), and BGE-M3's dense + sparse + ColBERT retriever (on the tiny random bge-m3). Real objects: the packaged all-MiniLM-L6-v2 and a persistent Chroma in a temp folder,
ingested once for the module. No test is skipped or expected to fail.

``retriever_constructor`` is ``Pipeline.as_retriever`` of a pipeline over that index (the suite
calls it with ``k=``), which is how a user constructs one.
"""

from pathlib import Path

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from conftest import MINILM, pipeline_config
from rag_pipeline import Pipeline

# Every document shares the query's words, so BM25 alone (which returns only chunks with a
# positive score) has at least the 3 results the suite asks for.
CORPUS = {
    "tea.md": "Green tea wants water at 80 degrees; boiling water makes it bitter.",
    "plants.txt": "Water houseplants when the top of the soil is dry; too much water rots roots.",
    "tides.txt": "Tides move sea water twice a day, pulled by the moon.",
    "camping.md": "Boil stream water for a minute, or filter it, before drinking it on a hike.",
    "bread.md": "Sourdough needs flour, salt, a starter and warm water, then a long proof.",
    "bees.txt": "Honey bees carry water back to the hive to cool it on hot days.",
}


def _ingested_water(tmp_path_factory, name: str, model: str, **sections) -> dict:
    """A config over CORPUS, ingested once."""
    corpus = tmp_path_factory.mktemp(f"{name}-corpus")
    for file_name, text in CORPUS.items():
        (corpus / file_name).write_text(text + "\n", encoding="utf-8")
    config = pipeline_config(corpus, tmp_path_factory.mktemp(f"{name}-index"), model, **sections)
    Pipeline.from_config(config).ingest()
    return config


@pytest.fixture(scope="module")
def water_index(tmp_path_factory, tiny_reranker_dir) -> dict:
    config = _ingested_water(
        tmp_path_factory, "water", MINILM,
        embeddings={"type": "bge", "model": MINILM, "device": "cpu", "show_progress": False},
        lexical={"type": "bm25"},
    )
    return {"config": config, "reranker_dir": Path(tiny_reranker_dir)}


class _PipelineRetrieverTests(RetrieversIntegrationTests):
    """The suite over ``Pipeline.as_retriever`` with the config sections ``overrides`` returns."""

    @pytest.fixture(autouse=True)
    def _pipeline(self, water_index):
        self.pipeline = Pipeline.from_config({**water_index["config"], **self.overrides(water_index)})

    def overrides(self, water_index: dict) -> dict:
        raise NotImplementedError

    @property
    def retriever_constructor(self):
        return self.pipeline.as_retriever

    @property
    def retriever_query_example(self) -> str:
        return "how hot should the water be"


class TestDenseRetrieverStandard(_PipelineRetrieverTests):
    def overrides(self, water_index):
        return {"retriever": {"type": "dense", "k": 4}}


class TestHybridRetrieverStandard(_PipelineRetrieverTests):
    def overrides(self, water_index):
        return {"retriever": {"type": "hybrid", "arms": ["dense", "bm25"], "k": 4}}


class TestBm25RetrieverStandard(_PipelineRetrieverTests):
    def overrides(self, water_index):
        return {"retriever": {"type": "hybrid", "arms": ["bm25"], "k": 4}}


class TestRerankedRetrieverStandard(_PipelineRetrieverTests):
    def overrides(self, water_index):
        reranker = {"type": "bge-reranker", "model": str(water_index["reranker_dir"]), "device": "cpu"}
        return {"reranker": reranker, "retriever": {"type": "dense", "k": 4, "fetch_k": 6}}


@pytest.fixture(scope="module")
def water_index_m3(tmp_path_factory, tiny_bge_m3_dir) -> dict:
    return _ingested_water(
        tmp_path_factory, "water-m3", str(tiny_bge_m3_dir),
        embeddings={"type": "bge-m3", "model": str(tiny_bge_m3_dir), "show_progress": False},
        lexical={"type": "m3-sparse"},
        retriever={"type": "bge-m3", "k": 4},
    )


class TestBgeM3RetrieverStandard(_PipelineRetrieverTests):
    @pytest.fixture(autouse=True)
    def _pipeline(self, water_index_m3):  # its own index (another model), not water_index with overrides
        self.pipeline = Pipeline.from_config(water_index_m3)
