"""``lexical.type: bm25`` — a persisted BM25 index (bm25s, PyStemmer) of the same chunks as the dense index.

Lucene's BM25 by default (``k1`` 1.2, ``b`` 0.75), English Snowball stemming and stopwords; all
configurable. Per physical collection (``reindex`` builds a new one beside the old), under the
pipeline's state directory:

    <state>/lexical/<physical collection>/
      chunks.sqlite                      what the index holds: each chunk's id, text and metadata
      bm25/<settings>-<version>/         the bm25s matrices built from it (memory-mapped on load)

Why a text store and a rebuild, rather than segments and tombstones: bm25s has no incremental add
or delete, and BM25's idf and average length are corpus-wide, so a score from a segment built on
another corpus is not comparable. The store is written under ingest's own protocol (one SQLite
transaction per batch, so a kill leaves it consistent and the record's reconcile/sweep repair it);
the matrices are derived data, rebuilt from the store when an ingest that changed it ends (or, if
that ingest was killed, by the first reader, in memory). A rebuild of SciFact's 5,183 abstracts
takes about two seconds on this CPU, whatever the size of the change
(``benchmarks/results/scifact-hybrid.md``). Because the matrices are keyed by the BM25 settings,
changing ``k1``, ``b``, the stemmer or stopwords needs no reindex: the next search rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import Stemmer
from langchain_core.documents import Document
from pydantic import Field, field_validator

from ..contracts import with_score
from ..metadata import matches, read_stored_metadata, stored_metadata_json  # one form and meaning in every index
from ..registry import register
from ..stage_config import StageConfig

logger = logging.getLogger(__name__)

STORE_FILENAME = "chunks.sqlite"
BUILT_FOLDER = "bm25"
IDS_FILENAME = "ids.json"

# bm25s ships stopword lists as STOPWORDS_<LANGUAGE> constants; a config names them by language.
_STOPWORD_NAMES = {"EN": "english", "EN_PLUS": "english_plus"}


def _bm25s():
    """bm25s, imported on first use: it brings numba and scipy (~0.3 s), which a dense-only
    pipeline (every ``rag-pipeline`` command registers this stage) should not pay for."""
    import bm25s

    # bm25s sets its own logger to DEBUG when imported, so every index build would print under
    # any handler (the CLI's included); its debug lines are of no use to a user.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


@lru_cache(maxsize=1)
def stopword_lists() -> dict[str, tuple[str, ...]]:
    stopwords = _bm25s().stopwords
    return {
        _STOPWORD_NAMES.get(suffix, suffix.lower()): tuple(getattr(stopwords, f"STOPWORDS_{suffix}"))
        for suffix in (name.removeprefix("STOPWORDS_") for name in dir(stopwords) if name.startswith("STOPWORDS_"))
    }


def build_bm25(config: "BM25Config", embeddings: Any = None) -> "BM25Index":
    return BM25Index(config)  # (BM25 tokenizes by itself: the embedder is not needed)


@register("lexical", "bm25", build_bm25)
class BM25Config(StageConfig):
    """BM25 over the chunks' words. Defaults: Lucene's scoring, English stemming and stopwords."""

    type: Literal["bm25"] = "bm25"
    k1: float = Field(1.2, ge=0, description="Term-frequency saturation (Lucene's default 1.2).")
    b: float = Field(0.75, ge=0, le=1, description="Length normalisation (0: none, 1: full).")
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    stemmer: str | None = Field("english", description="A Snowball (PyStemmer) language, or null for no stemming.")
    stopwords: str | list[str] | None = Field(
        "english", description="A language whose bm25s stopword list is removed, a list of words, or null."
    )

    @field_validator("stemmer")
    @classmethod
    def _known_stemmer(cls, value: str | None) -> str | None:
        if value is not None and value not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer language {value!r}; choose one of {', '.join(Stemmer.algorithms())}, or null")
        return value

    @field_validator("stopwords")
    @classmethod
    def _known_stopwords(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str) and value not in stopword_lists():
            raise ValueError(
                f"no stopword list for {value!r}; choose one of {', '.join(sorted(stopword_lists()))}, a list of words, or null"
            )
        return value

    def settings_key(self) -> str:
        """What decides the matrices built from the same texts (their folder's name)."""
        data = self.model_dump(mode="json", exclude={"type"})
        data["bm25s"] = _bm25s().__version__
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:12]


