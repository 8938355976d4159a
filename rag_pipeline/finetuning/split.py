"""The dev split: a fixed, seeded share of the *train* queries, held out from training.

Hyperparameters, early stopping and the reranker's blend are chosen on it; the test split is
scored once, with what dev chose. The draw depends on the query ids only (sorted first), so the
same ids and seed give the same split whatever order the qrels file lists them in.
"""

from __future__ import annotations

import random
from typing import Iterable

from ..errors import ConfigError

DEV_SHARE = 0.2
DEV_SEED = 0


def dev_split(
    query_ids: Iterable[str], share: float = DEV_SHARE, seed: int = DEV_SEED, *, what: str = "--dev-share"
) -> tuple[list[str], list[str]]:
    """``(train_ids, dev_ids)``: ``round(share * n)`` ids drawn with ``random.Random(seed)``,
    each list in sorted order. ``what``: the share's name in the error (``--holdout`` for labels)."""
    if not 0 < share < 1:
        raise ConfigError(f"{what} must be between 0 and 1, got {share}")
    ids = sorted(set(query_ids))
    dev = set(random.Random(seed).sample(ids, round(share * len(ids))))
    return [q for q in ids if q not in dev], [q for q in ids if q in dev]


def refuse_test_split(split: str, force: bool) -> None:
    """Training or mining on the split that reports the result would tune to it."""
    if split == "test" and not force:
        raise ConfigError(
            "--split test: mining or training on the test split tunes the model to the numbers it is judged by; "
            "use --split train (the dev split is held out of it), or pass --force to do it anyway"
        )
