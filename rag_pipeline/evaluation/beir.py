"""Read a BEIR-layout test collection: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

BEIR's layout is what thousands of public retrieval test sets are published in, so reading it
(rather than one format per data set) is what lets any of them be used for an A/B evaluation.
The rules follow BEIR's ``GenericDataLoader``: a document's text is ``title + " " + text``
(stripped), the qrels file has a header row, and only queries that appear in the split's qrels
are evaluated. Every problem with the folder is a :class:`~rag_pipeline.errors.ConfigError`
with a one-line message naming the file and, for a bad line, its number.

One rule differs: BEIR keeps the last of two documents (or queries) that share an ``_id``, without
a word. Here, copies with the same text are kept once, with a warning; copies whose text differs
are refused, naming the ids: the qrels judge an id, and which of the texts they judged is
unknown, so any score measured on one of them (or a training file mined from it) rests on a guess.

    >>> dataset = load_beir("../shared/datasets/scifact", split="test")   # doctest: +SKIP
    >>> small = dataset.subset_of(max_queries=20, distractors=100)          # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from langchain_core.documents import Document

from ..errors import ConfigError, positive_count
from ..jsonl import read_json_objects
from .metrics import queries_without_relevant

logger = logging.getLogger(__name__)
# ids named in a duplicate message; the count says how many there are in all
_IDS_SHOWN = 5

@dataclass(frozen=True)
class SubsetSpec:
    """How a subset was drawn, so that a number measured on it can be reproduced exactly."""

    max_queries: int
    distractors: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"max_queries": self.max_queries, "distractors": self.distractors, "seed": self.seed}


@dataclass
class BeirDataset:
    """A corpus, the queries of one split, and their relevance judgements.

    ``corpus`` maps doc id -> ``{"title", "text"}`` in file order; ``queries`` maps query id -> text
    for the queries judged in ``qrels`` only, in the order they first appear in the qrels file;
    ``qrels`` maps query id -> {doc id: graded relevance}.
    """

    name: str
    path: Path
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    subset: SubsetSpec | None = None
    files_sha256: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def document_text(doc: dict[str, str]) -> str:
        """``title + " " + text``, as BEIR and MTEB index it (the published numbers assume it)."""
        return (doc.get("title", "") + " " + doc.get("text", "")).strip()

    def documents(self) -> list[Document]:
        """The corpus as LangChain documents (``metadata['doc_id']`` is the BEIR id)."""
        return [
            Document(
                page_content=self.document_text(doc),
                metadata={"doc_id": doc_id, "source": f"{self.name}:{doc_id}", "title": doc.get("title", "")},
                id=doc_id,
            )
            for doc_id, doc in self.corpus.items()
        ]

    def subset_of(self, max_queries: int, distractors: int = 500, seed: int = 0) -> "BeirDataset":
        """A smaller collection for quick runs (tests, notebooks): NOT comparable to published numbers.

        * queries: the first ``max_queries`` queries of the split, in qrels file order;
        * corpus: every document judged for those queries (whatever its grade), plus
          ``distractors`` other documents drawn uniformly at random (``random.Random(seed)``)
          from the rest of the corpus; kept in corpus file order.

        A smaller corpus makes retrieval easier, so scores are higher than on the full corpus.
        """
        positive_count(max_queries, "--max-queries")
        if distractors < 0:
            raise ConfigError(f"--distractors must be zero or more, got {distractors}")
        query_ids = list(self.queries)[:max_queries]
        qrels = {q: dict(self.qrels[q]) for q in query_ids}
        judged = {doc_id for judgements in qrels.values() for doc_id in judgements if doc_id in self.corpus}
        rest = [doc_id for doc_id in self.corpus if doc_id not in judged]
        drawn = set(random.Random(seed).sample(rest, min(distractors, len(rest))))
        keep = judged | drawn
        return BeirDataset(
            name=self.name,
            path=self.path,
            split=self.split,
            corpus={doc_id: doc for doc_id, doc in self.corpus.items() if doc_id in keep},
            queries={q: self.queries[q] for q in query_ids},
            qrels=qrels,
            subset=SubsetSpec(max_queries, distractors, seed),
            files_sha256=dict(self.files_sha256),
        )

    def describe(self) -> dict[str, Any]:
        """What was evaluated, for the ``dataset`` section of the JSON report."""
        return {
            "name": self.name,
            "path": str(self.path),
            "split": self.split,
            "queries": len(self.queries),
            "documents": len(self.corpus),
            "relevant_pairs": sum(1 for judged in self.qrels.values() for grade in judged.values() if grade > 0),
            # judged, but only grade 0: scored 0 and averaged in, as BEIR does
            "queries_without_relevant": len(queries_without_relevant(self.qrels)),
            "subset": self.subset.to_dict() if self.subset else None,
            "files_sha256": self.files_sha256,
        }


def load_beir(path: str | Path, split: str = "test", name: str | None = None) -> BeirDataset:
    """Load a BEIR folder; ``name`` defaults to the folder name (``scifact``)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--dataset: not a folder: {root} (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/)")
    files = {"corpus": root / "corpus.jsonl", "queries": root / "queries.jsonl", "qrels": root / "qrels" / f"{split}.tsv"}
    for what, file in files.items():
        if not file.is_file():
            hint = ""
            if what == "qrels" and (root / "qrels").is_dir():
                splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
                hint = f"; available splits: {', '.join(splits) or '(none)'}"
            raise ConfigError(f"--dataset: {file} not found (not a BEIR folder?){hint}")
    qrels = _read_qrels(files["qrels"])
    corpus = _unique_by_id(
        files["corpus"],
        (
            (str(record["_id"]), {"title": str(record.get("title") or ""), "text": str(record.get("text") or "")})
            for record in read_json_objects(files["corpus"], required=("_id",))
        ),
        "document",
    )
    query_text = _unique_by_id(
        files["queries"],
        ((str(record["_id"]), str(record["text"])) for record in read_json_objects(files["queries"], required=("_id", "text"))),
        "query",
    )
    missing = [q for q in qrels if q not in query_text]
    if missing:
        raise ConfigError(f"{files['qrels']}: query id {missing[0]!r} is not in {files['queries'].name} ({len(missing)} missing)")
    return BeirDataset(
        name=name or root.resolve().name,
        path=root.resolve(),
        split=split,
        corpus=corpus,
        queries={q: query_text[q] for q in qrels},
        qrels=qrels,
        files_sha256={key: _sha256(file) for key, file in files.items()},
    )


