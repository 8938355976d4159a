"""Metadata that Chroma will store: keys and strings it refuses are renamed, repaired or dropped.

Record fields (CSV columns, JSONL keys) become metadata keys as they are, so a corpus decides
them. Chroma 1.x refuses, for the whole batch and so for the whole ingest:

- the empty key and keys that start with ``#`` or ``$`` (its query syntax: ``$and``, ``#document``);
- ``chroma:document``, the key it stores a record's text under;
- strings that are not valid Unicode: JSON's ``"\\ud800"`` escape decodes to a lone surrogate,
  which cannot be encoded as UTF-8.

``safe_metadata`` is the one policy for all of them: a key is renamed when the new name is
unambiguous (``#tag`` -> ``tag``, ``chroma:document`` -> ``chroma_document``, and only when the
record has no field of that name already), otherwise the field is dropped; every change is
returned as a problem for the caller to report.

One meaning for a chunk's metadata in every index (Chroma, FAISS, BM25, m3-sparse):

- what is stored is :func:`stored_metadata`, Chroma's own form, written the same way to every
  index: text, whole numbers, real numbers and booleans as they are; a list or a mapping as its
  JSON text; no ``None``, NaN or infinity (Chroma keeps no such value). A hit therefore comes back
  with the same metadata whichever index found it.
- a filter means what Chroma's typed comparison means (:func:`matches`): a boolean equals only a
  boolean (``{"flag": 1}`` does not select ``flag: true``), text only text, and numbers compare as
  numbers (``1`` equals ``1.0``); ``$gt`` and the like compare numbers only; ``$ne`` and ``$nin``
  hold for a chunk without the field. Chroma itself cuts a fractional operand to a whole number
  when it compares it with a whole-number field (``{"n": {"$lt": 1.5}}`` misses ``n: 1``), so
  :func:`chroma_where` rewrites such a filter into one Chroma evaluates by this rule.
- :data:`SCORE_KEYS` are set by the retrieval path only: a stored value under one of them is
  never reported as a score.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from typing import Any, Callable, Collection

from .errors import ConfigError

_SURROGATE = re.compile("[\ud800-\udfff]")
RESERVED_KEYS = {"chroma:document": "chroma_document"}
_QUERY_SYNTAX_PREFIXES = ("#", "$")

SCORE_KEYS = (
    "score", "dense_score", "dense_rank", "bm25_score", "bm25_rank",
    "sparse_score", "sparse_rank", "colbert_score", "rerank_score",
)
"""Every score and rank the retrieval path sets in a hit's metadata: the first stage's ``score``,
each arm's ``<arm>_score`` and ``<arm>_rank`` (fusion; BGE-M3's dense, sparse and ColBERT scores)
and the cross-encoder's ``rerank_score``. A stored field of one of these names is dropped from a
hit before the path sets its own, and the server reports these keys as a result's scores."""

