"""One conformance suite for every index of chunks, as Haystack checks its document stores: each
test runs against Chroma (embedded, in a folder), FAISS, BM25 (bm25s and tantivy), BGE-M3 sparse and a brute-force
store written here, and checks a member of the index's protocol (``VectorIndex`` or
``LexicalIndex``, both ``Generations``) by what it does, not by its presence alone.

The brute-force store is the proof of the shared base (:mod:`rag_pipeline.index_storage`,
:mod:`rag_pipeline.vectorstores.shared`): a new vector store that writes its storage (the vectors
held in memory as one matrix) and its search (numpy), and passes the same suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Generic, Literal, Protocol

import numpy as np
import pytest
from langchain_core.documents import Document

from rag_pipeline.contracts import Generations, LexicalIndex, VectorIndex, with_score
from rag_pipeline.errors import ConfigError, IndexMismatchError
from rag_pipeline.index_storage import ChunkTable
from rag_pipeline.metadata import stored_metadata
from rag_pipeline.stage_config import StageConfig
from rag_pipeline.vectorstores.shared import TableVectorStore

# -- a new vector store, written on the shared base ------------------------------------------------


class BruteForceStoreConfig(StageConfig):
    type: Literal["brute-force"] = "brute-force"
    persist_directory: Path | None = None
    collection: str = "test"
    distance: Literal["cosine", "ip", "l2"] = "cosine"
    write_batch_size: int = 64


class BruteForceStore(TableVectorStore):
    """Storage: the served collection's vectors held in memory as one matrix, read again from the
    chunk table when the table's version moves (a write here or in another process). Search:
    every query against every vector. The rest (chunk table, collections, following another
    process, the fingerprint guard, the checks before a search) is the base's."""

    _held: tuple[ChunkTable, int, list[str], np.ndarray] | None = None

    def _matrix(self, table: ChunkTable) -> tuple[list[str], np.ndarray]:
        version = table.version()
        if self._held is None or self._held[0] is not table or self._held[1] != version:
            ids = sorted(table.ids())
            self._held = (table, version, ids, table.vectors(ids))
        return self._held[2], self._held[3]

    def _search_table(self, table, queries, k, where, with_text):
        ids, matrix = self._matrix(table)
        scores = self.similarity(queries, matrix)
        if where:
            allowed = table.ids(where)
            scores[:, np.array([i not in allowed for i in ids], dtype=bool)] = -np.inf
        results = []
        for row in scores:
            best = [j for j in np.argsort(-row, kind="stable")[:k] if row[j] > -np.inf]
            found = table.documents([ids[j] for j in best], with_text)
            results.append([with_score(found[ids[j]], float(row[j])) for j in best])
        return results


def test_the_brute_force_store_writes_its_storage_and_search_only():
    assert {name for name in vars(BruteForceStore) if not name.startswith("__")} == {"_held", "_matrix", "_search_table"}


# -- what every index is given -----------------------------------------------------------------------

TEXTS = {
    "c1": "Coffee grind and brew ratio for a pour over.",
    "c2": "Tune each guitar string to its pitch at the fret.",
    "c3": "Water the soil of house plants when it is dry.",
    "c4": "Boil water to kill viruses and bacteria when camping.",
    "c5": "Filters remove protozoa such as cryptosporidium.",
    "c6": "Let the coffee steep for four minutes, then press.",
}
TOPICS = {"c1": "coffee", "c2": "guitar", "c3": "plants", "c4": "camping", "c5": "camping", "c6": "coffee"}
# what a lexical index is asked to find each chunk by (words only it holds)
QUERIES = {
    "c1": "grind ratio", "c2": "guitar string fret", "c3": "soil plants",
    "c4": "viruses bacteria", "c5": "protozoa cryptosporidium", "c6": "steep minutes press",
}
DIMENSION = 8
# each chunk near one axis, leaning towards the next: its own vector is its closest match
VECTORS = {
    chunk_id: (np.eye(DIMENSION)[n] + 0.2 * np.eye(DIMENSION)[n + 1]) / np.sqrt(1.04)
    for n, chunk_id in enumerate(TEXTS)
}


def chunk(chunk_id: str, text: str | None = None, **metadata: Any) -> Document:
    n = int(chunk_id[1:])
    metadata = metadata or {"source": f"{chunk_id}.txt", "topic": TOPICS[chunk_id], "n": n, "even": n % 2 == 0, "tags": ["notes", chunk_id]}
    return Document(page_content=text or TEXTS[chunk_id], metadata=metadata, id=chunk_id)


