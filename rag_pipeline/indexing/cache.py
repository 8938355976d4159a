"""An on-disk cache of passage embeddings, keyed by model identity and text hash.

Re-embedding is the expensive part of every re-run (a crashed ingest, a second evaluation, a
rebuilt collection), and the vector of a text under a given model never changes. One SQLite file
holds them all: a single file copes with hundreds of thousands of entries where one file per
vector (LangChain's ``LocalFileStore`` behind ``CacheBackedEmbeddings``) means as many inodes,
and WAL mode lets a reader and a writer share it across processes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    # The query instruction does not change passage vectors, so it is not part of the key.
    relevant = {k: v for k, v in fingerprint.items() if k != "query_instruction"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode("utf-8")).hexdigest()[:16]


class EmbeddingCache:
    """``get(texts)`` -> vectors or None per text; ``put(texts, vectors)``. Safe across processes."""

    def __init__(self, path: str | Path, fingerprint: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.model_key = fingerprint_hash(fingerprint)
        self.dimension = int(fingerprint["dimension"])
        self._connection = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS embeddings ("
            " model TEXT NOT NULL, text_sha256 TEXT NOT NULL, vector BLOB NOT NULL,"
            " PRIMARY KEY (model, text_sha256)) WITHOUT ROWID"
        )
        self._connection.commit()

    def get(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        hashes = [text_hash(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):  # stay under SQLite's bound-parameter limit
            part = hashes[start : start + 500]
            rows = self._connection.execute(
                f"SELECT text_sha256, vector FROM embeddings WHERE model = ? AND text_sha256 IN "
                f"({','.join('?' * len(part))})",
                [self.model_key, *part],
            ).fetchall()
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return [found.get(h) for h in hashes]

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO embeddings (model, text_sha256, vector) VALUES (?, ?, ?)",
                [(self.model_key, text_hash(t), v.tobytes()) for t, v in zip(texts, vectors)],
            )

    def __len__(self) -> int:
        return self._connection.execute(
            "SELECT COUNT(*) FROM embeddings WHERE model = ?", (self.model_key,)
        ).fetchone()[0]

    def close(self) -> None:
        self._connection.close()


def encode_with_cache(embeddings, texts: Sequence[str], cache: EmbeddingCache | None) -> tuple[np.ndarray, int]:
    """Vectors for ``texts``, embedding only those the cache lacks. Returns (vectors, newly embedded)."""
    if cache is None:
        return embeddings.encode(texts, show_progress=False), len(texts)
    cached = cache.get(texts)
    missing = [i for i, v in enumerate(cached) if v is None]
    if missing:
        fresh = embeddings.encode([texts[i] for i in missing], show_progress=False)
        cache.put([texts[i] for i in missing], fresh)
        for i, vector in zip(missing, fresh):
            cached[i] = vector
    dimension = cache.dimension
    return (np.vstack(cached) if cached else np.zeros((0, dimension), dtype=np.float32)), len(missing)