_INT64 = (-(2**63), 2**63 - 1)  # Chroma's whole numbers; a larger one is stored as a real number


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate (invalid Unicode that UTF-8 cannot encode) replaced by U+FFFD."""
    if text.isascii():
        return text
    # (json.loads joins an escaped surrogate *pair* into one character: any surrogate left is alone)
    return _SURROGATE.sub("\ufffd", text)


def _safe_key(key: str) -> str | None:
    """The name Chroma accepts for ``key`` (``key`` itself when it is fine), or None when there is none."""
    key = valid_unicode(key).lstrip("".join(_QUERY_SYNTAX_PREFIXES))
    return RESERVED_KEYS.get(key, key) or None


def _refused_because(key: str) -> str:
    if key in RESERVED_KEYS:
        return "a name Chroma reserves"
    if not key:
        return "Chroma refuses an empty field name"
    if key.startswith(_QUERY_SYNTAX_PREFIXES):
        return "Chroma refuses names that start with '#' or '$'"
    return "not valid Unicode"


def safe_metadata(metadata: dict[Any, Any], taken: Collection[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """``metadata`` with every key and string value made acceptable to Chroma, and what was changed.

    A key is never renamed onto a key of ``metadata`` or onto one of ``taken`` (keys the caller
    will set itself), so a rename cannot replace a value.
    """
    clean: dict[str, Any] = {}
    problems: list[str] = []
    unsafe: list[tuple[Any, Any]] = []
    for key, value in metadata.items():
        if isinstance(key, str) and _safe_key(key) == key:
            clean[key] = _safe_value(key, value, problems)
        else:
            unsafe.append((key, value))
    for key, value in unsafe:
        if not isinstance(key, str):
            problems.append(f"field {key!r} dropped (field names must be text)")
            continue
        new = _safe_key(key)
        if new is None:
            problems.append(f"field {key!r} dropped ({_refused_because(key)})")
        elif new in clean or new in metadata or new in taken:
            problems.append(f"field {key!r} dropped ({_refused_because(key)}, and {new!r} is taken)")
        else:
            problems.append(f"field {key!r} renamed to {new!r} ({_refused_because(key)})")
            clean[new] = _safe_value(new, value, problems)
    return clean, problems


def _safe_value(key: str, value: Any, problems: list[str]) -> Any:
    if isinstance(value, str):
        repaired = valid_unicode(value)
        if repaired is not value:
            problems.append(f"field {key!r}: invalid Unicode (a lone surrogate) replaced with U+FFFD")
        return repaired
    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        repaired_list = [valid_unicode(v) if isinstance(v, str) else v for v in value]
        if any(a is not b for a, b in zip(repaired_list, value)):
            problems.append(f"field {key!r}: invalid Unicode (a lone surrogate) replaced with U+FFFD")
        return repaired_list
    return value


def stored_metadata(metadata: dict[Any, Any]) -> dict[str, Any]:
    """``metadata`` as every index stores it (Chroma's form; see the module docstring): keys and
    text made acceptable (:func:`safe_metadata`), ``None`` / NaN / infinity dropped, a list or a
    mapping (or any other value) as JSON text. Applying it to stored metadata changes nothing."""
    clean: dict[str, Any] = {}
    for key, value in safe_metadata(metadata)[0].items():
        value = _stored_value(value)
        if value is not None:
            clean[key] = value
    return clean


def stored_metadata_json(metadata: dict[Any, Any]) -> str:
    """``metadata`` in the stored form, as JSON text: what an index that keeps metadata in a
    table of its own (FAISS, BM25) writes."""
    return json.dumps(stored_metadata(metadata), sort_keys=True)


def read_stored_metadata(text: str) -> dict[str, Any]:
    """Metadata read back from :func:`stored_metadata_json` text (passed through
    :func:`stored_metadata` again: a table written before that form held lists as lists)."""
    return stored_metadata(json.loads(text))


def _stored_value(value: Any) -> Any:
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # a numpy scalar (a data frame's cell) is its Python value
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        value = int(value)
        return value if _INT64[0] <= value <= _INT64[1] else float(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    # (the JSON text Chroma has always held: json.dumps with its defaults)
    return json.dumps(value, default=str)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(stored: Any, operand: Any) -> bool:
    """Chroma's equality: a boolean equals a boolean, text text, a number a number (1 == 1.0)."""
    if isinstance(stored, bool) or isinstance(operand, bool):
        return isinstance(stored, bool) and isinstance(operand, bool) and stored == operand
    if _is_number(stored) and _is_number(operand):
        return stored == operand
    return isinstance(stored, str) and isinstance(operand, str) and stored == operand


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """An order comparison that holds for numbers only (a boolean, text or a missing field: never)."""
    return lambda stored, operand: _is_number(stored) and _is_number(operand) and compare(stored, operand)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": _equal,
    "$ne": lambda a, b: not _equal(a, b),
    "$gt": _ordered(lambda a, b: a > b),
    "$gte": _ordered(lambda a, b: a >= b),
    "$lt": _ordered(lambda a, b: a < b),
    "$lte": _ordered(lambda a, b: a <= b),
    "$in": lambda a, b: any(_equal(a, v) for v in b),
    "$nin": lambda a, b: not any(_equal(a, v) for v in b),
}


