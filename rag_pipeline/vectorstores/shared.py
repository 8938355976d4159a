"""Small pieces both vector stores (Chroma, FAISS) use the same way: writes in batches, and the
embedding fingerprint in the one text form a collection records it in."""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

from ..errors import IndexMismatchError


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fingerprint_text(fingerprint: dict[str, Any]) -> str:
    # sorted keys: the same fingerprint is always the same text, so stored ones compare as text too
    return json.dumps(fingerprint, sort_keys=True, ensure_ascii=False)


def fingerprint_mismatch(collection: str, stored: dict[str, Any], expected: dict[str, Any]) -> IndexMismatchError | None:
    """The error for a collection whose recorded embedding setup differs from the configured one
    (each differing key named, both values), or None when every configured key matches."""
    differing = [key for key in sorted(expected) if stored.get(key) != expected.get(key)]
    if not differing:
        return None
    differences = ", ".join(f"{key}: index has {stored.get(key)!r}, config gives {expected.get(key)!r}" for key in differing)
    return IndexMismatchError(
        f"collection {collection!r} was built with another embedding setup ({differences}); "
        "vectors of different models cannot be mixed: run `rag-pipeline reindex CONFIG` to re-embed the "
        "corpus with the configured model (the current index serves until the new one is complete), or set vectorstore.collection to a new name"
    )
