"""Documents added from code (``Pipeline.add_documents`` / ``delete``, ``pipe.vectorstore``) live in
the index record beside the folder's files: written through the same sinks under the same lock and
crash-safe order, idempotent, and never removed by a folder sync unless the user asks."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from sync_helpers import config_for, corpus_v1, snapshot, text_about, write_files

from rag_pipeline import Pipeline
from rag_pipeline.indexing import IndexRecord


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_files(root, corpus_v1())
    return root


@pytest.fixture
def config(corpus, tmp_path, tiny_bge_dir):
    return config_for(corpus, tmp_path / "index", tiny_bge_dir)


def test_documents_added_through_pipe_vectorstore_survive_the_next_ingest(config):
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    ids = pipe.vectorstore.add_documents(
        [Document(page_content="Penguins huddle to keep warm in the Antarctic winter.", metadata={"topic": "penguins"})],
        ids=["penguin-1"],
    )
    assert ids == ["penguin-1"]

    report = Pipeline.from_config(config).ingest()

    assert not report.recovered and report.deleted == 0
    fresh = Pipeline.from_config(config)
    assert "penguin-1" in fresh.store.ids()
    assert [d.page_content for d in fresh.vectorstore.get_by_ids(["penguin-1"])] == [
        "Penguins huddle to keep warm in the Antarctic winter."
    ]


PENGUINS = "Penguins huddle to keep warm in the Antarctic winter. " * 8
CRANES = "Cranes migrate in long skeins and call to each other in flight. " * 8


def _notes(*texts: str) -> list[Document]:
    return [Document(page_content=text, metadata={"author": "me"}) for text in texts]


def _by_source(config) -> dict[str, set[str]]:
    """The record's chunk ids by source, for the active collection."""
    pipe = Pipeline.from_config(config)
    with IndexRecord(pipe.state.record_path, readonly=True) as record:
        collection = record.active_collection(pipe.store.config.collection)
        ids = record.chunk_ids(collection)
        return {source: record.chunk_ids(collection, [source]) & ids for source in record.files(collection)}


def test_add_documents_chunks_embeds_records_and_is_idempotent(config):
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    first = pipe.add_documents(_notes(PENGUINS), source="notes/penguins")
    assert first.files_added == 1 and first.added == first.chunks > 1  # chunked by the configured chunker
    assert first.embedded == first.added

    again = Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="notes/penguins")
    assert (again.added, again.embedded, again.deleted, again.files_unchanged) == (0, 0, 0, 1)

    ids = _by_source(config)["notes/penguins"]
    assert len(ids) == first.chunks and ids <= Pipeline.from_config(config).store.ids()
    hits = Pipeline.from_config(config).as_retriever(k=1).invoke(PENGUINS[:60])
    assert hits[0].metadata["source"] == "notes/penguins" and hits[0].metadata["author"] == "me"


def test_adding_other_documents_replaces_the_source_and_keeps_unchanged_chunks(config):
    pipe = Pipeline.from_config(config)
    pipe.add_documents(_notes(PENGUINS, CRANES), source="birds")
    before = _by_source(config)["birds"]
    report = Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="birds")
    after = _by_source(config)["birds"]
    assert after < before  # the cranes' chunks left; the penguins' kept their ids
    assert report.deleted == len(before - after) and report.embedded == 0
    assert Pipeline.from_config(config).store.ids() >= after
    assert not (before - after) & Pipeline.from_config(config).store.ids()


def test_folder_sync_keeps_documents_from_code_until_asked(config, corpus):
    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="notes/penguins")
    (corpus / "bees.txt").unlink()

    plan = Pipeline.from_config(config).plan()
    assert plan.removed == ["bees.txt"] and plan.from_code == ["notes/penguins"]
    report = Pipeline.from_config(config).ingest()
    assert report.files_removed == 1 and "notes/penguins" in _by_source(config)

    assert Pipeline.from_config(config).plan(prune_api=True).removed == ["notes/penguins"]
    pruned = Pipeline.from_config(config).ingest(prune_api=True)
    assert pruned.files_removed == 1 and "notes/penguins" not in _by_source(config)
    assert snapshot(config)["ids"] == sorted(i for ids in _by_source(config).values() for i in ids)
    assert Pipeline.from_config(config).ingest().files_removed == 0  # asked once, not again


