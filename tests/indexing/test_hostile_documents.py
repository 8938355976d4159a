"""Documents from code as a careless or hostile caller gives them: text that cannot be stored is
refused with a message naming the field, before anything is written."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from sync_helpers import config_for, corpus_v1, write_files

from rag_pipeline import Pipeline
from rag_pipeline.errors import DocumentError


@pytest.fixture
def config(tmp_path, tiny_bge_dir):
    write_files(tmp_path / "corpus", corpus_v1())
    config = config_for(tmp_path / "corpus", tmp_path / "index", tiny_bge_dir)
    Pipeline.from_config(config).ingest()
    return config


@pytest.mark.parametrize(
    ("documents", "source", "field"),
    [
        ([Document(page_content="bad \ud800 text")], "notes", "document 0: content"),
        ([Document(page_content="fine")], "notes\udc80", "source"),
        ([Document(page_content="fine", metadata={"k\ud800": 1})], "notes", "document 0: metadata key"),
        ([Document(page_content="fine"), Document(page_content="fine too", metadata={"tags": ["ok", "\udfff"]})], "notes",
         "document 1: metadata"),
        ([Document(page_content="fine", id="id-\ud801")], "notes", "document 0: id"),
    ],
)
def test_text_with_a_lone_surrogate_is_refused_naming_the_field(config, documents, source, field):
    before = Pipeline.from_config(config).store.ids()
    with pytest.raises(DocumentError, match=f"^{field}.*lone surrogate"):
        Pipeline.from_config(config).add_documents(documents, source=source)
    assert Pipeline.from_config(config).store.ids() == before


def test_the_vector_store_and_delete_refuse_it_too(config):
    pipe = Pipeline.from_config(config)
    with pytest.raises(DocumentError, match="lone surrogate"):
        pipe.vectorstore.add_documents([Document(page_content="x \ud800")], ids=["a"])
    with pytest.raises(DocumentError, match="^source is not valid text"):
        pipe.delete(source="gone\ud800")
    with pytest.raises(DocumentError, match="^ids is not valid text"):
        pipe.delete(ids=["x\udc00"])