def chunks(*chunk_ids: str) -> list[Document]:
    return [chunk(i) for i in chunk_ids or TEXTS]


class UnitVectors:
    """The embedder a vector store is given: vectors are written and searched as given, so only
    the fingerprint (what the store records and checks) is asked of it."""

    def __init__(self, model: str = "conformance-unit-vectors"):
        self.model = model

    def fingerprint(self, *, load_model: bool = True) -> dict[str, Any]:
        return {"model": self.model, "dimension": DIMENSION}

    def embed_query(self, text: str) -> list[float]:
        return list(VECTORS[text])


class Record:
    """Stands for the index record another process commits to: the active collection, and a token
    that moves with every commit. ``follow`` wires an index to it as the index object does."""

    def __init__(self):
        self.active, self.commits = "test", 0

    def follow(self, index):
        index.resolve_collection = lambda: self.active
        index.change_token = lambda: self.commits
        return index

    def commit(self, active: str | None = None) -> None:
        self.active = active or self.active
        self.commits += 1


class Kind:
    """How the suite drives one kind of index: open it over a folder, write chunks, ask for a chunk."""

    protocol: type
    dense: bool

    def __init__(self, name: str, build: Callable[[Path], Any]):
        self.name, self.build = name, build

    def open(self, folder: Path):
        """A new instance over the storage in ``folder``, serving collection ``test``."""
        raise NotImplementedError

    def write(self, index, written: list[Document]) -> None:
        raise NotImplementedError

    def query(self, chunk_id: str):
        raise NotImplementedError

    def search(self, index, queries: list, k: int, where=None, *, with_text: bool = True) -> list[list[Document]]:
        raise NotImplementedError

    def find(self, index, chunk_id: str, k: int = 3, where=None, *, with_text: bool = True) -> list[Document]:
        return self.search(index, [self.query(chunk_id)], k, where, with_text=with_text)[0]


class DenseKind(Kind):
    protocol, dense = VectorIndex, True

    def open(self, folder):
        return self.build(folder)

    def write(self, index, written):
        index.upsert(written, np.stack([VECTORS[c.id] for c in written]) if written else np.zeros((0, DIMENSION)))

    def query(self, chunk_id):
        return VECTORS[chunk_id]

    def search(self, index, queries, k, where=None, *, with_text=True):
        return index.search_batch(np.asarray(queries, dtype=np.float32).reshape(len(queries), DIMENSION), k, where, with_text=with_text)


class LexicalKind(Kind):
    protocol, dense = LexicalIndex, False

    def open(self, folder):
        index = self.build(folder)
        index.place(folder, "test")
        return index

    def write(self, index, written):
        index.upsert_texts(written)

    def query(self, chunk_id):
        return QUERIES[chunk_id]

    def search(self, index, queries, k, where=None, *, with_text=True):
        return index.search_batch_text(queries, k, where, with_text=with_text)


def _chroma(folder):
    from rag_pipeline.vectorstores.chroma import ChromaStore, ChromaStoreConfig

    return ChromaStore(ChromaStoreConfig(persist_directory=folder, collection="test"), UnitVectors())


def _faiss(folder):
    pytest.importorskip("faiss")
    from rag_pipeline.vectorstores.faiss_store import FaissStore, FaissStoreConfig

    return FaissStore(FaissStoreConfig(persist_directory=folder, collection="test"), UnitVectors())


def _brute_force(folder):
    return BruteForceStore(BruteForceStoreConfig(persist_directory=folder), UnitVectors())


def _bm25(folder):
    from rag_pipeline.lexical.bm25 import BM25Config, BM25Index

    return BM25Index(BM25Config())


def _tantivy(folder):
    from rag_pipeline.lexical.tantivy_index import TantivyConfig, TantivyIndex

    return TantivyIndex(TantivyConfig())


DENSE = ["chroma", "faiss", "brute-force"]
LEXICAL = ["bm25", "tantivy", "m3-sparse"]


@pytest.fixture(scope="module")
def m3_embedder(tiny_bge_m3_dir):
    pytest.importorskip("FlagEmbedding")
    from rag_pipeline.embeddings.bge_m3 import BgeM3Embeddings, BgeM3EmbeddingsConfig

    return BgeM3Embeddings(BgeM3EmbeddingsConfig(model=str(tiny_bge_m3_dir), show_progress=False, batch_size=16))


