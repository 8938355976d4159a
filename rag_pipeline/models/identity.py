"""What a model is, as opposed to what its folder is called.

Two folders named ``bge-small-en-v1.5`` may hold different weights (a fine-tune saved over the
original, two checkouts on two paths), so the collection fingerprint and the embedding cache key
name the model by an identity derived from what it is:

* a Hugging Face hub model (a cache snapshot, a hub id found in the cache, or a download pinned to
  the commit the hub served): ``ORG/NAME@<commit>``. A commit fixes every file, so nothing is read.
* a local folder or a ``package:`` model: ``sha256:<digest>`` of the files that decide the vectors.
  For a packaged model the content hash was chosen over the package's name and version: it is the
  same mechanism for every folder, a rebuilt or editable install without a version bump cannot
  slip through, and with the on-disk hash cache it costs one read per install.

Which files: every file below the folder whose suffix a loader reads — ``*.json`` (config.json,
config_sentence_transformers.json, modules.json, sentence_bert_config.json, tokenizer files,
``1_Pooling/config.json``, ``2_Dense/config.json``), weights (``*.safetensors``, ``*.bin``, ``*.pt``,
``*.pth``, ``*.onnx``, OpenVINO ``*.xml``), vocabularies (``vocab.txt``, ``merges.txt``,
SentencePiece ``*.model``) and ``*.py`` (remote code). A suffix list rather than a list of names
because a missed file would mix two models' vectors without a word, while an extra one only costs
a ``reindex`` prompt. Left out: documentation (README.md, images), hidden entries (``.git``,
``.cache``) and Trainer ``checkpoint-*`` folders, which the model is never loaded from.

Hashing a 1 GB model takes seconds, so each file's digest is cached, keyed by its path and checked
against its size, mtime_ns, ctime_ns, inode and device: a file written, replaced or copied over
(even with its mtime preserved) has a new ctime or inode and is hashed again. The cache is an
SQLite file under ``$RAG_PIPELINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/rag-pipeline``, else
``~/.cache/rag-pipeline``; where that cannot be written, digests are kept for the process only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from pathlib import Path

from .resolution import ResolvedModel

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "RAG_PIPELINE_CACHE_DIR"
HASH_CACHE_FILENAME = "model_file_hashes.sqlite"

HASHED_SUFFIXES = frozenset(
    {".json", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".xml", ".txt", ".model", ".py"}
)

FileSignature = tuple[int, int, int, int, int]


def model_identity(resolved: ResolvedModel) -> str:
    """``ORG/NAME@<commit>`` for a hub model, ``sha256:<digest>`` for a folder or packaged model."""
    if resolved.revision is not None:
        return f"{resolved.model_id}@{resolved.revision}"
    if resolved.path is None:  # the hub answered without a commit: nothing better to name it by
        return f"{resolved.model_id}@unpinned"
    return "sha256:" + folder_digest(Path(resolved.path))


def model_files(folder: Path) -> list[Path]:
    """The files whose content decides the model's vectors, in a stable order."""
    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.startswith("checkpoint-"))
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in HASHED_SUFFIXES:
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def folder_digest(folder: Path, cache: "FileHashCache | None" = None) -> str:
    cache = cache if cache is not None else default_hash_cache()
    combined = hashlib.sha256()
    for path in model_files(folder):
        combined.update(f"{path.relative_to(folder).as_posix()}\0{cache.digest(path)}\n".encode("utf-8"))
    return combined.hexdigest()[:32]


def hash_file(path: Path) -> str:
    """The content hash of one file (the one expensive step, which the cache exists to skip)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _signature(path: Path) -> FileSignature:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def hash_cache_directory() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "rag-pipeline"


class FileHashCache:
    """File digests by path, valid while the file's signature is unchanged. Memory first, then disk."""

    def __init__(self, path: Path | None):
        self.path = path
        self._memory: dict[str, tuple[FileSignature, str]] = {}
        self._connection: sqlite3.Connection | None = None
        self._disk_usable = path is not None
        self._lock = threading.Lock()

    def digest(self, file: Path) -> str:
        key = str(file.resolve())
        # Taken before reading: a file changed while it is hashed gets a new signature and is
        # hashed again next time, rather than keeping a digest of half-old content.
        signature = _signature(file)
        with self._lock:
            remembered = self._memory.get(key)
            if remembered is not None and remembered[0] == signature:
                return remembered[1]
            digest = self._read(key, signature)
        if digest is None:
            digest = hash_file(file)
            with self._lock:
                self._write(key, signature, digest)
        with self._lock:
            self._memory[key] = (signature, digest)
        return digest

    def _db(self) -> sqlite3.Connection | None:
        if not self._disk_usable:
            return None
        if self._connection is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                    " ctime_ns INTEGER, inode INTEGER, device INTEGER, sha256 TEXT NOT NULL)"
                )
                connection.commit()
                self._connection = connection
            except (OSError, sqlite3.Error) as exc:
                self._give_up_disk(exc)
        return self._connection

    def _give_up_disk(self, exc: BaseException) -> None:
        logger.warning(
            "model hash cache %s is not usable (%s); model files are hashed again in each process "
            "(set %s to a writable folder to keep them)",
            self.path, exc, CACHE_DIR_ENV,
        )
        self._disk_usable = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _read(self, key: str, signature: FileSignature) -> str | None:
        db = self._db()
        if db is None:
            return None
        try:
            row = db.execute(
                "SELECT size, mtime_ns, ctime_ns, inode, device, sha256 FROM file_hashes WHERE path = ?", (key,)
            ).fetchone()
        except sqlite3.Error as exc:
            self._give_up_disk(exc)
            return None
        if row is None or tuple(row[:5]) != signature:
            return None
        return row[5]

    def _write(self, key: str, signature: FileSignature, digest: str) -> None:
        db = self._db()
        if db is None:
            return
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?, ?)", (key, *signature, digest))
        except sqlite3.Error as exc:
            self._give_up_disk(exc)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


_caches: dict[Path, FileHashCache] = {}
_caches_lock = threading.Lock()


def default_hash_cache() -> FileHashCache:
    """One cache per process and location (the location follows the environment at call time)."""
    path = hash_cache_directory() / HASH_CACHE_FILENAME
    with _caches_lock:
        if path not in _caches:
            _caches[path] = FileHashCache(path)
        return _caches[path]
