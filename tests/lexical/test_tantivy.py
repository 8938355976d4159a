"""The tantivy index on its own: BM25 scores equal to bm25s's for the same settings, kept exact
through adds, rewrites and deletes done in place; a kill between its two stores; filters; and the
settings that need a reindex."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langchain_core.documents import Document

from rag_pipeline.errors import ConfigError
from rag_pipeline.lexical import tantivy_index
from rag_pipeline.lexical.bm25 import BM25Config, BM25Index
from rag_pipeline.lexical.tantivy_index import ENGINE_FOLDER, TantivyConfig, TantivyIndex

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus"


def sentences() -> list[Document]:
    """Real text: the sample corpus's sentences, one chunk each, with the file as metadata."""
    found = []
    for path in sorted(CORPUS.rglob("*.txt")) + sorted(CORPUS.rglob("*.md")):
        for n, sentence in enumerate(re.split(r"(?<=[.!?])\s+", path.read_text(encoding="utf-8"))):
            if len(sentence.split()) >= 4:
                found.append(Document(page_content=sentence, metadata={"source": path.name}, id=f"{path.stem}-{n:03d}"))
    return found


QUERIES = ["how much water per day", "coffee grind ratio", "tune the guitar strings", "boil water camping", "sunlight leaves"]


def index_of(kind, root, chunks, **settings):
    index = BM25Index(BM25Config(**settings)) if kind == "bm25" else TantivyIndex(TantivyConfig(**settings))
    index.place(root, "test")
    with index.writing():
        index.upsert_texts(chunks)
    return index


def ranked(index, queries=QUERIES, k=10, where=None):
    return [[(d.id, round(d.metadata["score"], 4)) for d in hits] for hits in index.search_batch_text(queries, k, where)]


@pytest.fixture(scope="module")
def chunks():
    found = sentences()
    assert len(found) > 60
    return found


def test_scores_equal_bm25s_over_the_same_chunks(tmp_path, chunks):
    tantivy = index_of("tantivy", tmp_path / "t", chunks)
    bm25 = index_of("bm25", None, chunks)
    assert ranked(tantivy) == ranked(bm25)
    assert all(ranked(tantivy))


def test_statistics_stay_exact_through_rewrites_and_deletes_in_place(tmp_path, chunks):
    """Tantivy alone keeps a deleted document in its statistics until a merge; the scores here
    must not: after edits they equal a fresh bm25s index of what is left."""
    index = index_of("tantivy", tmp_path / "t", chunks)
    removed = [c.id for c in chunks[::3]]
    rewritten = [
        Document(page_content=c.page_content.upper() + " water water", metadata={"source": "edited"}, id=c.id)
        for c in chunks[1::7]
    ]
    with index.writing():
        index.delete(removed)
        index.upsert_texts(rewritten)
        index.upsert_texts(chunks[2:10:3])  # unchanged chunks written again (a rerun): no effect
    left = {c.id: c for c in chunks if c.id not in removed}
    left.update({c.id: c for c in rewritten})
    left.update({c.id: c for c in chunks[2:10:3]})
    assert index.ids() == set(left)
    assert index._table().meta("counted_chunks") == str(len(left))  # (what N is read from, not COUNT(*))
    assert ranked(index) == ranked(index_of("bm25", None, list(left.values())))
    # a new view over the same folder (another process) reads the same
    reader = TantivyIndex(TantivyConfig())
    reader.place(tmp_path / "t", "test")
    assert ranked(reader) == ranked(index)


def test_filters_mean_the_same_narrow_or_broad(tmp_path, chunks, monkeypatch):
    index = index_of("tantivy", tmp_path / "t", chunks)
    bm25 = index_of("bm25", None, chunks)
    narrow = {"source": "coffee-brewing-ratios.txt"}
    broad = {"source": {"$ne": "coffee-brewing-ratios.txt"}}
    for where in (narrow, broad):
        expected = ranked(bm25, where=where)
        assert ranked(index, where=where) == expected and any(expected)
        # past MAX_FILTER_IDS the filter is applied to tantivy's candidates instead of inside it
        monkeypatch.setattr(tantivy_index, "MAX_FILTER_IDS", 0)
        assert ranked(index, where=where) == expected
        monkeypatch.undo()


def test_a_kill_between_tantivy_and_the_table_leaves_nothing_served_and_the_next_write_whole(tmp_path, chunks):
    """A write commits to tantivy first, then to SQLite. SIGKILL in between: tantivy holds chunks
    the table does not. They are never served nor counted, and writing them again leaves one copy."""
    root = tmp_path / "t"
    first, late = chunks[:40], chunks[40:]
    index_of("tantivy", root, first)
    script = textwrap.dedent(f"""
        import os, signal, pickle, sys
        from rag_pipeline.lexical import tantivy_index
        from rag_pipeline.lexical.tantivy_index import TantivyConfig, TantivyIndex
        tantivy_index.WordsTable.write = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        late = pickle.loads(sys.stdin.buffer.read())
        index = TantivyIndex(TantivyConfig())
        index.place({str(root)!r}, "test")
        with index.writing():
            index.upsert_texts(late)
    """)
    import pickle

    killed = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(late), capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()

    reader = TantivyIndex(TantivyConfig())
    reader.place(root, "test")
    engine = reader._engine()
    assert engine.searcher(object()).num_docs == len(chunks)  # tantivy holds the late chunks...
    assert reader.ids() == {c.id for c in first}  # ...the index does not
    assert ranked(reader) == ranked(index_of("bm25", None, first))

    with reader.writing():
        reader.upsert_texts(late)
    assert engine.searcher(object()).num_docs == len(chunks)  # one copy each
    assert ranked(reader) == ranked(index_of("bm25", None, chunks))


