"""The index record on its own (SQLite only, no model, no Chroma): fast enough for the mutation check."""

import sqlite3

import pytest

from rag_pipeline.indexing import record as record_module
from rag_pipeline.indexing.record import RECORD_FILENAME, FileRecord, IndexRecord


def _file(source, size=10, mtime_ns=1, sha="s", settings="{}", chunks=1):
    return FileRecord(source, size, mtime_ns, sha, settings, chunks)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "index" / RECORD_FILENAME


def test_a_new_record_creates_its_folder_schema_and_version(path):
    with IndexRecord(path) as record:
        assert record.files("c") == {} and record.chunk_count("c") == 0
        assert record._connection.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL: survives power loss
    assert path.is_file()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [
            (record_module.SCHEMA_VERSION,)
        ]
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # no -wal/-shm beside it


def test_open_existing_touches_nothing_when_there_is_no_record(path):
    assert IndexRecord.open_existing(None) is None
    assert IndexRecord.open_existing(path) is None
    assert not path.parent.exists()


def test_open_existing_is_read_only(path):
    with IndexRecord(path) as record:
        record.add_collection("c1", "docs", "active")
    with IndexRecord.open_existing(path) as reader:
        assert reader.readonly and reader.active_collection("docs") == "c1"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.add_collection("c2", "docs", "building")


def test_a_reader_of_a_record_without_schema_yet_sees_nothing(path):
    path.parent.mkdir(parents=True)
    sqlite3.connect(path).close()  # an ingest created the file but has not written its schema
    with IndexRecord.open_existing(path) as reader:
        assert reader.active_collection("docs") is None
        assert reader.files("c") == {} and reader.chunk_ids("c") == set() and reader.chunk_count("c") == 0


def test_other_sqlite_errors_are_not_hidden(path):
    with IndexRecord(path) as record, pytest.raises(sqlite3.OperationalError, match="no such table"):
        record._query("SELECT * FROM missing")


def test_in_memory_record_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with IndexRecord(None) as record:
        assert record.path is None
        record.add_collection("c1", "docs", "active")
        assert record.active_collection("docs") == "c1"
    assert list(tmp_path.iterdir()) == []


def test_a_record_opens_in_a_new_nested_folder_and_reopens(tmp_path):
    path = tmp_path / "a" / "b" / RECORD_FILENAME
    IndexRecord(path).close()
    with IndexRecord(path) as again:
        assert again.files("c") == {}


@pytest.mark.parametrize("readonly", [False, True])
def test_a_record_can_be_used_from_another_thread(path, readonly):
    """A record opened in one thread may be used in another (a server's worker pool): the
    constructor turns off SQLite's same-thread check for that; keep it off."""
    from concurrent.futures import ThreadPoolExecutor

    IndexRecord(path).close()
    for record in (IndexRecord(None), IndexRecord(path, readonly=readonly)):
        with record, ThreadPoolExecutor(1) as pool:
            assert pool.submit(record.active_collection, "docs").result() is None


def test_collections_switch_retires_the_old_active_in_one_step(path):
    with IndexRecord(path) as record:
        assert record.active_collection("docs") is None
        record.add_collection("c1", "docs", "active")
        record.add_collection("other", "notes", "active")
        record.add_collection("c2", "docs", "building")
        assert record.collections("docs") == {"c1": "active", "c2": "building"}
        assert record.switch("docs", "c2") == ["c1"]
        assert record.collections("docs") == {"c1": "retired", "c2": "active"}
        assert record.active_collection("docs") == "c2"
        assert record.active_collection("notes") == "other"  # another logical name is untouched
        assert record.switch("docs", "c2") == []  # already active: nothing retired
        assert record.known_collection_names() == {"c1", "c2", "other"}


def test_add_collection_again_updates_its_logical_name_and_state(path):
    with IndexRecord(path) as record:
        record.add_collection("c1", "docs", "building")
        record.set_dirty("c1", True)
        record.add_collection("c1", "notes", "active")
        assert record.collections("docs") == {} and record.collections("notes") == {"c1": "active"}
        assert record.is_dirty("c1")  # re-adding does not clear the crash flag


def test_state_must_be_one_of_three(path):
    with IndexRecord(path) as record, pytest.raises(sqlite3.IntegrityError):
        record.add_collection("c1", "docs", "archived")


def test_dirty_flag(path):
    with IndexRecord(path) as record:
        assert not record.is_dirty("unknown")
        record.add_collection("c1", "docs", "active")
        assert record.is_dirty("c1") is False
        record.set_dirty("c1", True)
        assert record.is_dirty("c1") is True
        record.set_dirty("c1", False)
        assert record.is_dirty("c1") is False


def test_commit_files_records_files_and_their_chunks(path, monkeypatch):
    monkeypatch.setattr(record_module.time, "time_ns", lambda: 42)
    with IndexRecord(path) as record:
        record.commit_files("c", [_file("a.md", 10, 5, "ha", "s1", 2), _file("b.md", 20, 6, "hb", "s1", 1)],
                            {"a.md": ["a1", "a2"], "b.md": ["b1"]}, replace=True)
        assert record.files("c") == {
            "a.md": FileRecord("a.md", 10, 5, "ha", "s1", 2, 42),
            "b.md": FileRecord("b.md", 20, 6, "hb", "s1", 1, 42),
        }
        assert record.chunk_ids("c") == {"a1", "a2", "b1"}
        assert record.chunk_ids("c", ["a.md"]) == {"a1", "a2"}
        assert record.chunk_count("c") == 3
        assert record.chunk_sources("c", ["a2", "b1", "zzz"]) == {"a.md", "b.md"}
        assert record.files("other") == {} and record.chunk_ids("other") == set()  # per collection