def matches(metadata: dict[str, Any], where: Any) -> bool:
    """Whether a chunk's metadata passes a filter in Chroma's ``where`` syntax (the operators Chroma
    documents for metadata: $eq $ne $gt $gte $lt $lte $in $nin, $and $or), compared as Chroma types
    values (see the module docstring), so one ``retriever.filter`` selects the same chunks in every
    index (BM25, FAISS) as in Chroma. ``metadata`` is read as stored (:func:`stored_metadata`)."""
    if not isinstance(where, dict):
        raise ConfigError(f"retriever.filter: must be a mapping in Chroma's where syntax, got {where!r}")
    for key, condition in where.items():
        if key in ("$and", "$or"):
            results = (matches(metadata, part) for part in condition)
            if not (all(results) if key == "$and" else any(results)):
                return False
            continue
        stored = metadata.get(key)
        if isinstance(condition, dict):
            for operator, value in condition.items():
                if operator not in _COMPARISONS:
                    raise ConfigError(
                        f"retriever.filter: unsupported operator {operator!r}; use one of {', '.join(_COMPARISONS)}, $and, $or"
                    )
                if not _COMPARISONS[operator](stored, value):
                    return False
        elif not _equal(stored, condition):
            return False
    return True


def chroma_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """``where`` rewritten so that Chroma selects what :func:`matches` selects.

    Chroma compares a whole-number field with a fractional operand cut to a whole number (toward
    zero): ``{"n": {"$eq": 1.5}}`` selects ``n: 1``. Each comparison with a fractional operand is
    combined with one on that cut value, which Chroma compares exactly; every other filter is
    passed on as it is."""
    if not where or len(where) != 1:
        return where  # (no filter; or one Chroma refuses anyway: one field or operator per expression)
    [(key, condition)] = where.items()
    if key in ("$and", "$or"):
        return {key: [chroma_where(part) for part in condition]} if isinstance(condition, list) else where
    if isinstance(condition, dict):
        if len(condition) != 1:
            return where
        [(operator, operand)] = condition.items()
    else:
        operator, operand = "$eq", condition
    return _exact_comparison(key, operator, operand) or where


def _fractional(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and not value.is_integer()


def _exact_comparison(key: str, operator: str, operand: Any) -> dict[str, Any] | None:
    """The comparison ``key operator operand`` in a form Chroma evaluates exactly, or None when
    Chroma's own evaluation is exact already."""
    if operator in ("$in", "$nin") and isinstance(operand, list):
        integral = {int(v) for v in operand if _is_number(v) and math.isfinite(v) and float(v).is_integer()}
        # whole numbers Chroma would take for a fractional operand, and that the list does not name
        wrong = sorted({int(v) for v in operand if _fractional(v)} - integral)
        if not wrong:
            return None
        if operator == "$in":
            return {"$and": [{key: {"$in": operand}}, {key: {"$nin": wrong}}]}
        return {"$or": [{key: {"$nin": operand}}, {key: {"$in": wrong}}]}
    if not _fractional(operand):
        return None
    cut = int(operand)  # what Chroma compares a whole-number field with
    as_given = {key: {operator: operand}}
    # Chroma selects whole numbers by `n operator cut`; where that differs from `n operator
    # operand` it differs by `n == cut` alone: exclude it, or add it back.
    below = cut < operand  # a positive operand is cut down, a negative one up
    if operator == "$eq" or (operator == "$gte" and below) or (operator == "$lte" and not below):
        return {"$and": [as_given, {key: {"$ne": cut}}]}
    if operator == "$ne" or (operator == "$gt" and not below) or (operator == "$lt" and below):
        return {"$or": [as_given, {key: {"$eq": cut}}]}
    return None
