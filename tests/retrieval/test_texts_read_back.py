"""A path of several arms searches them without texts and reads back the texts of what fusion
kept (``RetrievalPath.with_texts``): the results must be the same chunks, texts and metadata as a
search that carries the texts all along, whichever index the texts come from."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from conftest import pipeline_config
from rag_pipeline import Pipeline

NOTES = [
    "Tides rise and fall twice a day, pulled by the moon.",
    "The moon has no air; astronauts walked on the moon in 1969.",
    "Sourdough needs a starter fed with flour and water.",
    "A long proof in the fridge gives sourdough its sour taste.",
    "Bees carry pollen from flower to flower.",
]


@pytest.fixture(params=["bm25", "tantivy"])
def hybrid(request, tmp_path, tiny_bge_dir):
    (tmp_path / "corpus").mkdir()
    config = pipeline_config(
        tmp_path / "corpus", tmp_path / "index", str(tiny_bge_dir),
        lexical={"type": request.param}, retriever={"type": "hybrid", "k": 3},
    )
    pipe = Pipeline.from_config(config)
    pipe.add_documents(
        [Document(page_content=text, metadata={"n": number}) for number, text in enumerate(NOTES)], source="notes"
    )
    return pipe


def test_hybrid_results_carry_their_stored_texts_and_metadata(hybrid):
    path = hybrid.as_retriever().path
    queries = ["the moon and tides", "sourdough starter", "pollen"]

    lean = path.retrieve(queries, 3)
    carried = path.first_stage(queries, 3)  # every arm hands over its texts

    assert [[d.id for d in row] for row in lean] == [[d.id for d in row] for row in carried]
    for row, expected in zip(lean, carried):
        assert row, "each query finds something"
        for hit, full in zip(row, expected):
            assert hit.page_content == full.page_content == NOTES[hit.metadata["n"]]
            assert hit.metadata == full.metadata


def test_a_chunk_gone_before_its_text_is_read_is_dropped(hybrid):
    path = hybrid.as_retriever().path
    found = path.first_stage(["the moon"], 3, with_text=False)[0]
    gone = found[0].id
    hybrid.vectorstore.delete([gone])
    hybrid.lexical.delete([gone])

    read_back = path.with_texts([found])[0]

    assert [d.id for d in read_back] == [d.id for d in found[1:]]
    assert all(d.page_content == NOTES[d.metadata["n"]] for d in read_back)
