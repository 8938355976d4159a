"""What a re-ingest must not leave stale: metadata edited without the text (issue 7, item 2), files
emptied or swapped for a look-alike (item 3), and record files written before inode and ctime."""

from __future__ import annotations

import builtins
import errno
import json
import os
import sqlite3
import time

import pytest
from sync_helpers import config_for, corpus_v1, snapshot, text_about, write_files

from rag_pipeline import Pipeline
from rag_pipeline.indexing import IndexRecord
from rag_pipeline.indexing import sync as sync_module
from rag_pipeline.indexing.record import SCHEMA_VERSION

RECORDS = [
    {"id": "r1", "text": "Honey bees dance to tell the hive where the flowers are.", "category": "insects"},
    {"id": "r2", "text": "Tides rise and fall twice a day, pulled by the moon.", "category": "oceans"},
]


def _page(title: str | None) -> str:
    head = f"<head><title>{title}</title></head>" if title is not None else "<head></head>"
    return f"<html>{head}<body><p>Kites fly best in a steady wind on an open beach.</p></body></html>"


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _metadata_by_source(config) -> dict[str, list[dict]]:
    pipe = Pipeline.from_config(config)
    data = pipe.store.client.get_collection(pipe.store.collection_name).get(include=["metadatas"])
    by_source: dict[str, list[dict]] = {}
    for metadata in data["metadatas"]:
        by_source.setdefault(metadata["source"], []).append(metadata)
    return by_source


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_files(root, {"records.jsonl": _jsonl(RECORDS), "notes.txt": text_about("otters"), "page.html": _page("Kites")})
    return root


@pytest.fixture
def config(corpus, tmp_path, tiny_bge_dir):
    return config_for(corpus, tmp_path / "index", tiny_bge_dir)


# -- item 2: an updated file's chunks carry its current metadata ------------------------------------
def test_metadata_only_edits_reach_the_index_without_re_embedding(config, corpus):
    Pipeline.from_config(config).ingest()
    before = _metadata_by_source(config)
    ids_before = set(snapshot(config)["ids"])

    edited = [{**RECORDS[0], "category": "pollinators"}, RECORDS[1]]  # same text, other category
    write_files(corpus, {
        "records.jsonl": _jsonl(edited),
        "notes.txt": "\n\n" + text_about("otters"),  # same chunks, each starting two characters later
        "page.html": _page("Kites and winds"),  # same visible text, other title
    })
    report = Pipeline.from_config(config).ingest()
    after = _metadata_by_source(config)

    assert (report.files_updated, report.embedded, report.deleted) == (3, 0, 0)
    assert set(snapshot(config)["ids"]) == ids_before  # same ids: only the metadata changed
    categories = {m["doc_id"]: m["category"] for m in after["records.jsonl"]}
    assert categories == {"records.jsonl#line=r1": "pollinators", "records.jsonl#line=r2": "oceans"}
    assert sorted(m["start_index"] for m in after["notes.txt"]) == sorted(m["start_index"] + 2 for m in before["notes.txt"])
    assert {m["title"] for m in after["page.html"]} == {"Kites and winds"}

    config["retriever"]["filter"] = {"category": "pollinators"}
    hits = Pipeline.from_config(config).query("honey bees", k=5)
    assert [h.metadata["doc_id"] for h in hits] == ["records.jsonl#line=r1"]


def test_a_metadata_field_removed_from_a_file_is_removed_from_its_chunks(config, corpus):
    Pipeline.from_config(config).ingest()
    write_files(corpus, {"page.html": _page(None), "records.jsonl": _jsonl([{"id": "r1", "text": RECORDS[0]["text"]}, RECORDS[1]])})
    report = Pipeline.from_config(config).ingest()
    after = _metadata_by_source(config)
    assert report.files_updated == 2 and report.embedded == 0
    assert not any("title" in m for m in after["page.html"])
    assert {m["doc_id"]: m.get("category") for m in after["records.jsonl"]} == {
        "records.jsonl#line=r1": None, "records.jsonl#line=r2": "oceans",
    }