def make_kind(name: str, request) -> Kind:
    if name == "m3-sparse":
        from rag_pipeline.lexical.m3_sparse import M3SparseConfig, M3SparseIndex

        embedder = request.getfixturevalue("m3_embedder")
        return LexicalKind(name, lambda folder: M3SparseIndex(M3SparseConfig(), embedder))
    builders = {"chroma": _chroma, "faiss": _faiss, "brute-force": _brute_force, "bm25": _bm25, "tantivy": _tantivy}
    return (DenseKind if name in DENSE else LexicalKind)(name, builders[name])


@pytest.fixture(params=DENSE + LEXICAL)
def kind(request) -> Kind:
    return make_kind(request.param, request)


@pytest.fixture(params=DENSE)
def dense(request) -> Kind:
    return make_kind(request.param, request)


@pytest.fixture(params=LEXICAL)
def lexical(request) -> Kind:
    return make_kind(request.param, request)


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "index"


def filled(kind: Kind, folder: Path, *chunk_ids: str):
    index = kind.open(folder)
    with index.writing():
        kind.write(index, chunks(*chunk_ids))
    return index


def ids_of(hits: list[Document]) -> list[str]:
    return [hit.id for hit in hits]


# -- the protocol, member by member --------------------------------------------------------------------


def declared_members(protocol: type) -> dict[str, str]:
    """Every member ``protocol`` and the protocols it extends declare: data, property or method."""
    members: dict[str, str] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol, Generic) or not getattr(cls, "_is_protocol", False):
            continue
        for name in vars(cls).get("__annotations__", {}):
            members[name] = "data"
        for name, value in vars(cls).items():
            if not name.startswith("_"):
                members[name] = "property" if isinstance(value, property) else "method" if callable(value) else members.get(name, "data")
    return members


def test_every_member_its_protocol_declares_is_there(kind, folder):
    index = kind.open(folder)
    assert isinstance(index, kind.protocol) and isinstance(index, Generations)
    members = declared_members(kind.protocol)
    assert {"resolve_collection", "change_token", "use_collection", "drop_collection", "collection_name"} <= set(members)
    if kind.dense:
        assert "content_version" in members
    for name, sort in members.items():
        if sort == "data":  # set by __init__, not left for the owner to add
            assert name in vars(index), f"{type(index).__name__}.{name} is not set by __init__"
        elif sort == "method":
            assert callable(getattr(index, name)), f"{type(index).__name__}.{name} is not a method"
        else:
            assert hasattr(index, name), f"{type(index).__name__}.{name} is missing"
    assert index.resolve_collection is None and index.change_token is None  # the owner sets them
    assert index.collection_name == "test"
    assert isinstance(index.max_batch_size, int) and index.max_batch_size > 0


def test_written_chunks_read_back_by_id_in_the_order_asked(kind, folder):
    index = filled(kind, folder)
    assert index.exists()
    assert index.count() == len(TEXTS)
    assert index.ids() == set(TEXTS)
    assert index.existing_ids(["c2", "missing", "c5"]) == {"c2", "c5"}
    documents = index.documents(["c3", "c1", "c6"])
    assert ids_of(documents) == ["c3", "c1", "c6"]
    for document in documents:
        # metadata comes back in the stored form (a list as its JSON text), the same in every index
        assert document.page_content == TEXTS[document.id]
        assert document.metadata == stored_metadata(chunk(document.id).metadata)
        assert document.metadata["tags"] == f'["notes", "{document.id}"]'


def test_a_rewritten_chunk_replaces_the_old_one_whole(kind, folder):
    index = filled(kind, folder)
    with index.writing():
        kind.write(index, [chunk("c1", "Grind ratio, written again.", source="c1.txt", topic="coffee")])
    assert index.count() == len(TEXTS)
    [document] = index.documents(["c1"])
    assert document.page_content == "Grind ratio, written again."
    assert document.metadata == {"source": "c1.txt", "topic": "coffee"}  # no key of the old chunk survives


def test_deleted_chunks_are_gone_from_reads_and_search(kind, folder):
    index = filled(kind, folder)
    with index.writing():
        index.delete(["c1", "c4", "never-written"])
        index.delete([])
    assert index.ids() == set(TEXTS) - {"c1", "c4"}
    assert index.count() == len(TEXTS) - 2
    assert index.existing_ids(["c1", "c2"]) == {"c2"}
    for gone in ("c1", "c4"):
        assert gone not in ids_of(kind.find(index, gone, k=len(TEXTS)))


