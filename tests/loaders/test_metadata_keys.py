"""Record fields become metadata keys: a field Chroma refuses must never abort an ingest (issue 7, item 6)."""

from __future__ import annotations

import json

import chromadb
import pytest

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.loaders import DirectoryLoader, DirectoryLoaderConfig
from rag_pipeline.metadata import safe_metadata

# Field names that Chroma 1.x refuses (each one aborted the whole `add`), and the ones next to them it takes.
REFUSED = ["#tag", "$where", "chroma:document", "$", "#", "", "$#x", "#chroma:document", "bad\ud800key"]
ACCEPTED = ["tag2", "a#b", "a$b", "chroma:x", "key with space", "é", "-x", "a.b"]


def _chroma_collection(tmp_path):
    return chromadb.PersistentClient(path=str(tmp_path / "chroma")).create_collection("keys")


@pytest.mark.parametrize("key", REFUSED)
def test_refused_keys_are_what_chroma_refuses(key, tmp_path):
    """Guards the premise: if Chroma starts accepting one of these, the policy can be relaxed."""
    with pytest.raises(Exception):  # noqa: B017 - Chroma raises ValueError, InvalidArgumentError or UnicodeError
        _chroma_collection(tmp_path).add(ids=["1"], embeddings=[[0.1, 0.2]], metadatas=[{key: 1}], documents=["d"])


def test_every_key_and_value_safe_metadata_returns_is_stored_by_chroma(tmp_path):
    collection = _chroma_collection(tmp_path)
    for number, key in enumerate(REFUSED + ACCEPTED):
        clean, _ = safe_metadata({key: "v\ud800alue", "other": 1})
        collection.add(ids=[str(number)], embeddings=[[0.1, 0.2]], metadatas=[clean], documents=["d"])
    assert collection.count() == len(REFUSED) + len(ACCEPTED)


def test_keys_chroma_takes_are_kept_as_they_are():
    metadata = {key: number for number, key in enumerate(ACCEPTED)}
    assert safe_metadata(metadata) == (metadata, [])


def test_refused_keys_are_renamed_when_unambiguous_and_dropped_otherwise():
    clean, problems = safe_metadata(
        {"#tag": "a", "$where": "b", "chroma:document": "c", "#": "d", "$title": "e", "title": "f", "#src": "g"},
        taken={"src"},
    )
    assert clean == {"tag": "a", "where": "b", "chroma_document": "c", "title": "f"}
    assert len(problems) == 6
    assert "field '#tag' renamed to 'tag' (Chroma refuses names that start with '#' or '$')" in problems
    assert "field 'chroma:document' renamed to 'chroma_document' (a name Chroma reserves)" in problems
    assert any(p.startswith("field '#' dropped") for p in problems)
    assert any(p.startswith("field '$title' dropped") and "'title' is taken" in p for p in problems)
    assert any(p.startswith("field '#src' dropped") and "'src' is taken" in p for p in problems)


def test_safe_metadata_is_idempotent():
    clean, _ = safe_metadata({"#tag": "x\udc80", "$where": 1, "chroma:document": [1, 2], "ok": True})
    assert safe_metadata(clean) == (clean, [])