def test_k1_and_b_need_no_rebuild_and_other_words_are_made_again_by_the_next_write(tmp_path, chunks):
    root = tmp_path / "t"
    index_of("tantivy", root, chunks)
    flat = TantivyIndex(TantivyConfig(k1=0.5, b=0.3))
    flat.place(root, "test")
    stemmed = ranked(flat)
    assert stemmed == ranked(index_of("bm25", None, chunks, k1=0.5, b=0.3))
    unstemmed = TantivyIndex(TantivyConfig(stemmer=None))
    unstemmed.place(root, "test")
    with pytest.raises(ConfigError, match="another stemmer"):
        unstemmed.search_batch_text(["water"], 3)
    with unstemmed.writing():
        pass
    assert ranked(unstemmed) == ranked(index_of("bm25", None, chunks, stemmer=None))
    with pytest.raises(ConfigError, match="another stemmer"):  # the stemmed view is now the one out of step
        flat.search_batch_text(["water"], 3)


def test_the_index_lives_beside_the_chunk_table_and_goes_with_its_collection(tmp_path, chunks):
    root = tmp_path / "t"
    index = index_of("tantivy", root, chunks[:5])
    assert (root / "test" / ENGINE_FOLDER).is_dir() and (root / "test" / "chunks.sqlite").is_file()
    index.drop_collection("test")
    assert not (root / "test").exists() and index.ids() == set()


def test_switching_lexical_type_keeps_the_chunks_and_the_next_write_brings_tantivy_up_to_date(tmp_path, chunks):
    """bm25 and tantivy share the collection's chunk table. What bm25 wrote (or deleted) after
    tantivy last did is unknown to tantivy's words and statistics: a reader says to ingest, and the
    next write session makes them again from the table."""
    root = tmp_path / "lexical"
    bm25 = index_of("bm25", root, chunks[:50])
    reader = TantivyIndex(TantivyConfig())
    reader.place(root, "test")
    with pytest.raises(ConfigError, match="rag-pipeline ingest"):
        reader.search_batch_text(["water"], 3)
    with reader.writing():
        pass
    assert ranked(reader) == ranked(bm25) and any(ranked(reader))

    with bm25.writing():  # back to bm25: a delete and an add tantivy does not see
        bm25.delete([c.id for c in chunks[:10]])
        bm25.upsert_texts(chunks[50:60])
    with pytest.raises(ConfigError, match="rag-pipeline ingest"):
        reader.search_batch_text(["water"], 3)
    with reader.writing():
        reader.upsert_texts(chunks[60:62])
    assert ranked(reader) == ranked(index_of("bm25", None, chunks[10:62]))
    assert reader._engine().searcher(object()).num_docs == 52


def test_an_id_of_any_length_is_replaced_and_deleted_in_tantivy_too(tmp_path):
    """Chunk ids from code can be long; tantivy's own raw tokenizer drops a term past 255 bytes,
    which would make every rewrite a duplicate and every delete a miss."""
    long_id = "doc/" + "x" * 400
    index = TantivyIndex(TantivyConfig())
    index.place(tmp_path / "t", "test")
    engine = index._engine()
    with index.writing():
        index.upsert_texts([Document(page_content="moon landing", id=long_id), Document(page_content="green tea", id="b")])
    with index.writing():
        index.upsert_texts([Document(page_content="moon landing again", id=long_id)])
    assert engine.searcher(index._table().version()).num_docs == 2
    with index.writing():
        index.delete([long_id])
    assert engine.searcher(index._table().version()).num_docs == 1
    assert index.search_batch_text(["moon"], 5) == [[]]


def test_a_tantivy_folder_of_another_schema_is_rebuilt_by_the_next_writer(tmp_path, chunks):
    """The tantivy folder is derived from the chunk table: one made by another version of the
    code (another schema) is refused by a reader with the remedy and remade by a write session."""
    import shutil

    import tantivy

    root = tmp_path / "t"
    index_of("tantivy", root, chunks[:30])
    engine_folder = root / "test" / ENGINE_FOLDER
    shutil.rmtree(engine_folder)
    engine_folder.mkdir()
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("something_else", stored=True)
    tantivy.Index(builder.build(), path=str(engine_folder))

    reader = TantivyIndex(TantivyConfig())
    reader.place(root, "test")
    with pytest.raises(ConfigError, match="rag-pipeline ingest"):
        reader.search_batch_text(["water"], 3)
    writer = TantivyIndex(TantivyConfig())
    writer.place(root, "test")
    with writer.writing():
        pass
    assert ranked(writer) == ranked(index_of("bm25", None, chunks[:30])) and any(ranked(writer))


def test_a_huge_k_asked_of_the_index_itself_returns_what_it_holds(tmp_path, chunks):
    """The retriever bounds k; the index's own API must too (tantivy sizes its heap by the limit)."""
    index = index_of("tantivy", tmp_path / "t", chunks[:20])
    [hits] = index.search_batch_text(["water"], 10**18)
    assert hits and len(hits) <= 20
    assert [(d.id, round(d.metadata["score"], 4)) for d in hits] == ranked(index_of("bm25", None, chunks[:20]), ["water"], k=10**18)[0]
