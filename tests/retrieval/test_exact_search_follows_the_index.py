"""``retriever.search: exact`` answers from the index as it is now: a long-lived retriever (the
server keeps them) finds documents added after its first query and never returns deleted ones,
whether the change came through the same pipeline or another one over the same folder (another
process, as far as the index can tell)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from conftest import pipeline_config
from rag_pipeline import Pipeline

BEES = "Honey bees dance in the hive to tell the others where the flowers are."
TIDES = "Tides rise and fall twice a day, pulled by the moon across the harbour."
TIDES_AGAIN = "Spring tides are the highest tides, when the sun and the moon pull together."


def exact_config(tmp_path, model, store: str, persistent: bool, retriever_type: str) -> dict:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    index = tmp_path / "index" if persistent else None
    config = pipeline_config(
        corpus, index, str(model),
        retriever={"type": retriever_type, "k": 10, "search": "exact"},
    )
    config["vectorstore"]["type"] = store
    if retriever_type == "hybrid":
        config["lexical"] = {"type": "bm25"}
    return config


def sources_of(hits: list[Document]) -> set[str]:
    """The hits' sources, each checked to be a dense hit: k is above the chunk count, so the dense
    arm returns every chunk it sees, and in a hybrid the BM25 arm must not stand in for it."""
    assert all("dense_rank" in hit.metadata for hit in hits if "bm25_rank" in hit.metadata)
    return {hit.metadata["source"] for hit in hits}


def texts_of(hits: list[Document]) -> str:
    return " ".join(hit.page_content for hit in hits)


def _stores() -> list[str]:
    """Chroma, and FAISS where faiss-cpu (an optional extra) is installed."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return ["chroma"]
    return ["chroma", "faiss"]


@pytest.mark.parametrize("store", _stores())
@pytest.mark.parametrize("persistent", [True, False], ids=["folder", "in-memory"])
@pytest.mark.parametrize("retriever_type", ["dense", "hybrid"])
def test_a_kept_retriever_sees_what_its_pipeline_adds_and_deletes(tmp_path, tiny_bge_dir, store, persistent, retriever_type):
    pipe = Pipeline.from_config(exact_config(tmp_path, tiny_bge_dir, store, persistent, retriever_type))
    pipe.add_documents([Document(page_content=BEES)], source="notes/bees")
    retriever = pipe.as_retriever()
    assert sources_of(retriever.invoke("moon tides")) == {"notes/bees"}  # fills the snapshot

    pipe.add_documents([Document(page_content=TIDES)], source="notes/tides")
    assert sources_of(retriever.invoke("moon tides")) == {"notes/bees", "notes/tides"}

    pipe.add_documents([Document(page_content=TIDES_AGAIN)], source="notes/tides")  # replaces the source's text
    hits = retriever.invoke("moon tides")
    assert sources_of(hits) == {"notes/bees", "notes/tides"}
    assert TIDES_AGAIN in texts_of(hits) and TIDES not in texts_of(hits)

    pipe.delete(source="notes/tides")
    hits = retriever.invoke("moon tides")
    assert sources_of(hits) == {"notes/bees"}
    assert "tides" not in texts_of(hits).lower()


@pytest.mark.parametrize("store", _stores())
@pytest.mark.parametrize("retriever_type", ["dense", "hybrid"])
def test_a_kept_retriever_sees_what_another_pipeline_over_the_folder_adds_and_deletes(
    tmp_path, tiny_bge_dir, store, retriever_type
):
    config = exact_config(tmp_path, tiny_bge_dir, store, True, retriever_type)
    Pipeline.from_config(config).add_documents([Document(page_content=BEES)], source="notes/bees")
    retriever = Pipeline.from_config(config).as_retriever()
    assert sources_of(retriever.invoke("moon tides")) == {"notes/bees"}

    writer = Pipeline.from_config(config)
    writer.add_documents([Document(page_content=TIDES)], source="notes/tides")
    hits = retriever.invoke("moon tides")
    assert sources_of(hits) == {"notes/bees", "notes/tides"} and TIDES in texts_of(hits)

    Pipeline.from_config(config).delete(source="notes/tides")
    hits = retriever.invoke("moon tides")
    assert sources_of(hits) == {"notes/bees"}
    assert TIDES not in texts_of(hits)
