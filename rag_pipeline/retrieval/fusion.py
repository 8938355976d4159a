"""Fusion: pure functions that merge one ranked list per first-stage arm into one ranked list.

A fusion function takes ``lists`` (one list of Documents per arm, best first, ``metadata['score']``
set) and ``k``, and returns at most ``k`` Documents best first. Reciprocal-rank and convex fusion
of dense and lexical arms land here with the hybrid issue; with one arm the list passes through.
"""

from __future__ import annotations

from typing import Callable, Sequence

from langchain_core.documents import Document

FusionFunction = Callable[[Sequence[Sequence[Document]], int], list[Document]]


def fuse_single(lists: Sequence[Sequence[Document]], k: int) -> list[Document]:
    """One arm: its list, cut to ``k``."""
    if len(lists) != 1:
        raise ValueError(f"fuse_single takes one ranked list, got {len(lists)}: configure a fusion method")
    return list(lists[0][:k])
