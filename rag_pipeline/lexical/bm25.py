"""``lexical.type: bm25`` — a persisted BM25 index (bm25s, PyStemmer) of the same chunks as the dense index.

Lucene's BM25 by default (``k1`` 1.2, ``b`` 0.75), English Snowball stemming and stopwords; all
configurable. Per physical collection (``reindex`` builds a new one beside the old), under the
pipeline's state directory:

    <state>/lexical/<physical collection>/
      chunks.sqlite                      what the index holds: each chunk's id, text and metadata
      bm25/<settings>-<version>/         the bm25s matrices built from it (memory-mapped on load)

Why a chunk table and a rebuild, rather than segments and tombstones: bm25s has no incremental add
or delete, and BM25's idf and average length are corpus-wide, so a score from a segment built on
another corpus is not comparable. The table and how the matrices follow it are
:mod:`.matrix_index`'s: the matrices are derived data, rebuilt from the table when an ingest that
changed it ends (or, if that ingest was killed, by the first reader, in memory), at a cost that
does not depend on the size of the change (``benchmarks/results/scifact-hybrid.md``). Because the
matrices are keyed by the BM25 settings, changing ``k1``, ``b``, the stemmer or stopwords needs no
reindex: the next search rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import Stemmer
from langchain_core.documents import Document
from pydantic import Field, field_validator

from ..index_storage import CHUNKS_FILENAME, ChunkTable
from ..registry import register
from ..stage_config import StageConfig
from .matrix_index import Built, MatrixIndex

logger = logging.getLogger(__name__)

STORE_FILENAME = CHUNKS_FILENAME
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


class WordsConfig(StageConfig):
    """What turns text into the words BM25 counts, and how it weighs them: shared by every lexical
    index that scores BM25 over words (``bm25``, ``tantivy``), so the same settings mean the same."""

    k1: float = Field(1.2, ge=0, description="Term-frequency saturation (Lucene's default 1.2).")
    b: float = Field(0.75, ge=0, le=1, description="Length normalisation (0: none, 1: full).")
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


class WordTokenizer:
    """Text -> the words BM25 counts: bm25s's tokenizer (lower case, words of two or more word
    characters), the config's stopwords removed, then its Snowball stemmer."""

    def __init__(self, config: WordsConfig):
        self._stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
        stopwords = config.stopwords
        self._stopwords = list(stopword_lists()[stopwords]) if isinstance(stopwords, str) else list(stopwords or [])

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        return _bm25s().tokenize(
            list(texts), stopwords=self._stopwords, stemmer=self._stemmer, return_ids=False, show_progress=False
        )

    def ids(self, texts: Sequence[str]) -> Any:
        """bm25s's own form (token ids and vocabulary), what its index is built from."""
        return _bm25s().tokenize(list(texts), stopwords=self._stopwords, stemmer=self._stemmer, show_progress=False)


@register("lexical", "bm25", build_bm25)
class BM25Config(WordsConfig):
    """BM25 over the chunks' words. Defaults: Lucene's scoring, English stemming and stopwords."""

    type: Literal["bm25"] = "bm25"
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"

    def settings_key(self) -> str:
        """What decides the matrices built from the same texts (their folder's name)."""
        data = self.model_dump(mode="json", exclude={"type"})
        data["bm25s"] = _bm25s().__version__
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:12]


class BM25Index(MatrixIndex):
    """A ``LexicalIndex``: chunks written by id, searched by query text (scores are BM25's). The
    table, collections and write sessions are :class:`~.matrix_index.MatrixIndex`'s; this class
    tokenizes, builds the bm25s matrices and keeps them on disk."""

    def __init__(self, config: BM25Config):
        super().__init__(config)
        self.tokenize = WordTokenizer(config)

    def _new_view(self) -> "BM25Index":
        return BM25Index(self.config)

    def upsert_texts(self, chunks: Sequence[Document]) -> None:
        if chunks:
            self._table(create=True).upsert(chunks)

    # -- search ------------------------------------------------------------------------------------------
    def search_batch_text(
        self, queries: Sequence[str], k: int, where: Any = None, *, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-``k`` chunks per query by BM25, best first, ``metadata['score']`` set. The hits are
        the chunks that hold a term of the query, whatever their score: ``method: robertson`` gives
        a term found in more than half the chunks no positive weight (its idf is negative; bm25s
        floors it at 0), and such a chunk is still a match; ``bm25l`` / ``bm25+`` give every chunk
        a score, and one that holds no term is still no match. Ties are broken by id, descending, as trec_eval breaks them."""
        return self._search(queries, k, where, with_text)

    def _encode(self, queries: Sequence[str]) -> list[list[str]]:
        return self.tokenize(queries)

    def _scores(self, model: Any, tokens: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        return _bm25_scores(model, tokens)

    # -- the matrices ------------------------------------------------------------------------------------
    def _build(self, table: ChunkTable) -> Built:
        version, rows = table.snapshot("id, text")
        key = self._key(version)
        if not rows:
            return Built(key, None, [])
        tokens = self.tokenize.ids([text for _, text in rows])
        model = _bm25s().BM25(k1=self.config.k1, b=self.config.b, method=self.config.method)
        model.index(tokens, show_progress=False)
        return Built(key, model, [chunk_id for chunk_id, _ in rows])

    def _load(self, folder: Path, key: str) -> Built | None:
        path = folder / BUILT_FOLDER / key
        if not path.is_dir():
            return None
        try:
            ids = json.loads((path / IDS_FILENAME).read_text(encoding="utf-8"))
            model = _bm25s().BM25.load(path, mmap=True, show_progress=False)
        except (OSError, ValueError) as exc:  # removed by a writer meanwhile, or half-written by a crash
            logger.info("rebuilding the BM25 index instead of loading %s: %s", path, exc)
            return None
        return Built(key, model, ids)

    def _save(self, built: Built, folder: Path) -> None:
        """Written into a temporary folder, then renamed into place (by any process: the folder
        appears whole or not at all): a reader never sees half of it."""
        parent = folder / BUILT_FOLDER
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