def test_delete_by_source_and_by_id(config):
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    pipe.add_documents(_notes(PENGUINS), source="penguins")
    pipe.add_documents(_notes(CRANES), source="cranes")
    crane_ids = sorted(_by_source(config)["cranes"])

    assert Pipeline.from_config(config).delete(source="penguins") > 0
    assert Pipeline.from_config(config).delete(ids=crane_ids[:1]) == 1
    sources = _by_source(config)
    assert "penguins" not in sources and sources["cranes"] == set(crane_ids[1:])
    held = Pipeline.from_config(config).store.ids()
    assert crane_ids[0] not in held and set(crane_ids[1:]) <= held
    assert not Pipeline.from_config(config).ingest().recovered


def test_delete_refuses_folder_files_and_unknown_sources(config):
    from rag_pipeline import DocumentError

    Pipeline.from_config(config).ingest()
    with pytest.raises(DocumentError, match=r"'bees.txt' is a file under loader.path: delete or exclude the file"):
        Pipeline.from_config(config).delete(source="bees.txt")
    with pytest.raises(DocumentError, match=r"no source 'nope' .*rag-pipeline ls CONFIG"):
        Pipeline.from_config(config).delete(source="nope")
    with pytest.raises(DocumentError, match=r"'bees.txt' is a file under loader.path that ingest keeps in step"):
        Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="bees.txt")


def test_a_file_named_like_a_source_from_code_is_reported_not_indexed_over_it(config, corpus):
    Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="penguins.txt")
    write_files(corpus, {"penguins.txt": text_about("penguins")})
    report = Pipeline.from_config(config).ingest()
    assert [e.source for e in report.errors] == ["penguins.txt"]
    assert "documents added from code hold this source name" in report.errors[0].reason
    assert len(_by_source(config)["penguins.txt"]) > 1  # still the documents from code


def test_documents_from_code_reach_the_lexical_index(config):
    config["lexical"] = {"type": "bm25"}
    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="penguins")
    pipe = Pipeline.from_config(config)
    assert _by_source(config)["penguins"] <= pipe.lexical.ids()
    assert pipe.lexical.search_batch_text(["antarctic huddle"], 1)[0][0].metadata["source"] == "penguins"
    assert not Pipeline.from_config(config).ingest().recovered
    Pipeline.from_config(config).vectorstore.add_texts(["A crane stands on one leg."], ids=["crane"])
    Pipeline.from_config(config).vectorstore.delete(["crane", "never-was"])  # a missing id is no error
    assert "crane" not in Pipeline.from_config(config).lexical.ids()
    Pipeline.from_config(config).delete(source="penguins")
    assert not _by_source(config).get("penguins") and not Pipeline.from_config(config).lexical.search_batch_text(["antarctic huddle"], 1)[0]


def test_reindex_carries_documents_from_code_to_the_new_collection(config, tiny_bge_other_dir):
    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="penguins")
    Pipeline.from_config(config).as_vectorstore().add_documents([Document(page_content="A lone crane.")], ids=["c1"])
    before = _by_source(config)
    config["embeddings"]["model"] = str(tiny_bge_other_dir)
    report = Pipeline.from_config(config).reindex()
    assert report.collection != "test"
    after = _by_source(config)
    assert after["penguins"] == before["penguins"] and after["vectorstore"] == {"c1"}
    assert not Pipeline.from_config(config).ingest().recovered
    assert [d.page_content for d in Pipeline.from_config(config).vectorstore.get_by_ids(["c1"])] == ["A lone crane."]


# A child process that adds (or deletes) documents from code and is killed at a crash point.
_CHILD = """
import json, sys
from langchain_core.documents import Document
from rag_pipeline import Pipeline
config, action, text = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
pipe = Pipeline.from_config(config)
if action == "add":
    pipe.add_documents([Document(page_content=text)], source="notes")
else:
    pipe.delete(source="notes")
"""