def _unique_by_id(file: Path, records: Iterable[tuple[str, Any]], what: str) -> dict[str, Any]:
    """Records by id, in file order. An id given twice with the same content is kept once (a
    warning says which); with different content, it is a ``ConfigError`` naming the ids."""
    by_id: dict[str, Any] = {}
    copies: dict[str, int] = {}  # id -> how many records carry it, for ids that appear more than once
    conflicting: set[str] = set()
    for key, value in records:
        if key not in by_id:
            by_id[key] = value
            continue
        copies[key] = copies.get(key, 1) + 1
        if value != by_id[key]:
            conflicting.add(key)
    if conflicting:
        ids = [key for key in copies if key in conflicting]
        raise ConfigError(
            f"{file}: {len(ids)} _id{'s are' if len(ids) > 1 else ' is'} given to more than one {what} with different "
            f"text: {_name_ids(ids, copies)}; the qrels cannot say which one they judge: give each {what} its own _id"
        )
    if copies:
        ids = list(copies)
        logger.warning(
            "%s: %d _id%s repeated with the same text, kept once: %s",
            file, len(ids), "s" if len(ids) > 1 else "", _name_ids(ids, copies),
        )
    return by_id


def _name_ids(ids: list[str], copies: dict[str, int]) -> str:
    named = ", ".join(f"{key!r} ({copies[key]} times)" for key in ids[:_IDS_SHOWN])
    return named + (f" and {len(ids) - _IDS_SHOWN} more" if len(ids) > _IDS_SHOWN else "")


def _read_qrels(file: Path) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` with a header row (BEIR skips the first line)."""
    qrels: dict[str, dict[str, int]] = {}
    with file.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows, None)
        for number, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise ConfigError(f"{file}: line {number}: expected query-id, corpus-id, score separated by tabs")
            try:
                grade = int(row[2])
            except ValueError:
                raise ConfigError(f"{file}: line {number}: score {row[2]!r} is not an integer") from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    if not qrels:
        raise ConfigError(f"{file}: no relevance judgements")
    return qrels


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