def test_commit_files_with_replace_forgets_a_files_old_chunks_and_without_keeps_them(path):
    with IndexRecord(path) as record:
        record.commit_files("c", [_file("a.md"), _file("b.md")], {"a.md": ["old"], "b.md": ["b1"]}, replace=True)
        record.commit_files("c", [_file("a.md", sha="new")], {"a.md": ["new1"]}, replace=True)
        assert record.chunk_ids("c") == {"new1", "b1"}
        assert record.files("c")["a.md"].sha256 == "new"
        record.commit_files("c", [_file("a.md")], {"a.md": ["new2"]}, replace=False)  # cleanup: none
        assert record.chunk_ids("c", ["a.md"]) == {"new1", "new2"}
        record.commit_files("c", [_file("empty.md", chunks=0)], {}, replace=True)
        assert record.files("c")["empty.md"].chunks == 0 and record.chunk_ids("c", ["empty.md"]) == set()


def test_update_stats_changes_only_the_stat_and_time(path, monkeypatch):
    with IndexRecord(path) as record:
        record.commit_files("c", [_file("a.md", 10, 5, "ha", "s", 3), _file("b.md", 20, 6)], {}, replace=True)
        monkeypatch.setattr(record_module.time, "time_ns", lambda: 99)
        record.update_stats("c", [("a.md", 11, 7, 42, 8)])
        assert record.files("c")["a.md"] == FileRecord("a.md", 11, 7, "ha", "s", 3, 99, inode=42, ctime_ns=8)
        assert record.files("c")["b.md"].size == 20 and record.files("c")["b.md"].recorded_ns != 99


def test_remove_sources_and_forget_collection(path):
    with IndexRecord(path) as record:
        record.add_collection("c", "docs", "active")
        record.add_collection("d", "docs", "building")
        files = [_file("a.md"), _file("b.md"), _file("c.md")]
        chunks = {"a.md": ["a1"], "b.md": ["b1"], "c.md": ["c1"]}
        record.commit_files("c", files, chunks, replace=True)
        record.commit_files("d", files, chunks, replace=True)
        record.remove_sources("c", ["a.md", "b.md"])
        assert set(record.files("c")) == {"c.md"} and record.chunk_ids("c") == {"c1"}
        assert set(record.files("d")) == {"a.md", "b.md", "c.md"}  # the other collection keeps them
        record.forget_collection("d")
        assert record.files("d") == {} and record.chunk_ids("d") == set() and record.collections("docs") == {"c": "active"}


def test_many_sources_and_ids_go_through_in_batches(path):
    """More values than one SQLite statement may bind (the batch is 500)."""
    n = 1234
    sources = [f"f{i}.md" for i in range(n)]
    with IndexRecord(path) as record:
        record.commit_files("c", [_file(s) for s in sources], {s: [f"id{i}"] for i, s in enumerate(sources)}, replace=True)
        assert record.chunk_ids("c", sources) == {f"id{i}" for i in range(n)}
        assert record.chunk_sources("c", [f"id{i}" for i in range(n)]) == set(sources)
        record.remove_sources("c", sources[:1001])
        assert set(record.files("c")) == set(sources[1001:]) and record.chunk_count("c") == n - 1001


def test_batches_cover_every_item_once():
    items = list(range(1001))
    parts = list(record_module._batches(items))
    assert [len(p) for p in parts] == [500, 500, 1]
    assert [x for p in parts for x in p] == items
    assert list(record_module._batches([], 3)) == []


def test_a_change_is_committed_at_once(path):
    """Each change is its own transaction: another connection sees it without a close."""
    record = IndexRecord(path)
    record.add_collection("c1", "docs", "active")
    record.commit_files("c1", [_file("a.md")], {"a.md": ["a1"]}, replace=True)
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT name FROM collections").fetchall() == [("c1",)]
        assert other.execute("SELECT id FROM chunks").fetchall() == [("a1",)]
    record.close()


def _version_1_record(path):
    """A record file as version 1 wrote it: files without inode and ctime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE files (collection TEXT NOT NULL, source TEXT NOT NULL, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, settings TEXT NOT NULL, chunks INTEGER NOT NULL,"
            " recorded_ns INTEGER NOT NULL, PRIMARY KEY (collection, source)) WITHOUT ROWID;"
            "INSERT INTO files VALUES ('c', 'a.md', 10, 5, 'ha', 's', 3, 7);"
        )
    connection.close()


def test_a_version_1_record_reads_before_and_after_its_migration(path):
    _version_1_record(path)
    old = FileRecord("a.md", 10, 5, "ha", "s", 3, 7, inode=None, ctime_ns=None)
    with IndexRecord(path, readonly=True) as reader:  # not migrated yet: the new columns read as unknown
        assert reader.files("c") == {"a.md": old}
    with IndexRecord(path) as record:  # a writer migrates it
        assert record.files("c") == {"a.md": old}
        record.update_stats("c", [("a.md", 10, 5, 11, 12)])
    with sqlite3.connect(path) as connection:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(files)")}
        version = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    connection.close()
    assert {"inode", "ctime_ns"} <= columns and version == [(record_module.SCHEMA_VERSION,)]
    with IndexRecord(path, readonly=True) as reader:
        assert (reader.files("c")["a.md"].inode, reader.files("c")["a.md"].ctime_ns) == (11, 12)