def _hostile_keys_corpus(root):
    root.mkdir()
    (root / "facts.csv").write_text(
        'id,text,#tag,$where,chroma:document,category\n'
        'c1,Otters hold hands while they sleep.,animals,river,doc1,nature\n'
        'c2,Basalt forms when lava cools quickly.,rocks,volcano,doc2,geology\n',
        encoding="utf-8",
    )
    records = [
        {"id": "j1", "text": "Bees dance to show where flowers are.", "#tag": "insects", "$where": "hive",
         "chroma:document": "x", "": "no name"},
        {"id": "j2", "text": "Tides follow the moon.", "#tag": "sea", "$": "no name left"},
    ]
    (root / "notes.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    (root / "plain.txt").write_text("A plain file with no metadata of its own.\n", encoding="utf-8")
    return root


def test_a_corpus_with_fields_chroma_refuses_ingests_fully_and_again(tmp_path, tiny_bge_dir):
    corpus = _hostile_keys_corpus(tmp_path / "corpus")
    config = pipeline_config(corpus, tmp_path / "index", str(tiny_bge_dir))
    report = Pipeline.from_config(config).ingest()
    assert report.files_loaded == 3 and report.documents == 5 and report.collection_count >= 5
    reasons: dict[str, list[str]] = {}
    for error in report.errors:
        reasons.setdefault(error.source, []).append(error.reason)
    # Each affected field once per file, not once per record.
    assert sorted(reasons["facts.csv"]) == sorted([
        "field '#tag' renamed to 'tag' (Chroma refuses names that start with '#' or '$')",
        "field '$where' renamed to 'where' (Chroma refuses names that start with '#' or '$')",
        "field 'chroma:document' renamed to 'chroma_document' (a name Chroma reserves)",
    ])
    assert sorted(reasons["notes.jsonl"]) == sorted([
        "field '#tag' renamed to 'tag' (Chroma refuses names that start with '#' or '$')",
        "field '$where' renamed to 'where' (Chroma refuses names that start with '#' or '$')",
        "field 'chroma:document' renamed to 'chroma_document' (a name Chroma reserves)",
        "field '$' dropped (Chroma refuses names that start with '#' or '$')",
    ])
    assert "plain.txt" not in reasons

    pipeline = Pipeline.from_config(config)
    stored = pipeline.store.collection.get(include=["metadatas", "documents"])
    by_doc = {m["doc_id"]: (m, d) for m, d in zip(stored["metadatas"], stored["documents"])}
    assert set(by_doc) == {"facts.csv#row=c1", "facts.csv#row=c2", "notes.jsonl#line=j1", "notes.jsonl#line=j2",
                           "plain.txt"}
    otters, _ = by_doc["facts.csv#row=c1"]
    assert (otters["tag"], otters["where"], otters["chroma_document"], otters["category"]) == (
        "animals", "river", "doc1", "nature")
    assert by_doc["notes.jsonl#line=j2"][0]["tag"] == "sea" and "$" not in by_doc["notes.jsonl#line=j2"][0]
    # The renamed field works in a filter.
    hits = pipeline.store.search("flowers", k=5, where={"tag": "insects"})
    assert [h.metadata["doc_id"] for h in hits] == ["notes.jsonl#line=j1"]

    # A later ingest works too: unchanged files are skipped, a changed one is re-read.
    again = Pipeline.from_config(config).ingest()
    assert again.files_unchanged == 3 and again.errors == []
    with open(corpus / "facts.csv", "a", encoding="utf-8") as handle:
        handle.write("c3,Granite cools slowly deep underground.,rocks,crust,doc3,geology\n")
    third = Pipeline.from_config(config).ingest()
    assert third.files_updated == 1 and third.added >= 1
    assert Pipeline.from_config(config).store.collection.count() == third.collection_count


def test_json_escapes_that_are_not_unicode_are_repaired_and_ingested(tmp_path, tiny_bge_dir):
    """JSON may escape a lone surrogate ("\\ud800"); Chroma and UTF-8 cannot hold one."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    record = {"id": "j2", "text": "Tides follow the moon\ud800.", "note\ud800": "odd key", "tag": "sea\udfff"}
    (corpus / "notes.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    config = pipeline_config(corpus, tmp_path / "index", str(tiny_bge_dir))
    report = Pipeline.from_config(config).ingest()
    assert sorted(e.reason for e in report.errors) == sorted([
        "field 'note\\ud800' renamed to 'note\ufffd' (not valid Unicode)",
        "field 'tag': invalid Unicode (a lone surrogate) replaced with U+FFFD",
        "text: invalid Unicode (a lone surrogate) replaced with U+FFFD",
    ])
    stored = Pipeline.from_config(config).store.collection.get(include=["metadatas", "documents"])
    assert stored["documents"] == ["Tides follow the moon\ufffd."]
    assert (stored["metadatas"][0]["note\ufffd"], stored["metadatas"][0]["tag"]) == ("odd key", "sea\ufffd")


def test_loader_reports_each_field_problem_once_per_file(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    rows = "".join(f"r{n},Text number {n}.,t{n}\n" for n in range(50))
    (corpus / "many.csv").write_text("id,text,#tag\n" + rows, encoding="utf-8")
    result = DirectoryLoader(DirectoryLoaderConfig(path=corpus, show_progress=False)).load()
    assert len(result.documents) == 50 and all(d.metadata["tag"].startswith("t") for d in result.documents)
    assert [e.reason for e in result.errors] == [
        "field '#tag' renamed to 'tag' (Chroma refuses names that start with '#' or '$')"
    ]


def test_chunks_indexed_directly_with_refused_keys_are_stored(tmp_path, tiny_bge_dir):
    """Chunks that never went through the loader (Pipeline.index_chunks) are made safe by the store."""
    from langchain_core.documents import Document

    config = pipeline_config(tmp_path, tmp_path / "index", str(tiny_bge_dir))
    pipeline = Pipeline.from_config(config)
    document = Document("Lichens are fungi living with algae.", metadata={"doc_id": "d", "#tag": "a", "$x": 1})
    pipeline.index_chunks(pipeline.chunker.split_documents([document]))
    stored = pipeline.store.collection.get(include=["metadatas"])["metadatas"][0]
    assert (stored["tag"], stored["x"]) == ("a", 1) and "#tag" not in stored