def test_search_ranks_the_chunk_asked_for_first_and_keeps_to_k(kind, folder):
    index = filled(kind, folder)
    queries = [kind.query(i) for i in TEXTS]
    results = kind.search(index, queries, 2)
    assert [hits[0].id for hits in results] == list(TEXTS)
    for hits in results:
        assert 1 <= len(hits) <= 2
        scores = [hit.metadata["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True)
        for hit in hits:  # a hit is the stored chunk, plus its score
            assert hit.page_content == TEXTS[hit.id]
            assert {k: v for k, v in hit.metadata.items() if k != "score"} == stored_metadata(chunk(hit.id).metadata)
    [without_text] = kind.search(index, [kind.query("c2")], 2, with_text=False)
    assert without_text[0].id == "c2" and all(hit.page_content == "" for hit in without_text)


@pytest.mark.parametrize(
    "where, selected",
    [
        ({"topic": "camping"}, {"c4", "c5"}),
        ({"n": {"$gte": 5}}, {"c5", "c6"}),
        ({"$and": [{"topic": "coffee"}, {"even": True}]}, {"c6"}),
        ({"topic": "nothing"}, set()),
    ],
)
def test_a_filter_selects_the_same_chunks_in_ids_and_in_search(kind, folder, where, selected):
    index = filled(kind, folder)
    assert index.ids(where) == selected
    for chunk_id in TEXTS:
        hits = kind.find(index, chunk_id, k=len(TEXTS), where=where)
        assert set(ids_of(hits)) <= selected
        if chunk_id in selected:
            assert hits[0].id == chunk_id
        else:
            assert chunk_id not in ids_of(hits)


def test_search_refuses_k_below_one_and_answers_no_queries_with_nothing(kind, folder):
    index = filled(kind, folder)
    for k in (0, -1):
        with pytest.raises(ConfigError, match=r"^retriever.k must be positive"):
            kind.find(index, "c1", k=k)
    assert kind.search(index, [], 3) == []


def test_an_index_never_written_finds_nothing(kind, folder):
    index = kind.open(folder)
    assert not index.exists()
    assert index.count() == 0 and index.ids() == set() and index.existing_ids(["c1"]) == set()
    assert kind.search(index, [kind.query("c1"), kind.query("c2")], 3) == [[], []]


def test_clear_removes_every_chunk_and_the_index_takes_new_ones(kind, folder):
    index = filled(kind, folder)
    with index.writing():
        index.clear()
    assert index.count() == 0 and index.ids() == set()
    assert kind.find(index, "c1") == []
    with index.writing():
        kind.write(index, chunks("c2"))
    assert index.ids() == {"c2"} and ids_of(kind.find(index, "c2")) == ["c2"]


def test_a_new_instance_over_the_same_storage_serves_the_same_chunks(kind, folder):
    written = filled(kind, folder)
    expected = [ids_of(kind.find(written, i)) for i in TEXTS]
    reopened = kind.open(folder)
    assert reopened.exists() and reopened.count() == len(TEXTS) and reopened.ids() == set(TEXTS)
    assert [d.page_content for d in reopened.documents(["c4"])] == [TEXTS["c4"]]
    assert [ids_of(kind.find(reopened, i)) for i in TEXTS] == expected


# -- collections and generations ------------------------------------------------------------------------


def test_vector_collections_are_kept_apart_listed_and_dropped(dense, folder):
    index = filled(dense, folder, "c1", "c2")
    index.use_collection("test.v2")
    assert index.collection_name == "test.v2" and index.count() == 0
    with index.writing():
        dense.write(index, chunks("c3"))
    assert index.ids() == {"c3"} and ids_of(dense.find(index, "c3")) == ["c3"]
    assert {"test", "test.v2"} <= index.collection_names()
    assert index.exists_named("test") and index.exists_named("test.v2") and not index.exists_named("test.v3")
    assert [d.page_content for d in index.documents_in("test", ["c2", "missing", "c1"])] == [TEXTS["c2"], TEXTS["c1"]]
    index.use_collection("test")
    assert index.ids() == {"c1", "c2"}
    index.drop_collection("test.v2")
    index.drop_collection("never-made")
    assert not index.exists_named("test.v2") and "test.v2" not in index.collection_names()
    assert index.ids() == {"c1", "c2"}  # the served collection is untouched


def test_lexical_collections_are_kept_apart_shared_by_views_and_dropped(lexical, folder):
    index = filled(lexical, folder, "c1", "c2")
    assert index.root == folder
    view = index.for_collection("test.v2")
    assert isinstance(view, LexicalIndex) and type(view) is type(index)
    assert view.collection_name == "test.v2" and index.collection_name == "test"
    with view.writing():
        lexical.write(view, chunks("c3"))
    assert view.ids() == {"c3"} and ids_of(lexical.find(view, "c3")) == ["c3"]
    assert index.ids() == {"c1", "c2"}
    index.use_collection("test.v2")  # the storage is shared: what the view wrote is served
    assert index.ids() == {"c3"} and ids_of(lexical.find(index, "c3")) == ["c3"]
    index.use_collection("test")
    index.drop_collection("test.v2")
    index.drop_collection("never-made")
    assert not index.for_collection("test.v2").exists() and index.for_collection("test.v2").count() == 0
    assert index.ids() == {"c1", "c2"}


def test_a_reader_follows_another_writers_commits_and_generations(kind, folder):
    record = Record()
    writer = kind.open(folder)
    reader = record.follow(kind.open(folder))
    assert reader.ids() == set()
    with writer.writing():
        kind.write(writer, chunks("c1", "c2", "c3"))
    record.commit()
    assert reader.ids() == {"c1", "c2", "c3"} and ids_of(kind.find(reader, "c2"))[0] == "c2"

    with writer.writing():  # a reindex in another process: a new generation, then the switch
        writer.use_collection("test.v2")
        kind.write(writer, chunks("c4", "c5"))
    record.commit(active="test.v2")
    assert ids_of(kind.find(reader, "c4"))[0] == "c4"
    assert reader.collection_name == "test.v2" and reader.ids() == {"c4", "c5"}

    with writer.writing():
        kind.write(writer, chunks("c6"))
    record.commit()
    assert ids_of(kind.find(reader, "c6"))[0] == "c6" and reader.count() == 3


def test_a_write_session_keeps_its_own_view_and_its_own_commit(kind, folder):
    record = Record()
    index = record.follow(filled(kind, folder, "c1", "c2"))
    assert index.ids() == {"c1", "c2"}
    with index.writing():
        record.commit(active="elsewhere")  # committed by this session (as a reindex's switch is)
        assert index.ids() == {"c1", "c2"} and index.collection_name == "test"  # no refresh mid-write
    assert index.collection_name == "test" and index.ids() == {"c1", "c2"}  # nor after: it was its own
    record.commit()  # another process's commit
    assert index.ids() == set() and index.collection_name == "elsewhere"


# -- what a vector index answers besides -------------------------------------------------------------------


def test_content_version_moves_with_every_change_and_only_then(dense, folder):
    record = Record()
    store = record.follow(dense.open(folder))
    seen = [store.content_version()]
    assert store.content_version() == seen[-1]

    def moved() -> bool:
        version = store.content_version()
        changed = version not in seen
        seen.append(version)
        return changed and store.content_version() == version

    with store.writing():
        dense.write(store, chunks("c1", "c2"))
    assert moved()
    with store.writing():
        store.delete(["c1"])
    assert moved()
    other = dense.open(folder)
    with other.writing():
        dense.write(other, chunks("c3"))
    record.commit()  # another process's write, seen through its commit
    assert moved()
    store.use_collection("test.v2")
    assert moved()


def test_vectors_and_similarity_are_what_search_scores(dense, folder):
    store = filled(dense, folder)
    ids = ["c5", "c2", "c4"]
    np.testing.assert_allclose(store.vectors(ids), np.stack([VECTORS[i] for i in ids]), atol=1e-6)
    assert store.vectors([]).shape[0] == 0
    query = np.asarray([VECTORS["c4"]], dtype=np.float32)
    hits = store.search_batch(query, len(TEXTS))[0]
    exact = store.similarity(query, store.vectors(ids_of(hits)))[0]
    np.testing.assert_allclose([hit.metadata["score"] for hit in hits], exact, atol=1e-5)
    assert hits[0].metadata["score"] == pytest.approx(1.0, abs=1e-5)  # the chunk's own vector: cosine 1


def test_where_it_lives_and_what_it_was_built_with(dense, folder):
    store = dense.open(folder)
    assert not store.index_exists()
    assert store.local_directory == folder and store.location == str(folder)
    with store.writing():
        dense.write(store, chunks("c1"))
    assert store.index_exists()
    assert UnitVectors().fingerprint().items() <= store.stored_fingerprint().items()
    store.check()
    other_model = dense.build(folder)
    other_model.embeddings = UnitVectors("another-model")
    with pytest.raises(IndexMismatchError, match="another embedding setup"):
        other_model.check()
    with pytest.raises(IndexMismatchError, match="another embedding setup"):
        dense.find(other_model, "c1")
