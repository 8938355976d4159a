"""Shared helpers for the evaluation tests: a tiny hand-made BEIR folder, and where SciFact lives.

(Not a conftest.py: the root conftest is imported as ``conftest`` by other tests, and a second
one would shadow it.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# SciFact is read from the shared folder beside the repository, never copied into it.
SCIFACT = Path(os.environ.get("RAG_PIPELINE_SCIFACT_DIR", REPO.parent / "shared" / "datasets" / "scifact"))

requires_scifact = pytest.mark.skipif(
    not (SCIFACT / "corpus.jsonl").is_file(),
    reason=f"SciFact dataset folder not found at {SCIFACT} (expected ../shared/datasets/scifact beside the repo, "
    "or set RAG_PIPELINE_SCIFACT_DIR)",
)

TINY_CORPUS = [
    {"_id": "bees", "title": "Bees", "text": "Honey bees dance to tell the hive where the flowers are."},
    {"_id": "tides", "title": "Tides", "text": "Tides rise and fall twice a day, pulled by the moon and the sun."},
    {"_id": "tea", "title": "Green tea", "text": "Green tea is steeped at eighty degrees for two minutes."},
    {"_id": "bread", "title": "", "text": "Sourdough bread rises slowly because wild yeast is weak."},
    {"_id": "chess", "title": "Chess openings", "text": "The Sicilian defence answers e4 with c5."},
    {"_id": "moon", "title": "The Moon", "text": "The moon orbits the earth every twenty-seven days."},
    {"_id": "coffee", "title": "Coffee", "text": "Use fifteen grams of water for each gram of coffee."},
    {"_id": "bikes", "title": "Bicycles", "text": "Oil the chain of a bicycle every few hundred kilometres."},
]
TINY_QUERIES = [
    {"_id": "q1", "text": "why do bees dance", "metadata": {}},
    {"_id": "q2", "text": "what causes tides", "metadata": {}},
    {"_id": "q3", "text": "how hot should water be for green tea", "metadata": {}},
    {"_id": "q9", "text": "a training query that the test split does not judge", "metadata": {}},
]
# Header row, graded relevance, and a judged-non-relevant pair, as BEIR qrels have.
TINY_QRELS_TEST = "query-id\tcorpus-id\tscore\nq2\ttides\t2\nq2\tmoon\t1\nq1\tbees\t1\nq3\ttea\t1\nq3\tcoffee\t0\n"


def write_beir(folder: Path) -> Path:
    """Write the tiny collection above in BEIR layout (test split only)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in TINY_CORPUS), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in TINY_QUERIES), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text(TINY_QRELS_TEST, encoding="utf-8")
    return folder
