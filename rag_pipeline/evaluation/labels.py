"""Labelled questions over the config's own index: ``eval --labels`` and ``finetune mine --labels``.

A labels file is what a user has at hand, rather than a BEIR folder: the folder they already index
and a list of questions, each naming what answers it. JSONL (one object a line) or CSV (a header
row), chosen by the file's extension::

    {"question": "how long is green tea steeped?", "source": "tea.html"}
    {"query": "what pulls the tides?", "doc_id": ["tides.txt", "moon.md"]}
    {"question": "where do bees tell the hive?", "id": "3f1c...e9"}

    question,source
    how long is green tea steeped?,tea.html
    what pulls the tides?,tides.txt|moon.md

Each question names its answers by exactly one of ``source`` (a file under ``loader.path``, as
``rag-pipeline ls`` lists it; absolute, or relative to ``loader.path`` or to the current folder),
``doc_id`` (a document inside a file, ``file.csv#row=3``) or ``id`` (one chunk, as
``rag-pipeline export`` prints it). Several answers: a JSON list, or in CSV separated by ``|``.

The corpus is the index as ingested (read back as ``export`` reads it), not the files: the labels
are checked against what the index holds, so a question can only name an answer a search can find.

Why every bad label is reported at once, by line, and never dropped without a word: a label that
silently falls out (a renamed file, a typo in an id) shrinks the test set, and the score measured
on what is left looks like a property of the retriever. ``skip_bad=True`` leaves them out, and
:attr:`Labels.skipped` says which, so that the caller prints each one.

Relevance is at the level the label names: a question labelled by source is scored on the ranked
list of files (a file's score is its best chunk's), by ``doc_id`` on documents, by ``id`` on
chunks, with the metrics ``rag-pipeline eval`` reports on BEIR (:mod:`.metrics`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from langchain_core.documents import Document

from ..errors import ConfigError, IndexNotFoundError, positive_count
from ..pipeline import Pipeline
from .metrics import METRICS, evaluate_run
from ..retrieval.path import encoded_part
from .runner import STAGES, _best_chunk_per_doc, _reranked_run, write_report

AnswerKind = Literal["source", "doc_id", "id"]
ANSWER_KINDS: tuple[AnswerKind, ...] = ("source", "doc_id", "id")
QUESTION_KEYS = ("question", "query")
CSV_SEPARATOR = "|"
PROBLEMS_SHOWN = 20
_KIND_NAMES = {"source": "source", "doc_id": "doc_id", "id": "chunk id"}


@dataclass(frozen=True)
class Label:
    """One question of the file, and its answers as written (``line``: where it starts, 1-based)."""

    line: int
    question: str
    kind: AnswerKind
    answers: tuple[str, ...]


@dataclass(frozen=True)
class LabelProblem:
    """Why the label at ``line`` cannot be used."""

    line: int
    reason: str


@dataclass(frozen=True)
class ResolvedLabel:
    """A label whose answers the index holds: ``answers`` as the index names them (a source made
    relative to ``loader.path``), ``chunks[i]`` the ids of the chunks of ``answers[i]``."""

    label: Label
    answers: tuple[str, ...]
    chunks: tuple[tuple[str, ...], ...]

    @property
    def question(self) -> str:
        return self.label.question

    @property
    def kind(self) -> AnswerKind:
        return self.label.kind

    @property
    def query_id(self) -> str:
        return f"line {self.label.line}"

    def to_json(self) -> dict[str, Any]:
        """The label as a line of a labels file (what ``finetune mine`` writes for the held-out part)."""
        answers = self.answers[0] if len(self.answers) == 1 else list(self.answers)
        return {"question": self.question, self.kind: answers}


@dataclass
class IndexChunks:
    """The chunks of the index, read once: text, file and document of each, and the reverse maps.

    A chunk's document is what evaluation counts as one (``metadata['doc_id']``, else its id); its
    source is ``metadata['source']``, the path the loader stored, relative to ``loader.path``.
    """

    texts: dict[str, str] = field(default_factory=dict)
    source_of: dict[str, str] = field(default_factory=dict)
    doc_of: dict[str, str] = field(default_factory=dict)
    by_source: dict[str, list[str]] = field(default_factory=dict)
    by_doc: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_export(cls, items: Iterable[dict[str, Any]]) -> "IndexChunks":
        """From ``Pipeline.export()``'s items; each file's and document's chunks in chunk order."""
        table = cls()
        order: dict[str, tuple[int, str]] = {}
        for item in items:
            chunk_id, metadata = str(item["id"]), item.get("metadata") or {}
            table.texts[chunk_id] = item.get("content") or ""
            table.doc_of[chunk_id] = str(metadata.get("doc_id", chunk_id))
            source = metadata.get("source") or item.get("source")
            if source:
                table.source_of[chunk_id] = str(source)
            index = metadata.get("chunk_index")
            order[chunk_id] = (index if isinstance(index, int) else 0, chunk_id)
        for chunk_id in sorted(table.texts, key=order.__getitem__):
            table.by_doc.setdefault(table.doc_of[chunk_id], []).append(chunk_id)
            if chunk_id in table.source_of:
                table.by_source.setdefault(table.source_of[chunk_id], []).append(chunk_id)
        return table

    @classmethod
    def read(cls, pipe: Pipeline) -> "IndexChunks":
        """The pipeline's index as ingested; an empty one is an error that says to ingest first."""
        table = cls.from_export(pipe.export())
        if not table.texts:
            raise IndexNotFoundError(
                f"the index (collection {pipe.config.vectorstore.collection!r}) holds no chunks to label: "
                "run `rag-pipeline ingest CONFIG` first"
            )
        return table

    def unit(self, kind: AnswerKind) -> Callable[[Document], str]:
        """What one item of a ranked list is for labels of ``kind``: a chunk's file, document or itself."""
        if kind == "source":
            return lambda d: self.source_of.get(str(d.id), str(d.metadata.get("source", d.id)))
        if kind == "doc_id":
            return lambda d: self.doc_of.get(str(d.id), str(d.metadata.get("doc_id", d.id)))
        return lambda d: str(d.id)

    def match_source(self, answer: str, root: Path | None) -> str | None:
        """The stored source ``answer`` names: as stored, or a path (absolute, relative to
        ``root``, or relative to the current folder) of a file under ``root``."""
        if answer in self.by_source:
            return answer
        written = answer.replace("\\", "/")
        tries = []
        if not Path(written).expanduser().is_absolute():
            tries.append(str(PurePosixPath(written)))  # "./notes/a.md" -> "notes/a.md"
        if root is not None:
            base = Path(os.path.abspath(root))
            try:
                tries.append(Path(os.path.abspath(Path(written).expanduser())).relative_to(base).as_posix())
            except ValueError:
                pass
        return next((t for t in tries if t in self.by_source), None)


