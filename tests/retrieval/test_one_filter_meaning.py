"""One filter, one meaning: the same ``filter`` selects the same chunks in every arm (Chroma's
dense search, ANN and exact; FAISS; BM25), with Chroma's typing (a boolean is not the number 1,
numbers compare as numbers, list and mapping metadata is its JSON text), and a hit carries the
same metadata whichever arm found it."""

from __future__ import annotations

import json

import pytest
from langchain_core.documents import Document

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.errors import ConfigError, QueryError

# What each document holds in its `flag` field (None: no flag at all).
FLAGS = {
    "int-one": 1, "float-one": 1.0, "one-and-half": 1.5, "int-zero": 0, "int-two": 2, "true": True, "false": False,
    "text-one": "1", "list": ["a", "b"], "mapping": {"x": 1}, "none": None, "not-a-number": float("nan"),
}
EVERY = set(FLAGS)

# filter -> the documents it selects
EXPECTED = [
    ({"flag": 1}, {"int-one", "float-one"}),
    ({"flag": 1.0}, {"int-one", "float-one"}),
    ({"flag": True}, {"true"}),
    ({"flag": {"$eq": False}}, {"false"}),
    ({"flag": 0}, {"int-zero"}),
    ({"flag": "1"}, {"text-one"}),
    ({"flag": {"$ne": 1}}, EVERY - {"int-one", "float-one"}),
    ({"flag": {"$ne": True}}, EVERY - {"true"}),
    ({"flag": {"$gt": 0.5}}, {"int-one", "float-one", "one-and-half", "int-two"}),
    ({"flag": {"$gte": 1.5}}, {"one-and-half", "int-two"}),
    ({"flag": {"$lt": 1.5}}, {"int-zero", "int-one", "float-one"}),
    ({"flag": {"$lte": 0}}, {"int-zero"}),
    ({"flag": 1.5}, {"one-and-half"}),
    ({"flag": {"$in": [0.5, 1.5]}}, {"one-and-half"}),
    ({"flag": {"$in": [1, 2]}}, {"int-one", "float-one", "int-two"}),
    ({"flag": {"$in": [True]}}, {"true"}),
    ({"flag": {"$nin": [True, False]}}, EVERY - {"true", "false"}),
    ({"flag": {"$nin": [1.5]}}, EVERY - {"one-and-half"}),
    ({"flag": json.dumps(["a", "b"])}, {"list"}),
    ({"flag": json.dumps({"x": 1})}, {"mapping"}),
    ({"$and": [{"flag": {"$gte": 1}}, {"flag": {"$lte": 1}}]}, {"int-one", "float-one"}),
    ({"$or": [{"flag": True}, {"flag": "1"}]}, {"true", "text-one"}),
]

QUERY = "harbour logbook"  # every document holds both words, so BM25 finds each one


def documents() -> list[Document]:
    return [
        Document(
            page_content=f"Harbour logbook entry {name}: the flag reads {value!r} today.",
            metadata={"kind": name, **({"flag": value} if value is not None else {})},
        )
        for name, value in FLAGS.items()
    ]


def _with_faiss() -> list[str]:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return ["chroma"]
    return ["chroma", "faiss"]


ARMS = {  # how each arm is searched alone: k is above the number of chunks, so it returns all it selects
    "dense-ann": {"type": "hybrid", "arms": ["dense"], "k": 50},
    "dense-exact": {"type": "hybrid", "arms": ["dense"], "k": 50, "search": "exact"},
    "bm25": {"type": "hybrid", "arms": ["bm25"], "k": 50},
}


@pytest.fixture(scope="module", params=_with_faiss())
def indexed(request, tmp_path_factory, tiny_bge_dir) -> dict:
    """A hybrid index (dense + BM25) of the documents, in the given vector store."""
    root = tmp_path_factory.mktemp(f"filters-{request.param}")
    (root / "corpus").mkdir()
    config = pipeline_config(root / "corpus", root / "index", str(tiny_bge_dir), lexical={"type": "bm25"})
    config["vectorstore"]["type"] = request.param
    Pipeline.from_config(config).add_documents(documents(), source="logbook")
    return config


def retrievers(config: dict) -> dict:
    return {name: Pipeline.from_config({**config, "retriever": arm}).as_retriever() for name, arm in ARMS.items()}


@pytest.mark.parametrize(("where", "expected"), EXPECTED, ids=[json.dumps(w) for w, _ in EXPECTED])
def test_a_filter_selects_the_same_chunks_in_every_arm(indexed, where, expected):
    found = {
        name: {hit.metadata["kind"] for hit in retriever.invoke(QUERY, filter=where)}
        for name, retriever in retrievers(indexed).items()
    }
    assert found == {name: expected for name in ARMS}


def test_a_hit_has_the_same_metadata_whichever_arm_found_it(indexed):
    per_arm = {
        name: {
            hit.metadata["kind"]: {key: (type(value), value) for key, value in hit.metadata.items() if not key.endswith(("score", "rank"))}
            for hit in retriever.invoke(QUERY)
        }
        for name, retriever in retrievers(indexed).items()
    }
    assert set(per_arm["bm25"]) == EVERY
    assert per_arm["dense-ann"] == per_arm["dense-exact"] == per_arm["bm25"]
    stored = per_arm["bm25"]
    # Chroma's form, in every index: lists and mappings as JSON text, numbers and booleans as they are
    assert stored["list"]["flag"] == (str, '["a", "b"]')
    assert stored["mapping"]["flag"] == (str, '{"x": 1}')
    assert stored["float-one"]["flag"] == (float, 1.0) and stored["true"]["flag"] == (bool, True)
    assert "flag" not in stored["none"] and "flag" not in stored["not-a-number"]  # Chroma keeps no NaN


def test_a_hybrid_retriever_applies_the_filter_in_both_arms(indexed):
    retriever = Pipeline.from_config({**indexed, "retriever": {"type": "hybrid", "k": 50}}).as_retriever()
    hits = retriever.invoke(QUERY, filter={"flag": 1})
    assert {hit.metadata["kind"] for hit in hits} == {"int-one", "float-one"}
    assert all("dense_rank" in hit.metadata and "bm25_rank" in hit.metadata for hit in hits)


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ({"flag": {"$gt": True}}, "'flag': $gt compares numbers, got True"),
        ({"flag": {"$lte": "b"}}, "'flag': $lte compares numbers, got 'b'"),
        ({"flag": float("nan")}, "'flag': nan is not a number a chunk can hold"),
        ({"flag": {"$in": [1.0, float("inf")]}}, "'flag': [1.0, inf] is not a number a chunk can hold"),
        ({"flag": ["a", "b"]}, "a list or mapping in metadata is stored as its JSON text"),
        ({"flag": 2**70}, "'flag': 1180591620717411303424 is not a number a chunk can hold"),
    ],
)
def test_a_filter_no_index_can_answer_alike_is_refused_in_one_line(indexed, where, problem):
    retriever = Pipeline.from_config({**indexed, "retriever": {"type": "hybrid", "k": 50}}).as_retriever()
    with pytest.raises(QueryError) as caught:
        retriever.invoke(QUERY, filter=where)
    assert problem in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="^retriever.filter: "):
        Pipeline.from_config({**indexed, "retriever": {"type": "hybrid", "filter": where}})
