"""Metadata filters in Chroma's ``where`` syntax, checked before they reach an index.

One filter goes to both arms of a hybrid retriever: Chroma evaluates it for the dense arm and
``lexical.bm25.matches`` for the BM25 arm, so only the operators both understand are accepted:
the comparisons below, combined with ``$and`` / ``$or``. Checking here turns what would be a
traceback from the first query (or, in BM25, from the first chunk it reads) into a one-line
error at config time (``retriever.filter``) or call time (``invoke(..., filter=...)``).
"""

from __future__ import annotations

from typing import Any

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
LOGICAL = ("$and", "$or")
ALLOWED_OPERATORS = ", ".join(COMPARISONS + LOGICAL)
_SCALARS = (str, int, float, bool)


def filter_problem(where: Any) -> str | None:
    """What is wrong with ``where`` as a filter, in one line, or None when it is valid."""
    if not isinstance(where, dict):
        return f"must be a mapping such as {{file_type: pdf}}, got {where!r}"
    if not where:
        return None  # no filter
    problem = _walk(where)
    if problem is not None:
        return problem
    # The structure rules (one operator per expression, $in takes a list, ...) are Chroma's own;
    # its validator words them well, and it is the index the filter goes to.
    from chromadb.api.types import validate_where

    try:
        validate_where(where)
    except (ValueError, TypeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "; combine conditions with {$and: [...]}" if len(where) > 1 else ""
        return f"not a valid Chroma filter ({message}){hint}: {where!r}"
    return None


def _walk(where: dict[str, Any]) -> str | None:
    for key, condition in where.items():
        if not isinstance(key, str):
            return f"field names must be text, got {key!r}"
        if key.startswith("$"):
            if key not in LOGICAL:
                return f"unknown operator {key!r}; use one of {ALLOWED_OPERATORS}"
            if not isinstance(condition, list) or not all(isinstance(part, dict) for part in condition):
                return f"{key} takes a list of conditions, got {condition!r}"
            for part in condition:
                problem = _walk(part)
                if problem is not None:
                    return problem
        elif isinstance(condition, dict):
            for operator in condition:
                if operator not in COMPARISONS:
                    return f"unknown operator {operator!r} on {key!r}; use one of {ALLOWED_OPERATORS}"
        elif not isinstance(condition, _SCALARS):
            return f"{key!r}: a value must be text, a number or a boolean, or an operator such as {{$in: [...]}}, got {condition!r}"
    return None
