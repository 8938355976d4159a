"""Fusion: pure functions that merge one ranked list per first-stage arm into one ranked list.

A fusion function takes ``lists`` (one list of Documents per arm, best first, ``metadata['score']``
set) and ``k``, and returns at most ``k`` Documents best first. With one arm the list passes
through (:func:`fuse_single`); with several, :func:`reciprocal_rank` or :func:`convex` merge them by
chunk id. Each fused Document carries the fused ``score`` and, for every arm that returned it,
``<arm>_score`` and ``<arm>_rank`` (1-based) in its metadata.

Ties (equal fused scores) are broken by id, descending, as trec_eval and the dense arm break them,
so a fused run is the same whatever order the arms list equal documents in.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Mapping, Sequence

from langchain_core.documents import Document

FusionFunction = Callable[[Sequence[Sequence[Document]], int], list[Document]]
Normalization = Literal["minmax", "zscore", "none"]


def fuse_single(lists: Sequence[Sequence[Document]], k: int) -> list[Document]:
    """One arm: its list, cut to ``k``."""
    if len(lists) != 1:
        raise ValueError(f"fuse_single takes one ranked list, got {len(lists)}: configure a fusion method")
    return list(lists[0][:k])


def reciprocal_rank(
    lists: Sequence[Sequence[Document]],
    k: int,
    *,
    names: Sequence[str],
    weights: Mapping[str, float] | None = None,
    constant: float = 60.0,
) -> list[Document]:
    """Reciprocal rank fusion (Cormack et al., 2009): ``sum over arms of weight / (constant + rank)``.

    Only ranks count, so arms whose scores live on different scales (cosine, BM25) need no
    normalisation; ``constant`` (60 in the paper) damps the weight of the very first ranks.
    """
    _check(lists, names)
    fused: dict[str, float] = {}
    for name, ranked in zip(names, lists):
        weight = _weight(weights, name)
        for rank, document in enumerate(_unique(ranked), start=1):
            fused[document.id] = fused.get(document.id, 0.0) + weight / (constant + rank)
    return _merge(lists, names, fused, k)


def convex(
    lists: Sequence[Sequence[Document]],
    k: int,
    *,
    names: Sequence[str],
    weights: Mapping[str, float] | None = None,
    normalize: Normalization = "minmax",
) -> list[Document]:
    """Convex combination: ``sum over arms of weight * normalised score``.

    Each arm's scores are normalised over its own list (``minmax``: to [0, 1]; ``zscore``: to
    mean 0, deviation 1; ``none``: as they are). A document an arm did not return gets that arm's
    lowest normalised score in the list (it ranked, at best, below all of them): 0 under minmax.
    An arm whose hits all score the same (one hit, or a tie) gives them 1 and the rest 0, under
    either normalisation (they are all its best); an arm with no hits adds nothing. Weights default
    to equal shares of 1.
    """
    _check(lists, names)
    if normalize not in ("minmax", "zscore", "none"):
        raise ValueError(f"normalize must be minmax, zscore or none, got {normalize!r}")
    per_arm = [_normalise({d.id: float(d.metadata["score"]) for d in _unique(ranked)}, normalize) for ranked in lists]
    every = {d.id for ranked in lists for d in ranked}
    fused = {
        chunk_id: sum(
            _weight(weights, name, 1.0 / len(names)) * normalised.get(chunk_id, floor)
            for name, (normalised, floor) in zip(names, per_arm)
            if normalised  # an arm with no hits adds nothing
        )
        for chunk_id in every
    }
    return _merge(lists, names, fused, k)


def _normalise(scores: dict[str, float], method: Normalization) -> tuple[dict[str, float], float]:
    """The normalised scores, and the floor a document the arm did not return gets."""
    if not scores:
        return {}, 0.0
    values = list(scores.values())
    if method == "none":
        return dict(scores), min(values)
    low, high = min(values), max(values)
    if high == low:  # one hit, or all tied: all are the arm's best, and nothing else is
        return {key: 1.0 for key in scores}, 0.0
    if method == "minmax":
        return {key: (value - low) / (high - low) for key, value in scores.items()}, 0.0
    mean = sum(values) / len(values)
    deviation = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    normalised = {key: (value - mean) / deviation for key, value in scores.items()}
    return normalised, min(normalised.values())


def _check(lists: Sequence[Sequence[Document]], names: Sequence[str]) -> None:
    if len(lists) != len(names):
        raise ValueError(f"{len(lists)} ranked lists for {len(names)} arm names")


def _weight(weights: Mapping[str, float] | None, name: str, default: float = 1.0) -> float:
    return default if weights is None else float(weights.get(name, default))


def _unique(ranked: Sequence[Document]) -> list[Document]:
    """The list with each id once, at its best rank (a list should not repeat an id; be safe)."""
    seen: set[str] = set()
    out = []
    for document in ranked:
        if document.id not in seen:
            seen.add(document.id)
            out.append(document)
    return out


def _merge(
    lists: Sequence[Sequence[Document]], names: Sequence[str], fused: dict[str, float], k: int
) -> list[Document]:
    """The ``k`` best by fused score, each with its per-arm scores and ranks in metadata."""
    first: dict[str, Document] = {}
    arm_metadata: dict[str, dict[str, float | int]] = {}
    for name, ranked in zip(names, lists):
        for rank, document in enumerate(_unique(ranked), start=1):
            kept = first.get(document.id)
            if kept is None or (not kept.page_content and document.page_content):
                first[document.id] = document
            entry = arm_metadata.setdefault(document.id, {})
            entry[f"{name}_score"] = float(document.metadata["score"])
            entry[f"{name}_rank"] = rank
    order = sorted(fused, key=lambda chunk_id: (fused[chunk_id], chunk_id), reverse=True)[:k]
    return [
        Document(
            page_content=first[chunk_id].page_content,
            metadata={**first[chunk_id].metadata, **arm_metadata[chunk_id], "score": fused[chunk_id]},
            id=chunk_id,
        )
        for chunk_id in order
    ]
