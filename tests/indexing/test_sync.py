"""Incremental sync: unchanged files skipped unread, changed files replace their chunks, deleted
files' chunks removed (per ``ingest.cleanup``), and ``--dry-run`` says so without touching anything."""

from __future__ import annotations

import gc
import os
import time

import pytest
from langchain_core.documents import Document
from sync_helpers import config_for, corpus_v1, mutate_to_v2, snapshot, text_about, write_config, write_files

from rag_pipeline import ConfigError, Pipeline
from rag_pipeline.cli import main
from rag_pipeline.indexing import sync as sync_module
from rag_pipeline.loaders import DirectoryLoader


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write_files(root, corpus_v1())
    return root


@pytest.fixture
def config(corpus, tmp_path, tiny_bge_dir):
    return config_for(corpus, tmp_path / "index", tiny_bge_dir)


@pytest.fixture
def spies(monkeypatch):
    """Counts the files parsed and hashed."""
    calls = {"parsed": [], "hashed": []}
    iter_file, file_sha256 = DirectoryLoader.iter_file, sync_module.file_sha256

    def parse(self, file, warnings):
        calls["parsed"].append(file.name)
        return iter_file(self, file, warnings)

    def hash_(path):
        calls["hashed"].append(path.name)
        return file_sha256(path)

    monkeypatch.setattr(DirectoryLoader, "iter_file", parse)
    monkeypatch.setattr(sync_module, "file_sha256", hash_)
    return calls


def _chunk_ids_by_source(config) -> dict[str, set[str]]:
    by_source: dict[str, set[str]] = {}
    for identifier, source in snapshot(config)["record"]["chunks"]:
        by_source.setdefault(source, set()).add(identifier)
    return by_source


def test_unchanged_files_are_skipped_without_being_opened_or_loading_the_model(config, spies):
    first = Pipeline.from_config(config).ingest()
    assert first.files_added == 6 and first.added == first.chunks == first.collection_count > 6
    spies["parsed"].clear()
    spies["hashed"].clear()

    pipe = Pipeline.from_config(config)
    again = pipe.ingest()
    assert (again.files_unchanged, again.added, again.embedded, again.deleted) == (6, 0, 0, 0)
    assert again.skipped == again.chunks == first.chunks == again.collection_count
    assert spies == {"parsed": [], "hashed": []}
    assert pipe.embeddings._model is None  # nothing to embed: the model was never loaded


def test_a_touched_file_is_hashed_not_parsed_and_its_new_stat_remembered(config, corpus, spies):
    Pipeline.from_config(config).ingest()
    spies["parsed"].clear()
    spies["hashed"].clear()
    os.utime(corpus / "bees.txt", (time.time() - 60, time.time() - 60))  # same bytes, new mtime
    report = Pipeline.from_config(config).ingest()
    assert (report.files_unchanged, report.added, report.deleted) == (6, 0, 0)
    assert spies["parsed"] == [] and spies["hashed"] == ["bees.txt"]
    spies["hashed"].clear()
    Pipeline.from_config(config).ingest()
    assert spies["hashed"] == []


def test_changed_file_replaces_its_chunks_and_nothing_else_is_reembedded(config, corpus, spies):
    Pipeline.from_config(config).ingest()
    before = _chunk_ids_by_source(config)
    spies["parsed"].clear()
    write_files(corpus, {"bees.txt": text_about("bees", 2)})
    report = Pipeline.from_config(config).ingest()
    after = _chunk_ids_by_source(config)
    assert spies["parsed"] == ["bees.txt"]
    assert (report.files_updated, report.files_unchanged) == (1, 5)
    assert report.added == report.embedded == len(after["bees.txt"])
    assert report.deleted == len(before["bees.txt"])
    assert before["bees.txt"].isdisjoint(after["bees.txt"])
    assert {k: v for k, v in before.items() if k != "bees.txt"} == {k: v for k, v in after.items() if k != "bees.txt"}
    state = snapshot(config)
    assert set(state["ids"]) == {i for ids in after.values() for i in ids}  # old chunks gone from Chroma
    hits = Pipeline.from_config(config).query("edition 1 bees", k=20)
    assert not any("(edition 1) about bees" in h.page_content for h in hits)


@pytest.mark.parametrize("cleanup", ["full", "incremental", "none"])
def test_cleanup_modes(corpus, tmp_path, tiny_bge_dir, cleanup):
    config = config_for(corpus, tmp_path / "index", tiny_bge_dir, cleanup=cleanup)
    Pipeline.from_config(config).ingest()
    before = _chunk_ids_by_source(config)
    mutate_to_v2(corpus)  # bees, tides changed; kites deleted; otters, deep/comets added
    report = Pipeline.from_config(config).ingest()
    after = _chunk_ids_by_source(config)
    ids = set(snapshot(config)["ids"])
    assert (report.files_added, report.files_updated) == (2, 2)
    assert {"otters.txt", "deep/comets.txt"} <= set(after)
    if cleanup == "full":
        assert report.files_removed == 1 and "kites.txt" not in after
        assert ids.isdisjoint(before["kites.txt"] | before["bees.txt"])
    elif cleanup == "incremental":
        assert report.files_removed == 0 and after["kites.txt"] == before["kites.txt"] <= ids
        assert ids.isdisjoint(before["bees.txt"])
    else:
        assert report.files_removed == report.deleted == 0
        assert before["kites.txt"] | before["bees.txt"] <= ids  # append only: old versions stay
    assert ids == {i for chunk_ids in after.values() for i in chunk_ids}  # the record lists exactly what Chroma holds


