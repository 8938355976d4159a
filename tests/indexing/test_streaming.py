"""Ingest streams (issue 7, item 11): a file is read document by document and written in bounded
batches as its chunks come, and a file is recorded only once it is written whole. A file that fails
part-way leaves nothing of this run behind, and a changed one keeps serving its old chunks."""

from __future__ import annotations

import pytest
from sync_helpers import config_for, jsonl_corpus, snapshot, text_about, write_files

from rag_pipeline import Pipeline
from rag_pipeline.loaders import DirectoryLoader
from rag_pipeline.loaders.readers import UnreadableFile
from rag_pipeline.vectorstores.chroma import ChromaStore

RECORDS = 40
BATCH = 4  # config_for's vectorstore.write_batch_size


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_files(root, {"records.jsonl": jsonl_corpus(RECORDS), "bees.txt": text_about("bees")})
    return root


@pytest.fixture
def config(corpus, tmp_path, tiny_bge_dir):
    return config_for(corpus, tmp_path / "index", tiny_bge_dir)


@pytest.fixture
def events(monkeypatch):
    """What the ingest did, in order: ("read", source) per document the loader yielded,
    ("upsert", [sources]) per write to Chroma."""
    log: list[tuple[str, object]] = []
    iter_file, upsert = DirectoryLoader.iter_file, ChromaStore.upsert

    def logged_iter_file(self, file, warnings):
        for document in iter_file(self, file, warnings):
            log.append(("read", document.metadata["source"]))
            yield document

    def logged_upsert(self, chunks, vectors):
        log.append(("upsert", [c.metadata["source"] for c in chunks]))
        return upsert(self, chunks, vectors)

    monkeypatch.setattr(DirectoryLoader, "iter_file", logged_iter_file)
    monkeypatch.setattr(ChromaStore, "upsert", logged_upsert)
    return log


def _fail_part_way(monkeypatch, name: str, after: int) -> None:
    """``name`` yields ``after`` documents, then turns out unreadable (as a file that grows past
    max_file_size or holds a bad byte further on does)."""
    iter_file = DirectoryLoader.iter_file

    def failing(self, file, warnings):
        for number, document in enumerate(iter_file(self, file, warnings)):
            if file.name == name and number == after:
                raise UnreadableFile("grew past loader.max_file_size while being read")
            yield document

    monkeypatch.setattr(DirectoryLoader, "iter_file", failing)


def test_a_long_file_is_written_in_bounded_batches_while_it_is_read(config, events):
    report = Pipeline.from_config(config).ingest()

    upserts = [sources for kind, sources in events if kind == "upsert"]
    assert all(len(sources) <= BATCH for sources in upserts)
    assert sum(sources.count("records.jsonl") for sources in upserts) == RECORDS  # one chunk per record
    assert sum("records.jsonl" in sources for sources in upserts) >= RECORDS // BATCH
    # Written while being read, never more than a batch behind the reading (one chunk per record).
    read = written = 0
    last_read = max(i for i, (kind, source) in enumerate(events) if kind == "read" and source == "records.jsonl")
    for kind, value in events:
        if kind == "read" and value == "records.jsonl":
            read += 1
        elif kind == "upsert":
            written += value.count("records.jsonl")
        assert read - written <= BATCH
    first_upsert = next(i for i, (kind, sources) in enumerate(events) if kind == "upsert" and "records.jsonl" in sources)
    assert first_upsert < last_read

    state = snapshot(config)
    assert set(state["ids"]) == {i for i, _ in state["record"]["chunks"]} and not state["dirty"]
    assert state["record"]["files"]["records.jsonl"][4] == RECORDS
    assert report.chunks == report.added == report.collection_count == len(state["ids"])
    assert (report.files_added, report.documents) == (2, RECORDS + 1)


def test_a_new_file_failing_part_way_leaves_none_of_its_chunks(config, events, monkeypatch):
    _fail_part_way(monkeypatch, "records.jsonl", after=3 * BATCH)
    report = Pipeline.from_config(config).ingest()

    written = [s for kind, sources in events if kind == "upsert" for s in sources]
    assert written.count("records.jsonl") >= 2 * BATCH  # some of it had reached Chroma (then deleted)
    state = snapshot(config)
    sources = Pipeline.from_config(config).store.collection.get(include=["metadatas"])["metadatas"]
    assert {m["source"] for m in sources} == {"bees.txt"}
    assert set(state["record"]["files"]) == {"bees.txt"}
    assert set(state["ids"]) == {i for i, _ in state["record"]["chunks"]} and not state["dirty"]
    assert [(e.source, e.reason) for e in report.errors] == [
        ("records.jsonl", "grew past loader.max_file_size while being read")
    ]
    assert report.deleted == written.count("records.jsonl") and report.files_added == 1


def test_a_changed_file_failing_part_way_keeps_serving_its_old_chunks(config, corpus, monkeypatch):
    Pipeline.from_config(config).ingest()
    before = snapshot(config)
    write_files(corpus, {"records.jsonl": jsonl_corpus(RECORDS, changed_every=2)})  # half the records changed
    _fail_part_way(monkeypatch, "records.jsonl", after=3 * BATCH)
    report = Pipeline.from_config(config).ingest()

    after = snapshot(config)
    assert after["ids"] == before["ids"] and after["record"] == before["record"] and not after["dirty"]
    assert report.deleted == 3 * BATCH // 2  # the new edition's records written before the failure
    assert [e.source for e in report.errors] == ["records.jsonl"]

    monkeypatch.undo()
    report = Pipeline.from_config(config).ingest()  # readable again: the new edition replaces the old
    assert (report.files_updated, report.deleted) == (1, RECORDS // 2)
    texts = Pipeline.from_config(config).store.collection.get(include=["documents"])["documents"]
    assert any(t.startswith("Record 2 (edition 2)") for t in texts)
    assert not any(t.startswith("Record 2 (edition 1)") for t in texts)
