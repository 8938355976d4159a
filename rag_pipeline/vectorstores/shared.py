"""Small pieces both vector stores (Chroma, FAISS) use the same way: writes in batches, and the
embedding fingerprint in the one text form a collection records it in."""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fingerprint_text(fingerprint: dict[str, Any]) -> str:
    # sorted keys: the same fingerprint is always the same text, so stored ones compare as text too
    return json.dumps(fingerprint, sort_keys=True, ensure_ascii=False)
