"""Training files in FlagEmbedding's format: one JSON object a line,
``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` plus optional ``pos_scores``/``neg_scores``
(one number per passage, the teacher's scores).

FlagEmbedding's own format rather than one of ours, so that its tools read what ``finetune mine``
writes and we train on what they write. A bad line is one :class:`~rag_pipeline.errors.ConfigError`
naming the file and the line, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError


@dataclass
class TrainingExample:
    """One query, its relevant passages and its hard negatives (texts, not ids)."""

    query: str
    pos: list[str]
    neg: list[str]
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    query_id: str | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        record: dict = {"query": self.query, "pos": self.pos, "neg": self.neg}
        if self.pos_scores is not None and self.neg_scores is not None:
            record["pos_scores"] = self.pos_scores
            record["neg_scores"] = self.neg_scores
        if self.query_id is not None:
            record["query_id"] = self.query_id  # FlagEmbedding ignores keys it does not know
        return record


def write_training_file(examples: Iterable[TrainingExample], path: str | Path) -> Path:
    """Write the examples, each checked first as :func:`read_training_file` checks a line: a file
    written here is one training reads (an empty passage is refused now, not at training time)."""
    path = Path(path)
    records = []
    for number, example in enumerate(examples, start=1):
        record = example.to_json()
        named = f" (query_id {example.query_id!r})" if example.query_id is not None else ""
        _check(record, f"{path}: example {number}{named}")
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_training_file(path: str | Path) -> list[TrainingExample]:
    """Every example of the file, checked line by line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--data: {path} not found (write one with `rag-pipeline finetune mine`)")
    examples = []
    with path.open(encoding="utf-8", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                examples.append(_parse(line, f"{path}: line {number}"))
    if not examples:
        raise ConfigError(f"--data: {path} holds no examples")
    return examples


def _parse(line: str, where: str) -> TrainingExample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON ({exc.msg})") from None
    return _check(record, where)


def _check(record: object, where: str) -> TrainingExample:
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object with query, pos, neg")
    missing = [key for key in ("query", "pos", "neg") if key not in record]
    if missing:
        raise ConfigError(f"{where}: missing key {', '.join(repr(k) for k in missing)} (each line needs query, pos, neg)")
    query = record["query"]
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"{where}: 'query' must be a non-empty string")
    pos, neg = _texts(record["pos"], "pos", where), _texts(record["neg"], "neg", where)
    if not pos:
        raise ConfigError(f"{where}: 'pos' is empty; every query needs at least one relevant passage")
    both = set(pos) & set(neg)
    if both:
        raise ConfigError(f"{where}: a negative equals a positive ({_preview(next(iter(both)))}); drop it from 'neg'")
    pos_scores = _scores(record.get("pos_scores"), len(pos), "pos_scores", where)
    neg_scores = _scores(record.get("neg_scores"), len(neg), "neg_scores", where)
    if (pos_scores is None) != (neg_scores is None):
        raise ConfigError(f"{where}: give both pos_scores and neg_scores, or neither")
    query_id = record.get("query_id")
    return TrainingExample(query, pos, neg, pos_scores, neg_scores, str(query_id) if query_id is not None else None)


def _texts(value, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: '{key}' must be a list of non-empty strings")
    return value


def _scores(value, expected: int, key: str, where: str) -> list[float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != expected
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{where}: '{key}' must be a list of {expected} numbers, one per passage")
    return [float(v) for v in value]


def _preview(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