class _TextStore:
    """The chunks a lexical index holds (SQLite; ``:memory:`` for an in-memory pipeline).

    Every write is one transaction that also bumps ``version``, which names the matrices built
    from it: a reader sees at once whether its matrices are current.
    """

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Readers on other threads (LangChain's ainvoke) share the connection under a lock.
        self._connection = sqlite3.connect(str(path) if path else ":memory:", timeout=60, check_same_thread=False)
        self._lock = threading.RLock()
        with self._lock, self._connection as c:
            if path is not None:
                c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE IF NOT EXISTS chunks (id TEXT PRIMARY KEY, text TEXT NOT NULL, metadata TEXT NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('version', 0)")

    def close(self) -> None:
        self._connection.close()

    def _write(self, statement: str, rows: list[tuple]) -> None:
        with self._lock, self._connection as c:
            c.executemany(statement, rows)
            c.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")

    def upsert(self, chunks: Sequence[Document]) -> None:
        rows = [(c.id, c.page_content, stored_metadata_json(c.metadata)) for c in chunks]
        self._write("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", rows)

    def delete(self, ids: Sequence[str]) -> None:
        self._write("DELETE FROM chunks WHERE id = ?", [(i,) for i in ids])

    def clear(self) -> None:
        self._write("DELETE FROM chunks", [()])

    def version(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]

    def count(self) -> int:
        with self._lock:
            return self._connection.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def rows(self, columns: str = "id") -> list[tuple]:
        with self._lock:
            return self._connection.execute(f"SELECT {columns} FROM chunks ORDER BY id").fetchall()

    def snapshot(self) -> tuple[int, list[tuple[str, str]]]:
        """The version and every (id, text), read in one transaction."""
        with self._lock, self._connection as c:
            c.execute("BEGIN")
            version = c.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
            rows = c.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return version, rows

    def documents(self, ids: Sequence[str], with_text: bool = True) -> dict[str, Document]:
        found: dict[str, Document] = {}
        unique = list(dict.fromkeys(ids))
        with self._lock:
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                marks = ",".join("?" * len(part))
                query = f"SELECT id, {'text' if with_text else 'NULL'}, metadata FROM chunks WHERE id IN ({marks})"
                for chunk_id, text, metadata in self._connection.execute(query, part):
                    found[chunk_id] = Document(page_content=text or "", metadata=read_stored_metadata(metadata), id=chunk_id)
        return found


@dataclass
class _Built:
    """The bm25s matrices of one version of the store, and the chunk id of each of their rows."""

    key: str
    model: Any  # bm25s.BM25, None for an empty store
    ids: list[str]


class BM25Index:
    """A ``LexicalIndex``: chunks written by id, searched by query text (scores are BM25's)."""

    max_batch_size = 100_000  # no limit of its own: the dense index's batch size governs
    store_type: type[_TextStore] = _TextStore  # what holds the chunks (a subclass may store more per chunk)

    def __init__(self, config: BM25Config):
        self.config = config
        self.root: Path | None = None  # <state>/lexical, None in memory
        self.collection_name: str | None = None
        # Set by the pipeline, as for the vector store: what to serve, and how to notice a reindex.
        self.resolve_collection: Callable[[], str] | None = None
        self.change_token: Callable[[], Any] | None = None
        self._token: Any = None
        self._stores: dict[str, _TextStore] = {}
        self._built: _Built | None = None
        self._stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
        stopwords = config.stopwords
        self._stopwords = list(stopword_lists()[stopwords]) if isinstance(stopwords, str) else list(stopwords or [])
        self._mask_cache: dict[str, np.ndarray] = {}

    # -- where ---------------------------------------------------------------------------------------
    def place(self, root: Path | None, collection: str) -> None:
        """Keep the index under ``root`` (None: in memory) and serve ``collection``."""
        self.root = Path(root) if root is not None else None
        self.use_collection(collection)

    def for_collection(self, name: str) -> "BM25Index":
        """Another view of this index's storage, serving ``name``: where ``reindex`` builds the new
        generation (in memory too, where the two must share their stores)."""
        other = BM25Index(self.config)
        other.root, other._stores = self.root, self._stores
        other.use_collection(name)
        return other

    def use_collection(self, name: str) -> None:
        if name != self.collection_name:
            self.collection_name = name
            self._built = None
            self._mask_cache.clear()

    def folder(self, name: str | None = None) -> Path | None:
        return self.root / (name or self.collection_name) if self.root is not None else None

    def _store(self, create: bool = False) -> _TextStore | None:
        name = self.collection_name
        if name is None:
            raise RuntimeError("the lexical index has no collection: Pipeline places it")
        store = self._stores.get(name)
        if store is None:
            folder = self.folder()
            if folder is not None and not create and not (folder / STORE_FILENAME).exists():
                return None  # a reader creates nothing
            if folder is None and not create:
                return None
            store = self._stores[name] = self.store_type(folder / STORE_FILENAME if folder is not None else None)
        return store

    def exists(self) -> bool:
        return self._store() is not None

    def refresh_if_changed(self) -> None:
        """Serve the collection that is active now (another process may have reindexed)."""
        if self.change_token is None or self.resolve_collection is None:
            return
        token = self.change_token()
        if token != self._token:
            self._token = token
            self.use_collection(self.resolve_collection())

    # -- writing ---------------------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held around a write session: when it ends, the matrices are rebuilt from the store (if it
        changed) and saved, so the next reader memory-maps them instead of rebuilding."""
        self._store(create=True)  # an ingest of an empty corpus still leaves an (empty) index
        yield
        store = self._store(create=True)  # (the session may have switched collections: prepare_ingest)
        if self._built is None or self._built.key != self._key(store.version()):
            self._current()
        self._collect_built()

    def upsert_texts(self, chunks: Sequence[Document]) -> None:
        if chunks:
            self._store(create=True).upsert(chunks)

    def delete(self, ids: Sequence[str]) -> None:
        store = self._store()
        if store is not None and ids:
            store.delete(list(ids))

    def clear(self) -> None:
        store = self._store()
        if store is not None:
            store.clear()

    def drop_collection(self, name: str) -> None:
        """Remove a physical collection's lexical index (a generation ``reindex`` retired)."""
        store = self._stores.pop(name, None)
        if store is not None:
            store.close()
        folder = self.folder(name)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if name == self.collection_name:
            self._built = None

    # -- reading ---------------------------------------------------------------------------------------
    def count(self) -> int:
        store = self._store()
        return store.count() if store is not None else 0

    def ids(self, where: Any = None) -> set[str]:
        store = self._store()
        if store is None:
            return set()
        if where is None:
            return {row[0] for row in store.rows()}
        return {i for i, metadata in store.rows("id, metadata") if matches(read_stored_metadata(metadata), where)}

    def documents(self, ids: Sequence[str]) -> list[Document]:
        store = self._store()
        found = store.documents(ids) if store is not None else {}
        return [found[i] for i in ids if i in found]

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return _bm25s().tokenize(
            list(texts), stopwords=self._stopwords, stemmer=self._stemmer, return_ids=False, show_progress=False
        )

    def search_batch_text(
        self, queries: Sequence[str], k: int, where: Any = None, *, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-``k`` chunks per query by BM25, best first, ``metadata['score']`` set. The hits are
        the chunks that hold a term of the query, whatever their score: ``method: robertson`` gives
        a term found in more than half the chunks no positive weight (its idf is negative; bm25s
        floors it at 0), and such a chunk is still a match; ``bm25l`` / ``bm25+`` give every chunk
        a score, and one that holds no term is still no match. Ties are broken by id, descending, as trec_eval breaks them."""
        return self._search(queries, k, where, with_text, self.tokenize, _bm25_scores)

    def _search(
        self,
        queries: Sequence[Any],
        k: int,
        where: Any,
        with_text: bool,
        encode: Callable[[Sequence[Any]], Iterable[Any]],
        score: Callable[[Any, Any], Any],
    ) -> list[list[Document]]:
        """The search every lexical index of this kind runs: ``encode`` turns the queries into what
        ``score(model, encoded)`` scores against every chunk, as ``(scores, matched)`` with
        ``matched`` the chunks that are hits (None: no chunk is); chunks outside ``where`` are no
        hits."""
        self.refresh_if_changed()
        store = self._store()
        if store is None:
            return [[] for _ in queries]
        built = self._current()
        if built.model is None:
            return [[] for _ in queries]
        mask = self._mask(built, store, where) if where is not None else None
        hits: list[list[tuple[str, float]]] = []
        for encoded in encode(queries):
            scored = score(built.model, encoded)
            if scored is None:
                hits.append([])
                continue
            scores, matched = np.asarray(scored[0], dtype=np.float64), np.asarray(scored[1], dtype=bool)
            if mask is not None:
                matched = matched & mask
            hits.append(_top(scores, np.flatnonzero(matched), built.ids, k))
        found = store.documents([i for row in hits for i, _ in row], with_text=with_text)
        return [
            [with_score(found[i], score) for i, score in row if i in found]  # (a chunk deleted meanwhile is skipped)
            for row in hits
        ]

    # -- the matrices ------------------------------------------------------------------------------------
    def _key(self, version: int) -> str:
        return f"{self.config.settings_key()}-{version}"

    def _current(self) -> _Built:
        """The matrices of the store as it is now: in memory, memory-mapped from disk, or rebuilt
        (and saved, for the next reader; by any process: the folder appears whole or not at all)."""
        store = self._store(create=True)
        key = self._key(store.version())
        if self._built is not None and self._built.key == key:
            return self._built
        folder = self.folder()
        built = self._load(folder / BUILT_FOLDER / key, key) if folder is not None else None
        if built is None:
            built = self._build(store)
            if folder is not None and built.model is not None:
                self._save(built, folder / BUILT_FOLDER)
        self._built = built
        self._mask_cache.clear()
        return built

    def _build(self, store: _TextStore) -> _Built:
        version, rows = store.snapshot()
        key = self._key(version)
        if not rows:
            return _Built(key, None, [])
        tokens = _bm25s().tokenize(
            [text for _, text in rows], stopwords=self._stopwords, stemmer=self._stemmer, show_progress=False
        )
        model = _bm25s().BM25(k1=self.config.k1, b=self.config.b, method=self.config.method)
        model.index(tokens, show_progress=False)
        return _Built(key, model, [chunk_id for chunk_id, _ in rows])

    @staticmethod
    def _load(path: Path, key: str) -> _Built | None:
        if not path.is_dir():
            return None
        try:
            ids = json.loads((path / IDS_FILENAME).read_text(encoding="utf-8"))
            model = _bm25s().BM25.load(path, mmap=True, show_progress=False)
        except (OSError, ValueError) as exc:  # removed by a writer meanwhile, or half-written by a crash
            logger.info("rebuilding the BM25 index instead of loading %s: %s", path, exc)
            return None
        return _Built(key, model, ids)

    @staticmethod
    def _save(built: _Built, parent: Path) -> None:
        """Written into a temporary folder, then renamed into place: a reader never sees half of it."""
        try:
            parent.mkdir(parents=True, exist_ok=True)
            temporary = Path(tempfile.mkdtemp(prefix=".building-", dir=parent))
            built.model.save(temporary, show_progress=False)
            (temporary / IDS_FILENAME).write_text(json.dumps(built.ids), encoding="utf-8")
            try:
                os.rename(temporary, parent / built.key)
            except OSError:  # another process saved the same version first
                shutil.rmtree(temporary, ignore_errors=True)
        except OSError as exc:  # a read-only folder: the in-memory build still serves
            logger.info("could not save the BM25 index under %s: %s", parent, exc)

    def _collect_built(self) -> None:
        """Remove the matrices of older versions (a reader mid-query keeps its memory map)."""
        folder = self.folder()
        if folder is None or self._built is None or not (folder / BUILT_FOLDER).is_dir():
            return
        for path in (folder / BUILT_FOLDER).iterdir():
            if path.name != self._built.key:
                shutil.rmtree(path, ignore_errors=True)

    def _mask(self, built: _Built, store: _TextStore, where: Any) -> np.ndarray:
        cache_key = json.dumps(where, sort_keys=True, default=str)
        if cache_key not in self._mask_cache:
            keep = self.ids(where)
            self._mask_cache[cache_key] = np.fromiter((i in keep for i in built.ids), dtype=bool, count=len(built.ids))
        return self._mask_cache[cache_key]


def _bm25_scores(model: Any, tokens: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Every chunk's BM25 score for the query, and which chunks hold one of its terms."""
    token_ids = model.get_tokens_ids(tokens)
    if not token_ids:
        return None
    return model.get_scores_from_ids(token_ids), _holding(model, token_ids)


def _holding(model: Any, token_ids: list[int]) -> np.ndarray:
    """Which chunks hold at least one of ``token_ids``: the rows bm25s keeps for each term (its
    score matrix has one column per term, with an entry for every chunk that holds it, whatever
    the entry's value)."""
    indptr, indices = model.scores["indptr"], model.scores["indices"]
    holding = np.zeros(model.scores["num_docs"], dtype=bool)
    for token in set(token_ids):
        holding[indices[indptr[token] : indptr[token + 1]]] = True
    return holding


def _top(scores: np.ndarray, candidates: np.ndarray, ids: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` best scores among ``candidates`` (row numbers), negative ones included; every
    chunk tied with the k-th is considered, so the cut is the same whatever order the matrix rows
    are in."""
    if len(candidates) > k:
        kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[scores[candidates] >= kth]
    order = sorted(candidates, key=lambda j: (float(scores[j]), ids[j]), reverse=True)[:k]
    return [(ids[j], float(scores[j])) for j in order]
