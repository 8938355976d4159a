"""Collection generations: ``vectorstore.collection`` is a logical name served by one physical
collection at a time. ``reindex`` builds ``<name>.v2`` (``.v3``, ...) beside the active one and
switches the record to it in one transaction when it is complete; what an interrupted reindex
leaves (a half-built or a retired collection) is dropped by the next ingest or reindex.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from .record import IndexRecord

logger = logging.getLogger(__name__)


def prepare_ingest(record: IndexRecord, store: Any, logical: str, beside: Sequence[Any] = ()) -> str:
    """Point ``store`` (and the indexes ``beside`` it: the lexical one) at the active collection of
    ``logical`` and clear leftovers; returns its name."""
    active = record.active_collection(logical) or logical
    if active != store.collection_name:  # another process reindexed since the store was opened
        store.use_collection(active)
    for index in beside:
        index.use_collection(active)
    if active not in record.collections(logical):  # an index from before the record, or a new one
        record.add_collection(active, logical, "active")
    collect_garbage(record, store, logical, keep=active, beside=beside)
    return active


def begin_reindex(record: IndexRecord, store: Any, logical: str, beside: Sequence[Any] = ()) -> str:
    """Register a new generation of ``logical`` as ``building``; returns its physical name."""
    current = record.active_collection(logical) or (logical if store.exists_named(logical) else None)
    if current is not None:
        record.add_collection(current, logical, "active")
    collect_garbage(record, store, logical, keep=current, beside=beside)
    new = next_collection_name(logical, store.collection_names() | record.known_collection_names())
    record.add_collection(new, logical, "building")
    return new


def finish_reindex(record: IndexRecord, store: Any, logical: str, new: str, beside: Sequence[Any] = ()) -> list[str]:
    """Make ``new`` the active generation in one step; the ones it replaced are retired, not dropped.

    A reader in another process may hold a retired collection mid-query: it is dropped by the next
    ingest or reindex (:func:`collect_garbage`), by which time every reader has re-resolved the
    active one (readers check the record before each query, see ``ChromaStore.refresh_if_changed``).
    """
    retired = record.switch(logical, new)
    store.use_collection(new)
    for index in beside:
        index.use_collection(new)
    return retired


def collect_garbage(
    record: IndexRecord, store: Any, logical: str, keep: str | None, beside: Sequence[Any] = ()
) -> list[str]:
    """Drop the generations that no longer serve: retired ones (replaced by a reindex) and
    half-built ones (a reindex that was killed), from ``store`` and every index ``beside`` it."""
    dropped = []
    for name, state in record.collections(logical).items():
        if name != keep and state in ("building", "retired"):
            store.drop_collection(name)
            for index in beside:
                index.drop_collection(name)
            record.forget_collection(name)
            dropped.append((name, state))
    for name, state in dropped:
        if state == "building":
            logger.warning("dropped collection %s, left half-built by an interrupted reindex", name)
        else:
            logger.info("dropped collection %s, retired by the last reindex", name)
    return [name for name, _ in dropped]


def next_collection_name(logical: str, taken: set[str]) -> str:
    """``<logical>.v2``, ``.v3``, ...: the first name neither Chroma nor the record uses."""
    generation = 2
    while f"{logical[:500]}.v{generation}" in taken:
        generation += 1
    return f"{logical[:500]}.v{generation}"