@dataclass
class Labels:
    """The usable labels of a file, the index they were checked against, and what was left out."""

    path: Path
    labels: list[ResolvedLabel]
    chunks: IndexChunks
    skipped: list[LabelProblem] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """One ``FILE:LINE: reason`` line per label left out (``skip_bad``)."""
        return [f"{self.path}:{p.line}: {p.reason}" for p in self.skipped]

    def describe(self) -> dict[str, Any]:
        kinds = {kind: sum(1 for label in self.labels if label.kind == kind) for kind in ANSWER_KINDS}
        return {"path": str(self.path), "questions": len(self.labels), "by": kinds, "skipped": len(self.skipped),
                "chunks": len(self.chunks.texts)}


# -- reading ---------------------------------------------------------------------------------------


def read_labels(path: str | Path) -> tuple[list[Label], list[LabelProblem]]:
    """The file's labels and the problems of its lines (malformed line, no question, no answer,
    a question given twice: the first one is kept). The file itself not found, not ``.jsonl`` or
    ``.csv``, or a CSV header without the needed columns: a ``ConfigError`` at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--labels: {path} not found")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"--labels: {path}: expected a .jsonl or .csv file (one question a line or row), got {suffix or 'no extension'!r}")
    labels: list[Label] = []
    problems: list[LabelProblem] = []
    seen: dict[str, int] = {}
    for line, parsed in (_jsonl_records(path) if suffix == ".jsonl" else _csv_records(path)):
        outcome = parsed if isinstance(parsed, LabelProblem) else _label(line, parsed)
        if isinstance(outcome, Label):
            key = " ".join(outcome.question.split())
            if key in seen:
                outcome = LabelProblem(line, f"duplicate question (first at line {seen[key]}): {_preview(outcome.question)}")
            else:
                seen[key] = line
        (labels if isinstance(outcome, Label) else problems).append(outcome)
    return labels, problems


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | LabelProblem]]:
    with path.open(encoding="utf-8", newline="\n") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, LabelProblem(number, f"invalid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                yield number, LabelProblem(number, "expected a JSON object with question and one of source, doc_id, id")
                continue
            yield number, record


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | LabelProblem]]:
    """Rows as ``{column: [answers]}`` (a cell split at ``|``); the line a row starts on."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        try:
            header = [name.strip() for name in next(rows, [])]
        except csv.Error as exc:
            raise ConfigError(f"{path}: line 1: malformed CSV header ({exc})") from None
        if not any(name in QUESTION_KEYS for name in header):
            raise ConfigError(f"{path}: the header row has no 'question' (or 'query') column; it has: {', '.join(header) or 'nothing'}")
        if not any(name in ANSWER_KINDS for name in header):
            raise ConfigError(f"{path}: the header row has no answer column: give one of source, doc_id, id")
        start = rows.line_num + 1
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, LabelProblem(start, f"malformed CSV row ({exc})")
                return
            line, start = start, rows.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield line, LabelProblem(line, f"malformed CSV row: {len(row)} fields where the header has {len(header)}")
                continue
            record: dict[str, Any] = {}
            for name, cell in zip(header, row):
                if name in ANSWER_KINDS:
                    record[name] = [part.strip() for part in cell.split(CSV_SEPARATOR) if part.strip()]
                elif name in QUESTION_KEYS:
                    record[name] = cell
            yield line, record


