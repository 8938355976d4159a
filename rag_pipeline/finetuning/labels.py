"""Mining from labelled questions over the config's own index: ``finetune mine CONFIG --labels FILE``.

The labels (:mod:`rag_pipeline.evaluation.labels`: a question and the file, document or chunk that
answers it) are checked against the index as ingested; a seeded share is held out first and
written beside the training file, so that ``rag-pipeline eval CONFIG --labels <held-out file>``
scores the pipeline before and after training on questions it never trained on.

The passages are the index's chunks, the texts the pipeline embeds and returns:

  * positive: a label naming a chunk id uses that chunk. A label naming a file or a document of
    several chunks uses the ONE chunk of it that the config's first stage scores highest for the
    question (the first stage searched under a filter on that file or document, so that every
    chunk of it is a candidate however deep it ranks overall). Why not all of its chunks: a file
    holds an introduction, a table of contents, sections on other things; as positives they
    would teach the model that every one of them answers the question. When the first stage
    scores none of them (a BM25-only config sharing no word with the question), the file's
    first chunk is used.
  * negatives: as :func:`~.mining.mine_hard_negatives` takes them, from the config's first stage,
    ranks ``skip + 1`` .. ``depth`` (of chunks here), never a chunk of a labelled file or
    document, nor of the document of a labelled chunk: its neighbours may answer too, and a
    false negative teaches the opposite of the truth. ``margin`` drops candidates scoring within
    it of the weakest retrieved positive.

Both are searched exactly (every chunk scored) by default, as mining from a BEIR folder does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Sequence

from ..errors import ConfigError
from ..evaluation.labels import Labels, ResolvedLabel, searching
from ..retrieval.path import encoded_part
from ..pipeline import Pipeline
from .data import TrainingExample
from .mining import MiningWindow
from .split import dev_split

logger = logging.getLogger(__name__)

HOLDOUT_SHARE = 0.2
HELDOUT_SUFFIX = ".heldout.jsonl"


def heldout_path(out: str | Path) -> Path:
    """Where the held-out labels go: ``train.jsonl`` -> ``train.heldout.jsonl``, beside it."""
    out = Path(out)
    return out.with_name(out.stem + HELDOUT_SUFFIX)


def split_labels(
    labels: Sequence[ResolvedLabel], share: float = HOLDOUT_SHARE, seed: int = 0
) -> tuple[list[ResolvedLabel], list[ResolvedLabel]]:
    """``(train, held_out)``, each in file order: :func:`~.split.dev_split` over the question
    texts, so the same questions and seed give the same split whatever the file's order.
    ``share`` 0 holds nothing out."""
    if share == 0:
        return list(labels), []
    _, held = dev_split([label.question for label in labels], share, seed, what="--holdout")
    held_out = set(held)
    return [l for l in labels if l.question not in held_out], [l for l in labels if l.question in held_out]


def mine_from_labels(
    pipe: Pipeline,
    labels: Labels,
    chosen: Sequence[ResolvedLabel] | None = None,
    *,
    window: MiningWindow = MiningWindow(),
    margin: float | None = None,
    max_negatives: int | None = None,
    search: Literal["exact", "ann"] = "exact",
    show_progress: bool | None = None,
) -> list[TrainingExample]:
    """One example per label of ``chosen`` (default: all of ``labels``), positives and negatives
    as the module docstring says. ``pos_scores``/``neg_scores``: the first stage's scores, when
    every positive is among its top ``window.depth`` chunks."""
    items = list(labels.labels if chosen is None else chosen)
    if not items:
        raise ConfigError(f"{labels.path}: no question left to mine (all held out?); lower --holdout")
    pipe = searching(pipe, search)
    if show_progress is not None:
        pipe.config.embeddings.show_progress = show_progress
    path = pipe.as_retriever().path
    texts = [label.question for label in items]
    encoded = path.encode(texts)
    positives = choose_positives(path, items, encoded, labels)
    ranked = path.first_stage(texts, window.depth, encoded=encoded, with_text=False)
    chunks = labels.chunks
    examples = []
    for label, positive, hits in zip(items, positives, ranked):
        related = _related_chunks(label, labels)
        scores = {str(hit.id): float(hit.metadata["score"]) for hit in hits}
        retrieved_positive = [scores[c] for c in positive if c in scores]
        all_retrieved = len(retrieved_positive) == len(positive)
        ceiling = min(retrieved_positive) - margin if margin is not None and retrieved_positive else None
        pos_text = [chunks.texts[c] for c in positive]
        candidates = [
            (str(hit.id), scores[str(hit.id)])
            for hit in hits[window.skip : window.depth]
            if str(hit.id) not in related and str(hit.id) in chunks.texts and (ceiling is None or scores[str(hit.id)] < ceiling)
        ]
        # a chunk with the same text as a positive (a file indexed twice) would make a negative equal a positive
        negatives = [(c, s) for c, s in candidates if chunks.texts[c].strip() and chunks.texts[c] not in pos_text][:max_negatives]
        examples.append(
            TrainingExample(
                query=label.question,
                pos=pos_text,
                neg=[chunks.texts[c] for c, _ in negatives],
                pos_scores=[scores[c] for c in positive] if all_retrieved else None,
                neg_scores=[s for _, s in negatives] if all_retrieved else None,
                query_id=f"{labels.path.name}:{label.label.line}",
            )
        )
    return examples


def choose_positives(path, items: Sequence[ResolvedLabel], encoded: list, labels: Labels) -> list[list[str]]:
    """Each label's positive chunk ids, one per answer (module docstring): an answer of one chunk
    is that chunk; of several, the one the first stage, filtered to the answer, ranks first."""
    chosen: list[list[str | None]] = [[None] * len(label.answers) for label in items]
    searches: dict[tuple[str, str], list[tuple[int, int]]] = {}  # (field, answer) -> [(label row, answer index)]
    for row, label in enumerate(items):
        for n, (answer, ids) in enumerate(zip(label.answers, label.chunks)):
            if len(ids) == 1:
                chosen[row][n] = ids[0]
            else:
                searches.setdefault((label.kind, answer), []).append((row, n))
    for (kind, answer), places in searches.items():
        rows = [row for row, _ in places]
        candidates = set(items[rows[0]].chunks[places[0][1]])
        top = path.filtered({kind: answer}).first_stage(
            [items[row].question for row in rows], 1, encoded=encoded_part(encoded, rows), with_text=False
        )
        for (row, n), hits in zip(places, top):
            best = next((str(hit.id) for hit in hits if str(hit.id) in candidates), None)
            if best is None:
                logger.info("%s: the first stage scores no chunk of %r; its first chunk is the positive", items[row].query_id, answer)
                best = items[row].chunks[n][0]
            chosen[row][n] = best
    return [list(dict.fromkeys(c for c in row if c is not None)) for row in chosen]


def _related_chunks(label: ResolvedLabel, labels: Labels) -> set[str]:
    """Chunks never used as this label's negatives: every chunk of its answers, and for a chunk
    answer, every chunk of that chunk's document."""
    related = {chunk for ids in label.chunks for chunk in ids}
    if label.kind == "id":
        for chunk in list(related):
            related.update(labels.chunks.by_doc.get(labels.chunks.doc_of[chunk], ()))
    return related