def test_dry_run_lists_changes_and_touches_nothing(config, corpus, tmp_path, capsys):
    index = tmp_path / "index"
    plan = Pipeline.from_config(config).plan()
    assert len(plan.added) == 6 and not plan.updated and not plan.removed
    assert not index.exists()  # a dry run on a fresh index creates nothing

    Pipeline.from_config(config).ingest()
    mutate_to_v2(corpus)
    gc.collect()  # the ingest's connections close (and checkpoint) now, not during the dry run
    files_before = {p: p.stat().st_mtime_ns for p in index.rglob("*")}
    state_before = snapshot(config)
    path = write_config(config, tmp_path / "config.yaml")
    assert main(["ingest", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would add 2, update 2 and remove 1 files" in out
    for line in ("  add    otters.txt", "  add    deep/comets.txt", "  update bees.txt", "  update tides.txt", "  remove kites.txt"):
        assert line in out
    assert {p: p.stat().st_mtime_ns for p in index.rglob("*")} == files_before
    assert snapshot(config) == state_before
    # and the ingest then does exactly that
    report = Pipeline.from_config(config).ingest()
    assert (report.files_added, report.files_updated, report.files_removed) == (2, 2, 1)


def test_other_chunker_settings_rechunk_every_file_but_reuse_vectors(config):
    Pipeline.from_config(config).ingest()
    config["chunker"]["chunk_overlap"] = 20
    report = Pipeline.from_config(config).ingest()
    assert report.files_updated == 6
    config["chunker"]["chunk_overlap"] = 0  # back: the old chunks' vectors are in the embedding cache
    report = Pipeline.from_config(config).ingest()
    assert report.files_updated == 6 and report.added > 0 and report.embedded == 0


def test_a_change_within_the_timestamp_granularity_is_still_seen(config, corpus):
    """Same size, same mtime, other bytes, when the file was written about when it was recorded
    (a coarse-timestamp filesystem cannot tell the two writes apart): hashed, so seen."""
    Pipeline.from_config(config).ingest()
    path = corpus / "bees.txt"
    text = path.read_text()
    now = time.time_ns()
    os.utime(path, ns=(now, now))
    assert Pipeline.from_config(config).ingest().files_unchanged == 6  # hashed; recorded at about `now`
    path.write_text(text.replace("edition 1", "edition 9"))
    os.utime(path, ns=(now, now))
    report = Pipeline.from_config(config).ingest()
    assert (report.files_updated, report.files_unchanged) == (1, 5)


def test_an_index_without_a_record_is_adopted_and_stray_chunks_swept(config, tmp_path):
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    (tmp_path / "index" / "index_record.sqlite").unlink()  # an index built before the record existed
    stray = pipe.chunker.split_documents([Document("stray text", metadata={"doc_id": "gone.txt"})])
    pipe.index_chunks(stray)  # written around ingest: not in the record
    report = Pipeline.from_config(config).ingest()
    assert report.files_added == 6 and report.embedded == 0 and report.recovered
    assert report.deleted == 1 and stray[0].id not in snapshot(config)["ids"]
    assert not snapshot(config)["dirty"]


def test_a_folder_that_cannot_be_listed_keeps_its_files_indexed(config, corpus, monkeypatch):
    write_files(corpus, {"deep/comets.txt": text_about("comets")})
    Pipeline.from_config(config).ingest()
    real_scandir = os.scandir

    def failing(path="."):
        if str(path).endswith("deep"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", failing)
    report = Pipeline.from_config(config).ingest()
    assert report.files_removed == 0 and "deep/comets.txt" in _chunk_ids_by_source(config)
    assert any(e.source == "deep/" and "cannot list folder" in e.reason for e in report.errors)


def test_ingest_settings_are_validated(config):
    config["ingest"] = {"cleanup": "sometimes"}
    with pytest.raises(ConfigError, match=r"^ingest\.cleanup: Input should be 'full', 'incremental' or 'none'"):
        Pipeline.from_config(config)


def test_a_link_out_of_the_corpus_is_never_read_not_even_to_hash_it(config, corpus, spies, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("the password is swordfish\n")
    (corpus / "leak.txt").symlink_to(outside)
    report = Pipeline.from_config(config).ingest()
    assert "leak.txt" not in spies["hashed"] and "secret.txt" not in spies["hashed"]
    assert [e.source for e in report.errors] == ["leak.txt"]
    assert "outside loader.path" in report.errors[0].reason
    # a file that was indexed and is then replaced by such a link loses its chunks, unread
    (corpus / "bees.txt").unlink()
    (corpus / "bees.txt").symlink_to(outside)
    spies["hashed"].clear()
    again = Pipeline.from_config(config).ingest()
    assert spies["hashed"] == [] and again.deleted > 0
    assert "bees.txt" not in {d.metadata["source"] for d in Pipeline.from_config(config).query("bees", k=50)}