def _label(line: int, record: dict[str, Any]) -> Label | LabelProblem:
    key = next((k for k in QUESTION_KEYS if record.get(k) not in (None, "")), None)
    if key is None:
        present = next((k for k in QUESTION_KEYS if k in record), None)
        return LabelProblem(line, "empty question" if present else "no 'question' (or 'query') field")
    question = record[key]
    if not isinstance(question, str):
        return LabelProblem(line, f"'{key}' must be a string, got {type(question).__name__}")
    if not question.strip():
        return LabelProblem(line, "empty question")
    given: dict[str, tuple[str, ...]] = {}
    for kind in ANSWER_KINDS:
        value = record.get(kind)
        if value is None or value == "" or value == []:
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return LabelProblem(line, f"'{kind}' must be a string or a list of strings")
        if not all(v.strip() for v in values):
            return LabelProblem(line, f"'{kind}' holds an empty answer")
        given[kind] = tuple(dict.fromkeys(v.strip() for v in values))
    if not given:
        return LabelProblem(line, "no answer: give source, doc_id or id")
    if len(given) > 1:
        return LabelProblem(line, f"answers given as {' and '.join(given)}: give one of source, doc_id, id per question")
    ((kind, answers),) = given.items()
    return Label(line, question, kind, answers)


# -- checking against the index --------------------------------------------------------------------


def resolve_label(label: Label, chunks: IndexChunks, root: Path | None) -> ResolvedLabel | LabelProblem:
    """The label's answers as the index names them, or why some are not in the index."""
    if label.kind == "source":
        named = [chunks.match_source(answer, root) for answer in label.answers]
        table = chunks.by_source
    elif label.kind == "doc_id":
        named = [answer if answer in chunks.by_doc else None for answer in label.answers]
        table = chunks.by_doc
    else:
        named = [answer if answer in chunks.texts else None for answer in label.answers]
        table = {answer: [answer] for answer in label.answers if answer in chunks.texts}
    unknown = [answer for answer, found in zip(label.answers, named) if found is None]
    if unknown:
        where = {"source": f"no chunk of the index comes from {'it' if len(unknown) == 1 else 'them'} "
                           f"(a path under loader.path{f' {root}' if root else ''}, as `rag-pipeline ls` lists it)",
                 "doc_id": "no chunk of the index has it (see metadata.doc_id in `rag-pipeline export`)",
                 "id": "no chunk of the index has it (see the ids in `rag-pipeline export`)"}[label.kind]
        return LabelProblem(label.line, f"unknown {_KIND_NAMES[label.kind]} {', '.join(map(repr, unknown))}: {where}")
    answers = tuple(dict.fromkeys(str(n) for n in named))
    return ResolvedLabel(label, answers, tuple(tuple(table[a]) for a in answers))