OLD_NOTES = "Kestrels hover over the verge before they drop on a vole. " * 10
NEW_NOTES = "Kestrels hover over the verge. " * 3 + "Owls hunt by ear at night and fly without a sound. " * 10


@pytest.mark.parametrize(
    "action, point",
    [
        ("add", "embedding:1"),  # vectors in the cache, nothing in Chroma
        ("add", "writing:1"),  # the new chunks in Chroma, the record still lists the old version
        ("add", "recorded:1"),  # the record lists the new version, the old chunks still in Chroma
        ("delete", "removing:1"),  # the record forgot the source, its chunks still in Chroma
    ],
)
def test_a_killed_write_from_code_is_reconciled_by_the_next_ingest(config, tmp_path, action, point):
    import json
    import os
    import shutil

    from warm_processes import run_python

    Pipeline.from_config(config).ingest()
    Pipeline.from_config(config).add_documents([Document(page_content=OLD_NOTES)], source="notes")
    clean = {**config, "vectorstore": {**config["vectorstore"], "persist_directory": str(tmp_path / "clean")}}
    shutil.copytree(config["vectorstore"]["persist_directory"], tmp_path / "clean")

    child = run_python(  # python -c _CHILD ... in another process (a warm one)
        _CHILD, json.dumps(config), action, NEW_NOTES, env={**os.environ, "RAG_PIPELINE_FAULT": point}, timeout=300
    )
    assert child.returncode == -9, child.stderr  # killed where asked

    recovered = Pipeline.from_config(config).ingest()
    assert recovered.recovered
    if action == "add":  # the caller retries what was interrupted
        Pipeline.from_config(config).add_documents([Document(page_content=NEW_NOTES)], source="notes")
        Pipeline.from_config(clean).add_documents([Document(page_content=NEW_NOTES)], source="notes")
    else:
        assert "notes" not in _by_source(config)
        Pipeline.from_config(clean).delete(source="notes")
    assert not Pipeline.from_config(clean).ingest().recovered
    assert snapshot(config) == snapshot(clean)


def test_writes_from_code_wait_for_a_running_ingest_and_then_give_up(config, tmp_path):
    from sync_helpers import paused_at_first_write, write_config

    from rag_pipeline import IndexBusyError

    config["ingest"] = {"lock_timeout": 0.5}
    with paused_at_first_write(write_config(config, tmp_path / "config.yaml"), "ingest", tmp_path / "release"):
        with pytest.raises(IndexBusyError, match="another ingest or reindex is writing"):
            Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="penguins")
        with pytest.raises(IndexBusyError):
            Pipeline.from_config(config).vectorstore.add_texts(["a crane"], ids=["c1"])
    Pipeline.from_config(config).add_documents(_notes(PENGUINS), source="penguins")
    assert "penguins" in _by_source(config)


def test_reading_an_index_never_written_through_the_vectorstore_creates_nothing(config, tmp_path):
    store = Pipeline.from_config(config).vectorstore
    assert store.similarity_search("bees", k=2) == [] and store.get_by_ids(["x"]) == []
    assert not (tmp_path / "index").exists()


def test_the_vectorstore_serves_langchain_retrievers_including_mmr(config):
    Pipeline.from_config(config).ingest()
    store = Pipeline.from_config(config).vectorstore
    text = "Penguins huddle in winter."
    store.add_texts([text, text, "Volcanoes erupt lava."], ids=["a", "b", "c"])
    assert len(store.as_retriever(search_kwargs={"k": 2}).invoke(text)) == 2
    vector = store.embeddings.embed_documents([text])[0]
    assert {d.id for d in store.similarity_search_by_vector(vector, k=2)} == {"a", "b"}
    # MMR: the exact duplicate of the best hit gives way to something different
    mmr = store.max_marginal_relevance_search_by_vector(vector, k=2, fetch_k=10, lambda_mult=0.1)
    assert mmr[0].id in {"a", "b"} and len({d.id for d in mmr} & {"a", "b"}) == 1
