"""Every chunk belongs to one source, and the one write path keeps it so: documents from code never
take over another source's chunks, a delete removes only what its source records (and can be
retried when an index fails half-way), and one state directory keeps one index."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from sync_helpers import config_for, corpus_v1, write_files

from rag_pipeline import Pipeline
from rag_pipeline.errors import IndexMismatchError, IndexUnavailableError, RagPipelineError

PENGUINS = "Penguins huddle to keep warm in the Antarctic winter. " * 8
CRANES = "Cranes migrate in long skeins and call to each other in flight. " * 8


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_files(root, corpus_v1())
    return root


def hybrid(config: dict) -> dict:
    return {**config, "lexical": {"type": "bm25"}, "retriever": {"type": "hybrid", "k": 3, "search": "exact"}}


@pytest.fixture(params=["chroma", "faiss"])
def config(request, corpus, tmp_path, tiny_bge_dir):
    config = hybrid(config_for(corpus, tmp_path / "index", tiny_bge_dir))
    if request.param == "faiss":
        config["vectorstore"] = {"type": "faiss", "persist_directory": str(tmp_path / "index"), "collection": "test"}
    return config


def _held(pipe: Pipeline) -> tuple[set[str], set[str]]:
    """Chunk ids held by the dense and the lexical index."""
    return pipe.store.ids(), pipe.lexical.ids()


def _texts_found(config: dict, query: str, k: int = 20) -> list[str]:
    return [d.page_content for d in Pipeline.from_config(config).as_retriever(k=k).invoke(query)]


def test_a_document_from_code_with_a_files_doc_id_never_takes_over_the_files_chunks(config, corpus):
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    bees = [d for d in pipe.export() if d["source"] == "bees.txt"]
    folder_ids = {d["id"] for d in bees}
    first = next(d for d in bees if d["metadata"]["chunk_index"] == 0)
    # The same text and the file's own doc_id, given from code under another source.
    copy = Document(page_content=first["content"], metadata={"doc_id": first["metadata"]["doc_id"]})
    Pipeline.from_config(config).add_documents([copy], source="notes/copied")

    Pipeline.from_config(config).delete(source="notes/copied")

    after = Pipeline.from_config(config)
    dense, lexical = _held(after)
    assert folder_ids <= dense and folder_ids <= lexical  # the file's chunks are all still indexed
    report = after.ingest()
    assert report.files_unchanged == len(corpus_v1()) and report.added == 0 and not report.recovered
    assert first["content"] in _texts_found(config, first["content"][:80])


def test_two_sources_adding_the_same_document_id_each_keep_their_own_chunks(config):
    Pipeline.from_config(config).ingest()
    same = Document(page_content=PENGUINS, id="faq-1")
    Pipeline.from_config(config).add_documents([same], source="team-a")
    Pipeline.from_config(config).add_documents([same], source="team-b")

    assert Pipeline.from_config(config).delete(source="team-a") > 0

    pipe = Pipeline.from_config(config)
    assert {s.source for s in pipe.sources() if s.origin == "api"} == {"team-b"}
    hits = pipe.as_retriever(k=3).invoke(PENGUINS[:60])
    assert any(h.metadata["source"] == "team-b" and h.page_content in PENGUINS for h in hits)
    # and team-b is still whole: adding it again writes nothing
    again = Pipeline.from_config(config).add_documents([same], source="team-b")
    assert again.files_unchanged == 1 and again.added == 0


def test_a_vector_store_entry_cannot_take_an_id_another_source_holds(config):
    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).vectorstore.add_documents(
        [Document(page_content=PENGUINS, metadata={"source": "team-a"})], ids=["entry-1"]
    )
    with pytest.raises(RagPipelineError, match="entry-1.*team-a"):
        Pipeline.from_config(config).vectorstore.add_documents(
            [Document(page_content=CRANES, metadata={"source": "team-b"})], ids=["entry-1"]
        )
    pipe = Pipeline.from_config(config)
    assert [d.page_content for d in pipe.vectorstore.get_by_ids(["entry-1"])] == [PENGUINS]  # not overwritten
    assert {s.source for s in pipe.sources() if s.origin == "api"} == {"team-a"}


def test_adding_documents_again_after_deleting_some_of_their_chunks_restores_them(config):
    Pipeline.from_config(config).ingest()
    notes = [Document(page_content=PENGUINS), Document(page_content=CRANES)]
    Pipeline.from_config(config).add_documents(notes, source="notes")
    pipe = Pipeline.from_config(config)
    ids = sorted(d["id"] for d in pipe.export() if d["source"] == "notes")
    gone = ids[: len(ids) // 2 + 1]
    assert pipe.delete(ids=gone) == len(gone)
    assert not set(gone) & Pipeline.from_config(config).store.ids()

    report = Pipeline.from_config(config).add_documents(notes, source="notes")

    assert report.files_updated == 1
    dense, lexical = _held(Pipeline.from_config(config))
    assert set(ids) <= dense and set(ids) <= lexical


class _FailingDeletes:
    """A dense index whose deletes fail, as a Chroma server does that went away mid-delete."""

    def __init__(self, index):
        self.index = index

    def __enter__(self):
        self.original = self.index.delete

        def fail(ids):
            raise IndexUnavailableError("the Chroma server at localhost:8000 cannot be reached")

        self.index.delete = fail
        return self

    def __exit__(self, *exc):
        self.index.delete = self.original


def test_a_delete_whose_index_step_failed_stops_being_served_and_can_be_retried(config):
    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).add_documents([Document(page_content=PENGUINS)], source="notes")
    pipe = Pipeline.from_config(config)
    ids = {d["id"] for d in pipe.export() if d["source"] == "notes"}

    with _FailingDeletes(pipe.store), pytest.raises(IndexUnavailableError):
        pipe.delete(source="notes")

    # The lexical arm dropped the text although the dense index failed.
    assert not ids & Pipeline.from_config(config).lexical.ids()
    # Deleting again finishes the job (it is not refused as "no source").
    assert Pipeline.from_config(config).delete(source="notes") == len(ids)
    dense, lexical = _held(Pipeline.from_config(config))
    assert not ids & dense and not ids & lexical
    assert not any(PENGUINS[:40] in text for text in _texts_found(config, PENGUINS[:60]))


def test_a_failed_delete_is_finished_by_the_next_write_from_code(config):
    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).add_documents([Document(page_content=PENGUINS)], source="notes")
    pipe = Pipeline.from_config(config)
    ids = {d["id"] for d in pipe.export() if d["source"] == "notes"}
    with _FailingDeletes(pipe.store), pytest.raises(IndexUnavailableError):
        pipe.delete(source="notes")

    Pipeline.from_config(config).add_documents([Document(page_content=CRANES)], source="other")

    assert not ids & Pipeline.from_config(config).store.ids()


def test_two_indexes_sharing_one_state_directory_are_refused(corpus, tmp_path, tiny_bge_dir):
    state = tmp_path / "state"
    first = hybrid(config_for(corpus, tmp_path / "index-a", tiny_bge_dir, state_directory=str(state)))
    other_corpus = tmp_path / "corpus-b"
    write_files(other_corpus, {"cranes.txt": CRANES})
    second = hybrid(config_for(other_corpus, tmp_path / "index-b", tiny_bge_dir, state_directory=str(state)))
    Pipeline.from_config(first).ingest()
    lexical_before = Pipeline.from_config(first).lexical.ids()

    with pytest.raises(IndexMismatchError, match="index-a.*index-b|state_directory"):
        Pipeline.from_config(second).ingest()

    assert Pipeline.from_config(first).lexical.ids() == lexical_before
    assert not any("Cranes" in text for text in _texts_found(first, CRANES[:60]))


def test_one_index_folder_kept_by_two_state_directories_is_refused(corpus, tmp_path, tiny_bge_dir):
    first = hybrid(config_for(corpus, tmp_path / "index", tiny_bge_dir, state_directory=str(tmp_path / "state-a")))
    second = hybrid(config_for(corpus, tmp_path / "index", tiny_bge_dir, state_directory=str(tmp_path / "state-b")))
    Pipeline.from_config(first).ingest()
    held = Pipeline.from_config(first).store.ids()

    with pytest.raises(IndexMismatchError, match="state-a"):
        Pipeline.from_config(second).ingest()

    assert Pipeline.from_config(first).store.ids() == held
    assert not Pipeline.from_config(first).ingest().recovered


def test_an_index_folder_moved_with_its_state_still_opens(corpus, tmp_path, tiny_bge_dir):
    import shutil

    config = hybrid(config_for(corpus, tmp_path / "index", tiny_bge_dir))
    Pipeline.from_config(config).ingest()
    shutil.move(str(tmp_path / "index"), str(tmp_path / "moved"))
    moved = {**config, "vectorstore": {**config["vectorstore"], "persist_directory": str(tmp_path / "moved")}}

    report = Pipeline.from_config(moved).ingest()

    assert report.files_unchanged == len(corpus_v1()) and not report.recovered