def load_labels(path: str | Path, pipe: Pipeline, *, skip_bad: bool = False) -> Labels:
    """Read a labels file and check it against ``pipe``'s index.

    Every bad label is one ``FILE:LINE: reason`` line of a single ``ConfigError`` (the first
    :data:`PROBLEMS_SHOWN`, then how many more); with ``skip_bad`` they are left out instead and
    listed in :attr:`Labels.skipped`.
    """
    path = Path(path)
    labels, problems = read_labels(path)  # a malformed file fails before the index is read
    chunks = IndexChunks.read(pipe)
    root = _loader_root(pipe)
    resolved: list[ResolvedLabel] = []
    for label in labels:
        outcome = resolve_label(label, chunks, root)
        (resolved.append if isinstance(outcome, ResolvedLabel) else problems.append)(outcome)
    problems.sort(key=lambda p: p.line)
    if problems and not skip_bad:
        raise ConfigError(problem_report(path, problems))
    if not resolved:
        raise ConfigError(f"{path}: no usable label" + (f" ({len(problems)} left out as bad)" if problems else " (the file is empty)"))
    return Labels(path, resolved, chunks, problems)


def problem_report(path: Path, problems: Sequence[LabelProblem], shown: int = PROBLEMS_SHOWN) -> str:
    """``FILE: N bad labels ...`` then one ``FILE:LINE: reason`` line each, the first ``shown``."""
    count = len(problems)
    lines = [f"{path}: {count} bad label{'s' if count != 1 else ''} (fix {'them' if count != 1 else 'it'}, "
             "or pass --skip-bad to leave them out):"]
    lines += [f"{path}:{p.line}: {p.reason}" for p in problems[:shown]]
    if count > shown:
        lines.append(f"and {count - shown} more")
    return "\n".join(lines)


def write_labels(labels: Iterable[ResolvedLabel], path: str | Path) -> Path:
    """A JSONL labels file (what ``eval --labels`` reads back), answers as the index names them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for label in labels:
            handle.write(json.dumps(label.to_json(), ensure_ascii=False) + "\n")
    return path


def _loader_root(pipe: Pipeline) -> Path | None:
    """The folder the loader names sources relative to (``loader.path``, or its folder for a file)."""
    path = getattr(pipe.config.loader, "path", None)
    if path is None:
        return None
    path = Path(path)
    return path if path.is_dir() else path.parent


def _preview(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


# -- scoring ---------------------------------------------------------------------------------------


def searching(pipe: Pipeline, search: Literal["exact", "ann"]) -> Pipeline:
    """``pipe`` searching with ``search`` (a new pipeline over a copy of its config when it differs;
    the caller's is left as it was)."""
    if search not in ("exact", "ann"):
        raise ConfigError(f"--search must be exact or ann, got {search!r}")
    if pipe.config.retriever.search == search:
        return pipe
    config = pipe.config.model_copy(deep=True)
    config.retriever.search = search
    return Pipeline(config)


@dataclass
class LabelsEvalResult:
    """Scores of one ``eval --labels`` run; ``to_json()`` is what ``--json`` writes."""

    metrics: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]]
    runs: dict[str, dict[str, dict[str, float]]]
    qrels: dict[str, dict[str, int]]
    labels: dict[str, Any]
    config: dict[str, Any]
    timings: dict[str, float]
    reranked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "labels": self.labels, "config": self.config, "timings": self.timings}

    def write_json(self, path: str | Path) -> Path:
        return write_report(path, self.to_json())

    def table(self) -> str:
        """Values x100, as ``rag-pipeline eval`` prints them."""
        by = self.labels["by"]
        kinds = ", ".join(f"{n} by {_KIND_NAMES[k]}" for k, n in by.items() if n)
        skipped = f"; {self.labels['skipped']} bad labels left out" if self.labels["skipped"] else ""
        lines = [f"{self.labels['path']}: {self.labels['questions']} questions ({kinds}){skipped}, "
                 f"{self.labels['chunks']} chunks in the index, {self.config['evaluation']['search']} search"]
        stages = list(STAGES) if self.reranked else ["first_stage"]
        headers = ["metric", *(s.replace("_", " ") for s in stages)]
        rows = [[name, *(f"{100 * self.metrics[s][name]:.2f}" for s in stages)] for name in self.metrics["first_stage"]]
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        for row in [headers, *rows]:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if not self.reranked:
            lines.append("(no reranker: the final output is the first stage)")
        t = self.timings
        lines.append(f"search {t['search']:.1f}s" + (f", rerank {t['rerank']:.1f}s" if self.reranked else "")
                     + f", total {t['total']:.1f}s")
        return "\n".join(lines)