# -- item 3: emptied files leave the index; unreadable ones keep their chunks -----------------------
@pytest.mark.parametrize(
    "name, emptied",
    [("notes.txt", ""), ("notes.txt", " \n\t\n"), ("records.jsonl", "\n\n"), ("page.html", "<html><body> </body></html>")],
    ids=["empty", "whitespace", "no-records", "no-visible-text"],
)
def test_a_file_that_now_gives_no_text_loses_its_chunks_and_is_reported(config, corpus, name, emptied):
    Pipeline.from_config(config).ingest()
    old_ids = {i for i, source in snapshot(config)["record"]["chunks"] if source == name}
    assert old_ids

    write_files(corpus, {name: emptied})
    report = Pipeline.from_config(config).ingest()
    state = snapshot(config)
    assert old_ids.isdisjoint(state["ids"])
    assert name not in state["record"]["files"] and not any(source == name for _, source in state["record"]["chunks"])
    assert report.deleted == len(old_ids)
    [error] = [e for e in report.errors if e.source == name]
    assert f"its {len(old_ids)} chunks were removed from the index" in error.reason
    assert set(state["ids"]) == {i for i, _ in state["record"]["chunks"]} and not state["dirty"]

    again = Pipeline.from_config(config).ingest()  # still empty: reported again, nothing else to do
    assert [e.source for e in again.errors] == [name] and again.deleted == again.added == 0


@pytest.mark.parametrize(
    "error",
    [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error")],
    ids=["permission-denied", "io-error"],
)
def test_a_changed_file_that_cannot_be_read_keeps_its_chunks(config, corpus, monkeypatch, error):
    """Unlike an emptied file, an unreadable one says nothing about what it holds now."""
    Pipeline.from_config(config).ingest()
    before = snapshot(config)
    write_files(corpus, {"notes.txt": text_about("otters", 2)})
    real_open = builtins.open

    def failing_open(file, *args, **kwargs):
        if str(file).endswith("notes.txt"):
            raise type(error)(error.errno, error.strerror, str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    report = Pipeline.from_config(config).ingest()
    assert [(e.source, e.reason) for e in report.errors] == [("notes.txt", error.strerror)]
    assert report.deleted == 0
    after = snapshot(config)
    assert after["ids"] == before["ids"] and after["record"] == before["record"]


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_reindexed(tmp_path, tiny_bge_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = config_for(corpus, tmp_path / "index", tiny_bge_dir)
    Pipeline.from_config(config).ingest()
    path = corpus / "bees.txt"
    old = path.stat()
    replacement = corpus / ".bees.txt.new"  # hidden: not a corpus file while it is being written
    replacement.write_text(text_about("bees", 2), encoding="utf-8")  # edition 2: same length
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))  # as `cp -p`, `rsync -t` or tar do
    os.replace(replacement, path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)

    report = Pipeline.from_config(config).ingest()
    assert (report.files_updated, report.files_unchanged) == (1, 5)
    hits = Pipeline.from_config(config).query("edition 2 bees", k=20)
    assert any("(edition 2) about bees" in h.page_content for h in hits)
    assert not any("(edition 1) about bees" in h.page_content for h in hits)


def test_a_record_from_before_inode_and_ctime_is_migrated_and_each_file_hashed_once(tmp_path, tiny_bge_dir, monkeypatch):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = config_for(corpus, tmp_path / "index", tiny_bge_dir)
    Pipeline.from_config(config).ingest()
    record_path = tmp_path / "index" / "index_record.sqlite"
    with sqlite3.connect(record_path) as db:  # back to schema 1
        db.execute("ALTER TABLE files DROP COLUMN inode")
        db.execute("ALTER TABLE files DROP COLUMN ctime_ns")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    hashed = []
    file_sha256 = sync_module.file_sha256
    monkeypatch.setattr(sync_module, "file_sha256", lambda path: hashed.append(path.name) or file_sha256(path))

    plan = Pipeline.from_config(config).plan()  # read-only: reads the old record, migrates nothing
    assert len(plan.unchanged) == 6 and len(hashed) == 6
    with sqlite3.connect(record_path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    db.close()

    hashed.clear()
    report = Pipeline.from_config(config).ingest()
    assert report.files_unchanged == 6 and report.added == 0 and len(hashed) == 6  # stat unknown: hashed once
    with IndexRecord(record_path, readonly=True) as record:
        files = record.files(config["vectorstore"]["collection"])
    assert all(f.inode == (corpus / f.source).stat().st_ino for f in files.values())
    with sqlite3.connect(record_path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)
    db.close()

    hashed.clear()
    assert Pipeline.from_config(config).ingest().files_unchanged == 6 and hashed == []
