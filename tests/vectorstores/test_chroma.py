import numpy as np
import pytest

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from conftest import pipeline_config
from rag_pipeline import IndexMismatchError, Pipeline
from rag_pipeline.vectorstores.chroma import ChromaStore, ChromaStoreConfig


def _pipe(corpus, index, model, **overrides):
    return Pipeline.from_config(pipeline_config(corpus, index, str(model)), overrides=overrides)


def test_reingest_adds_nothing(small_corpus, tmp_path, tiny_bge_dir):
    first = _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    assert first.added == first.chunks == 3 and first.skipped == 0
    # A new process would build a new Pipeline: do the same.
    second = _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    assert (second.added, second.skipped, second.embedded) == (0, 3, 0)
    assert second.collection_count == 3


def test_changed_text_gets_a_new_chunk_and_unchanged_text_is_not_reembedded(small_corpus, tmp_path, tiny_bge_dir):
    _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    (small_corpus / "tides.txt").write_text("Spring tides come at new and full moon.\n")
    report = _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    assert (report.added, report.skipped, report.embedded) == (1, 2, 1)


def test_fingerprint_guard_refuses_another_model(small_corpus, tmp_path, tiny_bge_dir, tiny_bge_other_dir):
    _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    other = _pipe(small_corpus, tmp_path / "index", tiny_bge_other_dir)
    with pytest.raises(IndexMismatchError) as error:
        other.ingest()
    message = str(error.value)
    assert "index has 'bge-tiny-en-v1.5', config gives 'bge-other-en-v1.5'" in message
    assert "identity: index has 'sha256:" in message  # the weights differ, not only the names
    assert "vectorstore.collection" in message  # the fix
    with pytest.raises(IndexMismatchError):
        other.query("bees")
    # A new collection name is the remedy, and it works.
    assert _pipe(small_corpus, tmp_path / "index", tiny_bge_other_dir, **{"vectorstore.collection": "other"}).ingest().added == 3


def test_fingerprint_guard_refuses_other_weights_in_a_folder_of_the_same_name(
    small_corpus, tmp_path, tiny_bge_dir, tiny_bge_same_name_dir
):
    """a/bge-tiny-en-v1.5 and b/bge-tiny-en-v1.5: same name, other weights, never one collection."""
    assert tiny_bge_dir.name == tiny_bge_same_name_dir.name
    _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    other = _pipe(small_corpus, tmp_path / "index", tiny_bge_same_name_dir)
    with pytest.raises(IndexMismatchError, match=r"identity: index has 'sha256:\w+', config gives 'sha256:\w+'"):
        other.ingest()
    with pytest.raises(IndexMismatchError):
        other.query("bees")


def test_embedding_cache_never_returns_another_models_vectors(small_corpus, tmp_path, tiny_bge_dir, tiny_bge_same_name_dir):
    _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    other = _pipe(small_corpus, tmp_path / "index", tiny_bge_same_name_dir, **{"vectorstore.collection": "other"})
    report = other.ingest()
    assert report.embedded == 3  # nothing taken from the first model's cached vectors
    stored = other.store.collection.get(include=["embeddings", "documents"])
    np.testing.assert_allclose(
        np.asarray(stored["embeddings"]), np.array(other.embeddings.embed_documents(stored["documents"])), atol=1e-6
    )


def test_fingerprint_guard_refuses_another_instruction(small_corpus, tmp_path, tiny_bge_dir):
    _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    changed = _pipe(small_corpus, tmp_path / "index", tiny_bge_dir, **{"embeddings.query_instruction": "query: "})
    with pytest.raises(IndexMismatchError, match="query_instruction"):
        changed.ingest()


class FixedEmbeddings(Embeddings):
    """Every query is the unit vector (1, 0, 0): scores can be checked against known cosines
    (a real tiny model gives every pair a cosine of 0.99999x, so a constant score would pass)."""

    def embed_query(self, text):
        return [1.0, 0.0, 0.0]

    def embed_documents(self, texts):
        raise AssertionError("passage vectors are given to upsert, never computed here")

    def fingerprint(self, **kwargs):
        return {"model": "fixed-unit-vectors", "dimension": 3}


# passages at known cosines with the query (1, 0, 0), all unit vectors
COSINES = {"near": 0.9, "half": 0.5, "away": -0.2}
VECTORS = {
    "near": [0.9, (1 - 0.81) ** 0.5, 0.0],
    "half": [0.5, 0.0, 0.75**0.5],
    "away": [-0.2, -(0.96**0.5), 0.0],
}


