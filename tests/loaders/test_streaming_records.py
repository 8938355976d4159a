"""CSV and JSONL records: read as a stream, split where the format says (issue 7, items 7, 8 and 11)."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc

import pytest

from rag_pipeline.loaders import DirectoryLoader, DirectoryLoaderConfig
from rag_pipeline.loaders import readers
from rag_pipeline.loaders.readers import BoundedInput, ReaderOptions, UnreadableFile


def _loader(path, **options) -> DirectoryLoader:
    return DirectoryLoader(DirectoryLoaderConfig(path=path, show_progress=False, **options))


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    return root


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])  # json.dumps keeps them raw
def test_a_jsonl_record_holding_a_line_separator_is_one_record(corpus, separator):
    lines = [
        json.dumps({"text": f"before{separator}after"}, ensure_ascii=False),
        json.dumps({"text": "second record"}),
        json.dumps({"text": "third record"}),
    ]
    (corpus / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _loader(corpus).load()
    assert result.errors == []
    assert [(d.metadata["doc_id"], d.page_content) for d in result.documents] == [
        ("records.jsonl#line=1", f"before{separator}after"),
        ("records.jsonl#line=2", "second record"),
        ("records.jsonl#line=3", "third record"),
    ]


def test_jsonl_with_crlf_line_ends_and_a_byte_order_mark(corpus):
    (corpus / "crlf.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n\r\n{"text": "two"}\r\n')
    result = _loader(corpus).load()
    assert result.errors == []
    assert [d.metadata["doc_id"] for d in result.documents] == ["crlf.jsonl#line=1", "crlf.jsonl#line=3"]


def test_a_csv_cell_longer_than_csvs_default_limit_is_read(corpus):
    long_text = "word " * 40_000  # 200,000 characters; csv refuses fields over 131,072 by default
    with open(corpus / "long.csv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], ["big", long_text], ["small", "short text"]])
    default_limit = csv.field_size_limit()
    result = _loader(corpus).load()
    assert result.errors == []
    assert [len(d.page_content) for d in result.documents] == [200_000, 10]
    # The process-wide setting is as it was: other code using csv sees no change.
    assert csv.field_size_limit() == default_limit


def test_a_csv_cell_is_still_bounded_by_max_file_size(corpus):
    """With no limit set by the caller, the cell limit is max_file_size: a cell never needs more."""
    options = ReaderOptions(max_bytes=300_000)
    data = ("id,text\nbig," + "x" * 250_000 + "\n").encode()
    records = list(readers.read_csv(BoundedInput(io.BytesIO(data), options.max_bytes), options, []))
    assert len(records[0].text) == 250_000


def test_csv_keeps_quoted_newlines_and_old_mac_line_ends(corpus):
    (corpus / "quoted.csv").write_bytes(b'id,text\r\na,"line one\r\nline two"\r\nb,plain\rc,old mac\r')
    result = _loader(corpus).load()
    assert result.errors == []
    assert [(d.metadata["doc_id"], d.page_content) for d in result.documents] == [
        ("quoted.csv#row=a", "line one\r\nline two"),
        ("quoted.csv#row=b", "plain"),
        ("quoted.csv#row=c", "old mac"),
    ]


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 4096])
def test_records_are_the_same_whatever_the_block_boundaries(corpus, monkeypatch, block_size):
    """A character, a "\\r\\n" or a record split across two reads is put back together."""
    monkeypatch.setattr(readers, "BLOCK_SIZE", block_size)
    (corpus / "t.csv").write_bytes('id,text,note\r\nx,"a\r\nb",é\r\ny,çà€😀,\r\n'.encode())
    (corpus / "t.jsonl").write_bytes('{"text": "é€😀\u2028z"}\n\n{"text": "b"}'.encode())
    documents = _loader(corpus).load().documents
    assert [(d.metadata["doc_id"], d.page_content, d.metadata.get("note")) for d in documents] == [
        ("t.csv#row=x", "a\r\nb", "é"),
        ("t.csv#row=y", "çà€😀", ""),
        ("t.jsonl#line=1", "é€😀\u2028z", None),
        ("t.jsonl#line=3", "b", None),
    ]


def test_a_decoding_error_names_its_byte_offset_across_blocks(corpus, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_SIZE", 5)
    (corpus / "bad.jsonl").write_bytes(b'{"text": "caf\xc3\xa9"}\n{"text": "ol\xe9"}\n')
    result = _loader(corpus).load()
    assert [e.reason for e in result.errors] == ["not valid utf-8 text (byte 30)"]


def test_iter_file_is_lazy_and_matches_load_file(corpus, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_SIZE", 1024)
    lines = [json.dumps({"id": f"r{n}", "text": f"record {n} " + "x" * 100, "n": n}) for n in range(2000)]
    path = corpus / "big.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    loader = _loader(corpus)
    reads: list[int] = []
    real_read = BoundedInput.read

    def counting_read(self, size=-1):
        data = real_read(self, size)
        reads.append(self.consumed)
        return data

    monkeypatch.setattr(BoundedInput, "read", counting_read)
    warnings: list[str] = []
    stream = loader.iter_file(path, warnings)
    first = next(stream)
    assert first.metadata["doc_id"] == "big.jsonl#line=r0"
    assert max(reads) <= 2 * 1024 < path.stat().st_size  # only the first blocks were read
    rest = list(stream)
    documents, load_warnings = loader.load_file(path)
    assert [first, *rest] == documents and len(documents) == 2000
    assert warnings == load_warnings == []


def test_iter_file_reports_line_problems_as_they_come(corpus):
    (corpus / "m.jsonl").write_text('{"text": "a"}\n{bad\n{"text": "c"}\n', encoding="utf-8")
    warnings: list[str] = []
    stream = _loader(corpus).iter_file(corpus / "m.jsonl", warnings)
    assert next(stream).page_content == "a" and warnings == []
    assert next(stream).page_content == "c"
    assert warnings == ["line 2: invalid JSON (Expecting property name enclosed in double quotes)"]


def test_iter_file_raises_for_a_whole_file_problem(corpus):
    (corpus / "bad.jsonl").write_text("{oops\nnull\n", encoding="utf-8")
    (corpus / "nul.csv").write_bytes(b"id,text\n\x00\x01\x02")
    loader = _loader(corpus)
    with pytest.raises(UnreadableFile, match=r"no readable lines \(line 1: invalid JSON"):
        list(loader.iter_file(corpus / "bad.jsonl", []))
    with pytest.raises(UnreadableFile, match="binary content"):
        list(loader.iter_file(corpus / "nul.csv", []))
    with pytest.raises(UnreadableFile, match="No such file or directory"):
        list(loader.iter_file(corpus / "missing.jsonl", []))


def test_a_file_that_grows_while_streamed_is_refused(corpus, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_SIZE", 64)
    path = corpus / "growing.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {n}"}) + "\n" for n in range(20)), encoding="utf-8")
    loader = _loader(corpus, max_file_size=path.stat().st_size)
    stream = loader.iter_file(path, [])
    next(stream)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "appended"}) + "\n")
    with pytest.raises(UnreadableFile, match=r"grew past loader.max_file_size"):
        list(stream)


def test_streaming_memory_is_bounded_by_the_largest_record_not_the_file(corpus):
    """A 16 MB JSONL of 1 kB records is read with a few MB of Python memory at its peak."""
    record = "y" * 1000
    path = corpus / "large.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for n in range(16_000):
            handle.write(json.dumps({"id": n, "text": record}) + "\n")
    size = path.stat().st_size
    loader = _loader(corpus, max_file_size=10 * size)
    tracemalloc.start()
    try:
        count = sum(1 for _ in loader.iter_file(path, []))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 16_000
    assert peak < size / 3, f"peak {peak} bytes for a {size}-byte file"
