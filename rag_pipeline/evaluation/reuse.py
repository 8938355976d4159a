"""What the runs of one sweep share in memory: query vectors, and each arm's ranked lists.

A sweep of search-time settings (``rag-pipeline compare --grid retriever.fusion.weights=...``)
asks the same questions of the same index over and over. Only the fusion step (and the reranker)
sees the swept setting, yet each run would embed every query again and search every arm again.
:class:`SweepMemo` wraps a run's arms so that

  * a query's vector is computed once per embedding setup: keyed by the embedder's
    ``cache_identity()`` (model identity, query instruction, ``max_seq_length``, dtype, ...) and the
    query text, so an instruction or model change embeds again and nothing else does;
  * a chunk's token count (the truncation report) once per tokenizer;
  * an arm's ranked list for a query is computed once per *search setup*: the whole config except
    the settings that act after the arms (``retriever.fusion``, ``k``, ``fetch_k``, ``arms``, the
    reranker), plus the dataset, the arm and the depth asked for. Any other change (``lexical.k1``,
    ``retriever.search``, the chunker, ...) is a new key and searches again.

The lists are dropped whenever the index step changed the evaluation collection, or the index-time
settings differ from the previous run's, so an approximate (HNSW) search is never answered from a
graph that has since been rebuilt, and a long sweep keeps one setup's lists in memory, not all.

It lives in memory, for one sweep: a cached result is only as good as the index it came from, and
within one ``compare`` call the runs with the same index-time settings run back to back (see
:mod:`.comparison`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
from langchain_core.documents import Document

from ..retrieval.first_stage import DenseArm
from ..retrieval.path import RetrievalPath

# Settings that act after the arms have returned their lists: changing one re-fuses, never re-searches.
AFTER_ARMS = {"retriever": ("fusion", "k", "fetch_k", "arms"), "reranker": None}


def search_setup(config: Mapping[str, Any], dataset: Mapping[str, Any]) -> str:
    """The part of a resolved config (``to_dict()``) and dataset that decides what an arm returns."""
    relevant = {}
    for section, value in config.items():
        if section in AFTER_ARMS and AFTER_ARMS[section] is None:
            continue
        if section in AFTER_ARMS and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in AFTER_ARMS[section]}
        relevant[section] = value
    return json.dumps({"config": relevant, "dataset": dataset}, sort_keys=True, default=str)


@dataclass
class SweepMemo:
    """In-memory reuse across the :func:`~.runner.evaluate` calls of one sweep; counts what it saved."""

    _vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    _lists: dict[tuple[str, str, int, bool], dict[str, list[Document]]] = field(default_factory=dict)
    _sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    _tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    _index_setup: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("queries_embedded", "queries_reused", "arm_searches", "arm_searches_reused"), 0))

    def wrap(self, path: RetrievalPath, setup: str, *, index_setup: str, index_changed: bool) -> RetrievalPath:
        """``path`` with each arm answering from the memo where it can."""
        if index_changed or index_setup != self._index_setup:
            self._lists.clear()
            self._sizes.clear()
        self._index_setup = index_setup
        return replace(path, arms=[_MemoArm(arm, self, setup) for arm in path.arms])

    def count_tokens(self, embedder: Any, texts: Sequence[str]) -> list[int]:
        """``embedder.count_tokens(texts)``, each text counted once per tokenizer: the truncation
        report counts every chunk of the corpus, which costs more than re-fusing SciFact."""
        known = self._tokens.setdefault(_identity(embedder), {})
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            known.update(zip(missing, embedder.count_tokens(missing)))
        return [known[t] for t in texts]

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def _identity(embedder: Any) -> str:
    return json.dumps(embedder.cache_identity(), sort_keys=True, default=str)


@dataclass
class _MemoArm:
    """An arm (``encode``, ``search_batch``, ``size``, ``name``) answering from a :class:`SweepMemo`."""

    arm: Any
    memo: SweepMemo
    setup: str

    @property
    def name(self) -> str:
        return self.arm.name

    @property
    def index(self) -> Any:
        return self.arm.index

    def encode(self, queries: Sequence[str]) -> Any:
        # Only a dense arm's encoding is known to depend on nothing but the embedder and the text.
        if not isinstance(self.arm, DenseArm) or not queries:
            return self.arm.encode(queries)
        known = self.memo._vectors.setdefault(_identity(self.arm.embedder), {})
        missing = list(dict.fromkeys(q for q in queries if q not in known))
        if missing:
            known.update(zip(missing, self.arm.encode(missing)))
        self.memo.counts["queries_embedded"] += len(missing)
        self.memo.counts["queries_reused"] += len(queries) - len(missing)
        return np.stack([known[q] for q in queries])

    def search_batch(
        self, queries: Sequence[str], k: int, *, encoded: Any = None, with_text: bool = True
    ) -> list[list[Document]]:
        known = self.memo._lists.setdefault((self.setup, self.name, k, with_text), {})
        missing = [i for i, q in enumerate(queries) if q not in known]
        if missing:
            part = encoded[missing] if encoded is not None else None
            found = self.arm.search_batch([queries[i] for i in missing], k, encoded=part, with_text=with_text)
            known.update((queries[i], documents) for i, documents in zip(missing, found))
        self.memo.counts["arm_searches"] += len(missing)
        self.memo.counts["arm_searches_reused"] += len(queries) - len(missing)
        # a fresh list per call: fusion and evaluation read the cached Documents but never keep the list
        return [list(known[q]) for q in queries]

    def size(self) -> int:
        key = (self.setup, self.name)
        if key not in self.memo._sizes:
            self.memo._sizes[key] = self.arm.size()
        return self.memo._sizes[key]
