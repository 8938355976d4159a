"""Fusion functions on hand-made ranked lists; every expected number is worked out in the comments."""

from __future__ import annotations

import math

import pytest
from langchain_core.documents import Document

from rag_pipeline.retrieval.fusion import convex, fuse_single, reciprocal_rank

NAMES = ["dense", "bm25"]


def ranked(*pairs: tuple[str, float]) -> list[Document]:
    return [Document(page_content=f"text of {i}", metadata={"doc_id": i, "score": s}, id=i) for i, s in pairs]


DENSE = ranked(("x", 0.9), ("y", 0.7), ("z", 0.5))
BM25 = ranked(("y", 10.0), ("w", 4.0))


def scores(fused: list[Document]) -> dict[str, float]:
    return {d.id: d.metadata["score"] for d in fused}


def test_rrf_sums_weighted_reciprocal_ranks():
    fused = reciprocal_rank([DENSE, BM25], 10, names=NAMES, constant=60)
    # y: 1/62 + 1/61; x: 1/61; w: 1/62; z: 1/63
    assert [d.id for d in fused] == ["y", "x", "w", "z"]
    assert scores(fused) == pytest.approx({"y": 1 / 62 + 1 / 61, "x": 1 / 61, "w": 1 / 62, "z": 1 / 63})
    weighted = reciprocal_rank([DENSE, BM25], 10, names=NAMES, weights={"dense": 1.0, "bm25": 0.5}, constant=1)
    # x: 1/2 = .5; y: 1/3 + .5/2 = .583; z: 1/4; w: .5/3 = .167
    assert scores(weighted) == pytest.approx({"x": 0.5, "y": 1 / 3 + 0.25, "z": 0.25, "w": 0.5 / 3})
    assert [d.id for d in weighted] == ["y", "x", "z", "w"]


def test_each_fused_document_keeps_every_arms_rank_and_score():
    y, x = reciprocal_rank([DENSE, BM25], 2, names=NAMES)
    assert (y.id, x.id) == ("y", "x")
    expected = {"dense_rank": 2, "dense_score": 0.7, "bm25_rank": 1, "bm25_score": 10.0, "doc_id": "y"}
    assert {key: y.metadata[key] for key in expected} == expected
    assert x.metadata["dense_rank"] == 1 and "bm25_rank" not in x.metadata and "bm25_score" not in x.metadata
    assert y.page_content == "text of y"


def test_convex_minmax():
    # dense -> x 1, y .5, z 0; bm25 -> y 1, w 0; a document an arm missed gets that arm's floor, 0
    fused = convex([DENSE, BM25], 10, names=NAMES, weights={"dense": 0.5, "bm25": 0.5})
    assert scores(fused) == pytest.approx({"y": 0.75, "x": 0.5, "z": 0.0, "w": 0.0})
    assert [d.id for d in fused] == ["y", "x", "z", "w"]  # z and w tie at 0: id descending
    heavy = convex([DENSE, BM25], 2, names=NAMES, weights={"dense": 0.8, "bm25": 0.2})
    assert [(d.id, round(d.metadata["score"], 6)) for d in heavy] == [("x", 0.8), ("y", 0.6)]


def test_convex_zscore():
    # dense: mean .7, deviation sqrt(.08/3) -> x +1.2247, y 0, z -1.2247; bm25: mean 7, deviation 3 -> y +1, w -1
    # missing: the arm's lowest z (dense -1.2247, bm25 -1)
    fused = convex([DENSE, BM25], 10, names=NAMES, weights={"dense": 0.5, "bm25": 0.5}, normalize="zscore")
    z1 = 0.2 / math.sqrt(0.08 / 3)
    assert scores(fused) == pytest.approx(
        {"y": 0.5 * 0 + 0.5 * 1, "x": 0.5 * z1 - 0.5, "z": -0.5 * z1 - 0.5, "w": -0.5 * z1 - 0.5}
    )
    assert [d.id for d in fused] == ["y", "x", "z", "w"]


def test_convex_without_normalisation_adds_raw_scores():
    fused = convex([DENSE, BM25], 10, names=NAMES, weights={"dense": 1.0, "bm25": 0.1}, normalize="none")
    # y .7 + 1.0 = 1.7; x .9 + .1*4 (bm25's floor) = 1.3; w .5 (dense floor) + .4 = .9; z .5 + .4 = .9
    assert scores(fused) == pytest.approx({"y": 1.7, "x": 1.3, "w": 0.9, "z": 0.9})


def test_all_equal_scores_and_a_single_hit():
    flat = ranked(("a", 3.0), ("b", 3.0))
    one = ranked(("c", 0.2))
    # all-equal (or one hit): each hit is the arm's best, 1, and a document it missed gets 0
    for method in ("minmax", "zscore"):
        fused = convex([flat, one], 10, names=NAMES, normalize=method)
        assert scores(fused) == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.5})
        assert [d.id for d in fused] == ["c", "b", "a"]
    both = convex([flat, ranked(("a", 1.0))], 10, names=NAMES)
    assert scores(both) == pytest.approx({"a": 1.0, "b": 0.5})


def test_an_arm_with_no_hits_adds_nothing():
    for fuse in (convex, reciprocal_rank):
        fused = fuse([DENSE, []], 10, names=NAMES)
        assert [d.id for d in fused] == ["x", "y", "z"]
    assert scores(convex([DENSE, []], 10, names=NAMES)) == pytest.approx({"x": 0.5, "y": 0.25, "z": 0.0})
    assert convex([[], []], 10, names=NAMES) == [] == reciprocal_rank([[], []], 10, names=NAMES)


def test_fusion_is_pure_and_cut_to_k():
    before = [dict(d.metadata) for d in DENSE + BM25]
    assert len(convex([DENSE, BM25], 1, names=NAMES)) == 1
    assert [dict(d.metadata) for d in DENSE + BM25] == before
    assert fuse_single([DENSE], 2) == DENSE[:2]
    with pytest.raises(ValueError):
        convex([DENSE], 3, names=NAMES)
