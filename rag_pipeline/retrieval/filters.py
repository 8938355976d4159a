"""Metadata filters in Chroma's ``where`` syntax, checked before they reach an index.

One filter goes to both arms of a hybrid retriever: Chroma evaluates it for the dense arm and
``metadata.matches`` for the BM25 arm, so only the operators both understand are accepted:
the comparisons below, combined with ``$and`` / ``$or``. Checking here turns what would be a
traceback from the first query (or, in BM25, from the first chunk it reads) into a one-line
error at config time (``retriever.filter``) or call time (``invoke(..., filter=...)``).

What a filter selects is the same in every index: values compare as Chroma types them (a boolean
is not the number 1; list and mapping metadata is stored as its JSON text), see
:mod:`rag_pipeline.metadata`.
"""

from __future__ import annotations

import math
from typing import Any

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
LOGICAL = ("$and", "$or")
ORDERINGS = ("$gt", "$gte", "$lt", "$lte")
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
            for operator, operand in condition.items():
                if operator not in COMPARISONS:
                    return f"unknown operator {operator!r} on {key!r}; use one of {ALLOWED_OPERATORS}"
                problem = _operand_problem(key, operator, operand)
                if problem is not None:
                    return problem
        elif not isinstance(condition, _SCALARS):
            return (
                f"{key!r}: a value must be text, a number or a boolean, or an operator such as {{$in: [...]}}, got "
                f"{condition!r} (a list or mapping in metadata is stored as its JSON text: compare with that text)"
            )
        elif _unstorable(condition):
            return _unstorable_problem(key, condition)
    return None


def _operand_problem(key: str, operator: str, operand: Any) -> str | None:
    """What Chroma's validator lets through and no index can answer the same way."""
    if operator in ORDERINGS and (isinstance(operand, bool) or not isinstance(operand, (int, float))):
        return f"{key!r}: {operator} compares numbers, got {operand!r}"
    values = operand if operator in ("$in", "$nin") and isinstance(operand, list) else [operand]
    if any(_unstorable(value) for value in values):
        return _unstorable_problem(key, operand)
    return None


def _unstorable(value: Any) -> bool:
    """A number no chunk holds: Chroma keeps no NaN or infinity (so no index does), and holds a
    whole number beyond 64 bits as a real number, which such an operand would not equal there."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63


def _unstorable_problem(key: str, operand: Any) -> str:
    return f"{key!r}: {operand!r} is not a number a chunk can hold; give a finite number (whole numbers within 64 bits)"