@pytest.mark.parametrize("distance", ["cosine", "ip", "l2"])
def test_scores_are_the_true_cosines_for_every_distance(tmp_path, distance):
    # unit vectors: cosine similarity = inner product = 1 - squared L2 distance / 2
    store = ChromaStore(ChromaStoreConfig(persist_directory=tmp_path / "index", distance=distance), FixedEmbeddings())
    chunks = [Document(page_content=name, metadata={"source": name}, id=name) for name in VECTORS]
    store.upsert(chunks, np.array([VECTORS[name] for name in VECTORS]))
    assert store.collection.metadata["hnsw:space"] == distance
    hits = store.search("anything", k=3)
    assert [h.id for h in hits] == ["near", "half", "away"]
    assert [h.metadata["score"] for h in hits] == pytest.approx([0.9, 0.5, -0.2], abs=1e-5)


def test_cosine_scores_do_not_depend_on_the_passage_vectors_length(tmp_path):
    store = ChromaStore(ChromaStoreConfig(persist_directory=tmp_path / "index"), FixedEmbeddings())
    assert store.config.distance == "cosine"  # the default
    lengths = {"near": 3.0, "half": 0.2, "away": 7.0}
    chunks = [Document(page_content=name, metadata={"source": name}, id=name) for name in VECTORS]
    store.upsert(chunks, np.array([np.multiply(VECTORS[name], lengths[name]) for name in VECTORS]))
    hits = store.search("anything", k=3)
    assert {h.id: h.metadata["score"] for h in hits} == pytest.approx(COSINES, abs=1e-5)


def test_writes_are_batched_under_the_limit(small_corpus, tmp_path, tiny_bge_dir):
    pipe = _pipe(small_corpus, tmp_path / "index", tiny_bge_dir, **{"vectorstore.write_batch_size": 2})
    calls = []
    collection = pipe.store.collection
    original = collection.upsert

    def spy(**kwargs):
        calls.append(len(kwargs["ids"]))
        return original(**kwargs)

    collection.upsert = spy
    pipe.ingest()
    assert calls == [2, 1]


def test_embedding_cache_is_keyed_by_truncation_length_too(small_corpus, tmp_path, tiny_bge_dir):
    """Vectors cut at 8 tokens are not the vectors cut at 128: an A/B of max_seq_length must re-embed."""
    first = _pipe(small_corpus, tmp_path / "index", tiny_bge_dir).ingest()
    assert first.embedded == 3
    short = _pipe(
        small_corpus, tmp_path / "index", tiny_bge_dir,
        **{"embeddings.max_seq_length": 8, "vectorstore.collection": "short"},
    ).ingest()
    assert short.embedded == 3  # nothing reused from the 128-token vectors
    again = _pipe(
        small_corpus, tmp_path / "index", tiny_bge_dir,
        **{"embeddings.max_seq_length": 8, "vectorstore.collection": "short-again"},
    ).ingest()
    assert (again.added, again.embedded) == (3, 0)  # same settings: all from the cache


def test_an_upsert_writes_only_what_differs_from_what_is_held(tmp_path, monkeypatch):
    """Re-ingesting a changed file upserts all its chunks; the unchanged ones (same text, metadata
    and vector) are not written to Chroma again, and a change in any of the three is."""
    store = ChromaStore(ChromaStoreConfig(persist_directory=tmp_path / "index"), FixedEmbeddings())
    names = list(VECTORS)
    chunks = [Document(page_content=name, metadata={"source": name, "title": "t"}, id=name) for name in names]
    vectors = np.array([VECTORS[name] for name in names])
    store.upsert(chunks, vectors)
    written: list[list[str]] = []
    upsert = store.collection.upsert
    monkeypatch.setattr(store.collection, "upsert", lambda **kw: (written.append(kw["ids"]), upsert(**kw)))
    version = store.content_version()
    store.upsert(chunks, vectors)
    assert written == [] and store.content_version() == version
    changed_text = Document(page_content="near, reworded", metadata={"source": "near", "title": "t"}, id="near")
    dropped_key = Document(page_content="half", metadata={"source": "half"}, id="half")
    store.upsert([changed_text, dropped_key, chunks[2]], np.array([VECTORS["near"], VECTORS["half"], -vectors[2]]))
    assert written == [["near", "half", "away"]] and store.content_version() != version
    held = {d.id: d for d in store.documents(names)}
    assert held["near"].page_content == "near, reworded" and "title" not in held["half"].metadata
    assert np.allclose(store.vectors(["away"])[0], -vectors[2], atol=1e-5)  # a new vector alone is written too
