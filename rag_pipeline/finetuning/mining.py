"""Hard-negative mining through the retrieval path that serves queries.

For each training query: its positives are the qrels' relevant documents; its negatives are the
documents the configured first stage ranks ``skip``..``depth`` (by default 11th to 100th), never
one the qrels call relevant. Candidates come from :func:`rag_pipeline.evaluation.evaluate`, which
indexes the corpus with the config's own chunker, embedder and lexical index and searches it
through ``pipe.as_retriever().path`` (fusion included), so the negatives are exactly what the
pipeline would have shown, and the model learns to fix the mistakes of the first stage it serves.

Why not the top ranks: on a collection judged as sparsely as SciFact (about one relevant abstract
a query), the first stage's top documents are often relevant but unjudged; training them as
negatives teaches the model to push away what it should find. ``margin`` guards further, as
``sentence_transformers.util.mine_hard_negatives`` does: a candidate scoring within ``margin`` of
the query's weakest retrieved positive is skipped as a likely false negative.

A judged document with no text (empty title and text) is never a positive: it would teach
nothing, and the training file's readers (ours and FlagEmbedding's) refuse an empty passage. It
is left out with a warning naming it, and so is a query with no text, or one left with no positive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from ..evaluation import BeirDataset, evaluate
from .data import TrainingExample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiningWindow:
    """Negatives come from ranks ``skip + 1`` .. ``depth`` (1-based) of the first stage."""

    skip: int = 10
    depth: int = 100

    def __post_init__(self):
        if self.skip < 0 or self.depth <= self.skip:
            raise ConfigError(f"--ranks: need 0 <= N < M, got {self.skip}..{self.depth}")


def with_queries(dataset: BeirDataset, query_ids: list[str]) -> BeirDataset:
    """The same corpus, judged on ``query_ids`` only (a dev or train part of a split)."""
    unknown = [q for q in query_ids if q not in dataset.queries]
    if unknown:
        raise ConfigError(f"query id {unknown[0]!r} is not in the {dataset.split} split")
    return BeirDataset(
        name=dataset.name,
        path=dataset.path,
        split=dataset.split,
        corpus=dataset.corpus,
        queries={q: dataset.queries[q] for q in query_ids},
        qrels={q: dict(dataset.qrels[q]) for q in query_ids},
        subset=dataset.subset,
        files_sha256=dict(dataset.files_sha256),
    )


def mine_hard_negatives(
    config: Any,
    dataset: BeirDataset,
    *,
    window: MiningWindow = MiningWindow(),
    margin: float | None = None,
    max_negatives: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
) -> list[TrainingExample]:
    """One example per query with at least one relevant document in the corpus that has text.

    ``pos_scores``/``neg_scores`` hold the first stage's scores when every positive was retrieved
    (a teacher for distillation); otherwise they are left out for that query.
    """
    result = evaluate(config, dataset, overrides=overrides, depth=window.depth, show_progress=show_progress)
    run = result.runs["first_stage"]
    examples = []
    skipped = 0
    textless_queries: list[str] = []
    textless_positives: dict[str, None] = {}  # judged-relevant documents with no text, in order met
    no_positive_left: list[str] = []  # queries whose every relevant document has no text
    for query_id, text in dataset.queries.items():
        relevant = {doc for doc, grade in dataset.qrels.get(query_id, {}).items() if grade > 0 and doc in dataset.corpus}
        if not relevant:
            skipped += 1
            continue
        if not text.strip():
            textless_queries.append(query_id)
            continue
        positives = sorted(doc for doc in relevant if dataset.document_text(dataset.corpus[doc]))
        textless_positives.update(dict.fromkeys(sorted(relevant.difference(positives))))
        if not positives:
            no_positive_left.append(query_id)
            continue
        ranked = sorted(run.get(query_id, {}).items(), key=lambda item: (item[1], item[0]), reverse=True)
        used = set(positives)
        retrieved_positive = [score for doc, score in ranked if doc in used]
        all_retrieved = len(retrieved_positive) == len(positives)
        ceiling = min(retrieved_positive) - margin if margin is not None and retrieved_positive else None
        negatives = [
            (doc, score)
            for doc, score in ranked[window.skip : window.depth]
            if doc not in relevant and (ceiling is None or score < ceiling)
        ][:max_negatives]
        pos_text = [dataset.document_text(dataset.corpus[doc]) for doc in positives]
        neg_text = [dataset.document_text(dataset.corpus[doc]) for doc, _ in negatives]
        # two documents with the same text (a duplicate in the corpus) would make a negative equal a positive
        keep = [i for i, t in enumerate(neg_text) if t and t not in set(pos_text)]
        scores = dict(ranked)
        examples.append(
            TrainingExample(
                query=text,
                pos=pos_text,
                neg=[neg_text[i] for i in keep],
                pos_scores=[scores[doc] for doc in positives] if all_retrieved else None,
                neg_scores=[negatives[i][1] for i in keep] if all_retrieved else None,
                query_id=query_id,
            )
        )
    if skipped:
        logger.info("%d queries have no relevant document in the corpus; left out", skipped)
    _warn_textless(list(textless_positives), no_positive_left, textless_queries)
    if not examples:
        raise ConfigError(
            f"{dataset.path}: nothing to mine: none of the {len(dataset.queries)} {dataset.split} queries has text and a "
            "judged-relevant document with text in the corpus"
        )
    return examples


def _warn_textless(documents: list[str], queries_left_out: list[str], textless_queries: list[str]) -> None:
    """Say what was left out for want of text, and why (one line each)."""
    if documents:
        outcome = (
            f"; {_count(queries_left_out, 'query', 'queries')} had no other positive and "
            f"{'is' if len(queries_left_out) == 1 else 'are'} left out: {_some(queries_left_out)}"
            if queries_left_out else ""
        )
        logger.warning(
            "%s with no text (empty title and text) not used as positive: %s%s",
            _count(documents, "judged-relevant document", "judged-relevant documents"), _some(documents), outcome,
        )
    if textless_queries:
        logger.warning("%s with no text left out: %s", _count(textless_queries, "query", "queries"), _some(textless_queries))


def _count(items: list[str], one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def _some(ids: list[str], shown: int = 5) -> str:
    named = ", ".join(repr(i) for i in ids[:shown])
    return named + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def mined_file_summary(examples: list[TrainingExample], path: Path) -> str:
    negatives = sum(len(e.neg) for e in examples)
    return f"wrote {path}: {len(examples)} queries, {sum(len(e.pos) for e in examples)} positives, {negatives} negatives"