def evaluate_labels(
    pipe: Pipeline,
    labels: Labels,
    *,
    depth: int = 100,
    search: Literal["exact", "ann"] = "exact",
    metrics: tuple[str, ...] = METRICS,
    show_progress: bool | None = None,
) -> LabelsEvalResult:
    """Score ``pipe``'s retriever on labelled questions over its own index.

    Each question is scored on a ranked list of the items its label names (files, documents or
    chunks), an item's score its best chunk's, ``depth`` items deep; with a reranker, the first
    stage's top ``retriever.fetch_k`` chunks are reranked as ``rag-pipeline eval`` does, and the
    rest follow in first-stage order.
    """
    started = time.perf_counter()
    positive_count(depth, "depth")
    pipe = searching(pipe, search)
    if show_progress is not None:
        pipe.config.embeddings.show_progress = show_progress
    path = pipe.as_retriever().path
    reranker = pipe.reranker
    items = labels.labels
    texts = [label.question for label in items]
    encoded = path.encode(texts)
    first_stage: dict[str, dict[str, float]] = {}
    final: dict[str, dict[str, float]] = {}
    timings = {"search": 0.0, "rerank": 0.0}
    for kind in ANSWER_KINDS:
        rows = [i for i, label in enumerate(items) if label.kind == kind]
        if not rows:
            continue
        unit = labels.chunks.unit(kind)
        tick = time.perf_counter()
        hits = path.covering([texts[i] for i in rows], depth, encoded=encoded_part(encoded, rows),
                             with_text=reranker is not None, key=unit)
        timings["search"] += time.perf_counter() - tick
        tick = time.perf_counter()
        for i, found in zip(rows, hits):
            query_id = items[i].query_id
            first_stage[query_id] = _best_chunk_per_doc(found, depth, unit)
            if reranker is not None:
                reranked = path.rerank(texts[i], found[: pipe.config.retriever.fetch_k], top_n=None)
                final[query_id] = _reranked_run(reranked, first_stage[query_id], depth, unit)
        timings["rerank"] += time.perf_counter() - tick
    qrels = {label.query_id: dict.fromkeys(label.answers, 1) for label in items}
    reports = {"first_stage": evaluate_run(qrels, first_stage, metrics)}
    reports["final"] = evaluate_run(qrels, final, metrics) if reranker is not None else reports["first_stage"]
    timings["total"] = time.perf_counter() - started
    return LabelsEvalResult(
        metrics={stage: report.mean for stage, report in reports.items()},
        per_query={stage: report.per_query for stage, report in reports.items()},
        runs={"first_stage": first_stage, "final": final if reranker is not None else first_stage},
        qrels=qrels,
        labels=labels.describe(),
        config={"pipeline": pipe.config.to_dict(), "evaluation": {
            "search": search, "depth": depth, "rerank_depth": pipe.config.retriever.fetch_k if reranker is not None else None,
            "item_score": "best chunk", "metrics_library": "pytrec_eval (trec_eval)",
        }},
        timings=timings,
        reranked=reranker is not None,
    )
