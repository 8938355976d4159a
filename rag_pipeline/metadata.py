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
"""

from __future__ import annotations

import re
from typing import Any, Callable, Collection

from .errors import ConfigError

_SURROGATE = re.compile("[\ud800-\udfff]")
RESERVED_KEYS = {"chroma:document": "chroma_document"}
_QUERY_SYNTAX_PREFIXES = ("#", "$")


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


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def matches(metadata: dict[str, Any], where: Any) -> bool:
    """Whether a chunk's metadata passes a filter in Chroma's ``where`` syntax (the operators Chroma
    documents for metadata: $eq $ne $gt $gte $lt $lte $in $nin, $and $or), so one
    ``retriever.filter`` means the same to every index (BM25, FAISS) as to Chroma."""
    if not isinstance(where, dict):
        raise ConfigError(f"retriever.filter: must be a mapping in Chroma's where syntax, got {where!r}")
    for key, condition in where.items():
        if key in ("$and", "$or"):
            results = (matches(metadata, part) for part in condition)
            if not (all(results) if key == "$and" else any(results)):
                return False
            continue
        if isinstance(condition, dict):
            for operator, value in condition.items():
                if operator not in _COMPARISONS:
                    raise ConfigError(
                        f"retriever.filter: unsupported operator {operator!r}; use one of {', '.join(_COMPARISONS)}, $and, $or"
                    )
                try:
                    if not _COMPARISONS[operator](metadata.get(key), value):
                        return False
                except TypeError:
                    return False
        elif metadata.get(key) != condition:
            return False
    return True
