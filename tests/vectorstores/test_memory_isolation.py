"""Two in-memory indexes in one process are two indexes: Chroma keeps every in-memory client of a
process in one store, so each in-memory index gets a database of its own."""

from __future__ import annotations

from langchain_core.documents import Document

from rag_pipeline import Pipeline


def test_two_in_memory_pipelines_never_see_each_others_chunks(tmp_path, tiny_bge_dir):
    from conftest import pipeline_config

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "bees.txt").write_text("Bees dance to tell where the flowers are. " * 5, encoding="utf-8")
    config = pipeline_config(tmp_path / "corpus", None, str(tiny_bge_dir))
    first, second = Pipeline.from_config(config), Pipeline.from_config(config)
    first.ingest()
    second.add_documents([Document(page_content="Tides follow the moon.")], source="notes")

    assert {d.metadata["source"] for d in first.as_retriever(k=10).invoke("bees")} == {"bees.txt"}
    assert {d.metadata["source"] for d in second.as_retriever(k=10).invoke("bees")} == {"notes"}
    second.ingest()  # reconciling the second index leaves the first one whole
    assert first.store.count() == len(first.store.ids()) > 0
    assert {d.metadata["source"] for d in first.as_retriever(k=10).invoke("bees")} == {"bees.txt"}
