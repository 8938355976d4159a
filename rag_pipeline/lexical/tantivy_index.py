"""``lexical.type: tantivy`` — BM25 over words, kept in place: a change costs what it changes.

The ``bm25`` index rebuilds its matrices from every stored text after any change, because bm25s
cannot add or delete; at a million chunks that is minutes per one-file edit. This index keeps an
inverted index that takes adds and deletes (tantivy: Lucene-style segments, merged in the
background) and the BM25 statistics beside the chunks, updated in the same transaction:

    <state>/lexical/<physical collection>/
      chunks.sqlite     the chunks (id, text, metadata) plus each one's words and their count;
                        ``words`` (how many live chunks hold each word) and the total word count
      tantivy/          the inverted index of the same words, each document keyed by chunk id

Scores are exact BM25 over the live chunks, the same numbers the ``bm25`` index gives for the same
``k1``, ``b``, stemmer and stopwords. Tantivy finds the candidates (its own top hits, by its own
BM25, a few times deeper than ``k``); they are then scored again from the statistics in SQLite.
Why not tantivy's scores alone: like Lucene, it counts a deleted document in its statistics until a
merge drops it, so after an edit its scores depend on the index's history, and a rerun after a
crash would not equal a clean run. Tantivy's order decides only which chunks are rescored.

Crash safety, under the ingest's write -> record -> delete order: a write goes to tantivy first
(committed) and then to SQLite; a delete goes to SQLite first and then to tantivy. So tantivy
always holds every chunk SQLite holds, perhaps more (a write killed between the two); a hit that
SQLite does not hold is skipped, and the chunk's next write replaces it (by id).
"""

from __future__ import annotations

import hashlib
import json
import math
import logging
import shutil
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from langchain_core.documents import Document
from pydantic import Field

from ..contracts import Filter, with_score
from ..errors import ConfigError
from ..index_storage import ChunkTable, TableIndex, batches
from ..registry import register
from .bm25 import WordsConfig, WordTokenizer, _bm25s

logger = logging.getLogger(__name__)

ENGINE_FOLDER = "tantivy"
# Tantivy refuses terms longer than its limit; no word of a real text comes near this.
MAX_WORD_BYTES = 1000
# Largest filter whose chunk ids are handed to tantivy as a term set; a broader one is applied to
# the candidates instead (it keeps most of them).
MAX_FILTER_IDS = 20_000
WORDS_TOKENIZER = "rag_pipeline_words"
ID_TOKENIZER = "rag_pipeline_id"


def stored_words(words: Sequence[str]) -> str:
    """A chunk's words as its row keeps them: each with a space on either side of its own
    (" a  b  c "), so that ``row.count(f" {word} ")`` counts every occurrence."""
    return f" {'  '.join(words)} " if words else ""


def build_tantivy(config: "TantivyConfig", embeddings: Any = None) -> "TantivyIndex":
    return TantivyIndex(config)


@register("lexical", "tantivy", build_tantivy)
class TantivyConfig(WordsConfig):
    """BM25 over the chunks' words, updated in place (tantivy). The same settings and scores as
    ``bm25``; an edit costs what it changes instead of a rebuild of the whole index."""

    type: Literal["tantivy"] = "tantivy"
    candidates: int = Field(
        2, ge=1, description="How many times k tantivy's own ranking hands over to be scored exactly (at least k + 50)."
    )

    def words_key(self) -> str:
        """What decides the stored words (changing it needs a reindex; k1 and b do not)."""
        data = {"stemmer": self.stemmer, "stopwords": self.stopwords, "bm25s": _bm25s().__version__}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:12]


class WordsTable(ChunkTable):
    """The chunks plus their words, and the corpus statistics BM25 needs, kept in the same
    transactions as the chunks: ``words`` (chunks holding each word) and ``meta`` keys
    ``total_words``, ``words_key`` (what made the words) and ``words_version`` (the table version
    they were last brought up to). The table is shared with the other lexical types (switching
    ``lexical.type`` keeps the chunks): a write by another type moves the version and not
    ``words_version``, so what it changed is known to be missing here."""

    CHUNK_COLUMNS = "id TEXT PRIMARY KEY, text TEXT NOT NULL, metadata TEXT NOT NULL, words TEXT, length INTEGER"

    def __init__(self, path: Path | None):
        super().__init__(path)
        with self._lock, self._connection as c:
            columns = {row[1] for row in c.execute("PRAGMA table_info(chunks)")}
            for column, kind in (("words", "TEXT"), ("length", "INTEGER")):
                if column not in columns:  # a table another lexical type made
                    c.execute(f"ALTER TABLE chunks ADD COLUMN {column} {kind}")
            c.execute("CREATE TABLE IF NOT EXISTS words (word TEXT PRIMARY KEY, chunks INTEGER NOT NULL)")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('total_words', '0')")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('words_version', '0')")
            # (kept here because COUNT(*) scans the table: milliseconds per search at a million chunks)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('counted_chunks', '0')")

    def in_step(self, words_key: str) -> bool:
        """Whether the words and statistics are those of every chunk, made as ``words_key`` says."""
        held = self.meta("words_key")
        return self.meta("words_version") == str(self.version()) and (held == words_key or (held is None and self.is_empty()))

    @contextmanager
    def _words_transaction(self, words_key: str) -> Iterator[Any]:
        with self.transaction() as c:
            yield c
            c.execute("INSERT OR REPLACE INTO meta VALUES ('words_key', ?)", (words_key,))
            # (the version this transaction ends with: transaction() adds one after this block)
            c.execute(
                "UPDATE meta SET value = CAST((SELECT value FROM meta WHERE key = 'version') AS INTEGER) + 1 "
                "WHERE key = 'words_version'"
            )

    def write(self, chunks: Sequence[Document], words: Sequence[list[str]], words_key: str) -> None:
        with self._words_transaction(words_key) as c:
            self._forget(c, [chunk.id for chunk in chunks])
            c.executemany(
                "INSERT INTO chunks (id, text, metadata, words, length) VALUES (?, ?, ?, ?, ?)",
                [(*self.chunk_row(chunk), stored_words(w), len(w)) for chunk, w in zip(chunks, words)],
            )
            self._count(c, words, +1)

    def delete_words(self, ids: Sequence[str], words_key: str) -> None:
        with self._words_transaction(words_key) as c:
            self._forget(c, list(ids))

    def clear_words(self, words_key: str) -> None:
        with self._words_transaction(words_key) as c:
            c.execute("DELETE FROM chunks")
            self._reset(c)

    def rewrite_words(self, words: dict[str, list[str]], words_key: str) -> None:
        """Every chunk's words made again (``words`` by id) and the statistics counted afresh."""
        with self._words_transaction(words_key) as c:
            c.executemany("UPDATE chunks SET words = ?, length = ? WHERE id = ?", [(stored_words(w), len(w), i) for i, w in words.items()])
            self._reset(c)
            self._count(c, list(words.values()), +1)

    @staticmethod
    def _reset(c: Any) -> None:
        c.execute("DELETE FROM words")
        c.execute("UPDATE meta SET value = '0' WHERE key IN ('total_words', 'counted_chunks')")

    def _forget(self, c: Any, ids: list[str]) -> None:
        """Remove ``ids``' rows and their words from the statistics (inside a transaction)."""
        old: list[list[str]] = []
        for part in batches(ids, 500):
            marks = ",".join("?" * len(part))
            old += [row[0].split() for row in c.execute(f"SELECT words FROM chunks WHERE id IN ({marks}) AND words IS NOT NULL", part)]
            c.execute(f"DELETE FROM chunks WHERE id IN ({marks})", part)
        if old:
            self._count(c, old, -1)

    @staticmethod
    def _count(c: Any, words: Sequence[list[str]], sign: int) -> None:
        held = Counter(word for chunk_words in words for word in set(chunk_words))
        c.executemany(
            "INSERT INTO words VALUES (?, ?) ON CONFLICT(word) DO UPDATE SET chunks = chunks + excluded.chunks",
            [(word, sign * n) for word, n in held.items()],
        )
        if sign < 0:
            c.execute("DELETE FROM words WHERE chunks <= 0")
        total = sum(len(w) for w in words)
        c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'total_words'", (sign * total,))
        c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'counted_chunks'", (sign * len(words),))

    def statistics(self, words: Sequence[str]) -> tuple[int, int, dict[str, int]]:
        """Live chunks, their total word count, and how many of them hold each of ``words``, read
        in one transaction."""
        with self._lock, self._connection as c:
            c.execute("BEGIN")
            count = int(c.execute("SELECT value FROM meta WHERE key = 'counted_chunks'").fetchone()[0])
            total = int(c.execute("SELECT value FROM meta WHERE key = 'total_words'").fetchone()[0])
            held: dict[str, int] = {}
            for part in batches(list(words), 500):
                marks = ",".join("?" * len(part))
                held.update(c.execute(f"SELECT word, chunks FROM words WHERE word IN ({marks})", part).fetchall())
        return count, total, held


class OtherSchema(Exception):
    """The folder holds a tantivy index of another schema (made by another version of this code)."""


class _Engine:
    """One collection's tantivy index: opened once per process (shared by every view), a writer
    held only while a write session needs it, and a searcher reloaded when the table moved."""

    def __init__(self, folder: Path | None):
        import tantivy

        self.tantivy = tantivy
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("id", stored=True, tokenizer_name=ID_TOKENIZER)
        builder.add_text_field("words", stored=False, tokenizer_name=WORDS_TOKENIZER, index_option="freq")
        self.schema = builder.build()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        try:
            self.index = tantivy.Index(self.schema, path=str(folder) if folder is not None else None)
        except ValueError as exc:  # tantivy's "an index exists but the schema does not match"
            if "schema" not in str(exc).lower():
                raise
            raise OtherSchema(str(exc)) from None
        # The words arrive made (WordTokenizer): split on spaces, nothing dropped or changed. Not
        # tantivy's own "whitespace", which drops words longer than 40 bytes. (Tokenizers are not
        # stored with the index: registered at every open.)
        self.index.register_tokenizer(WORDS_TOKENIZER, tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build())
        # An id is one term whatever its length (tantivy's own "raw" drops one past 255 bytes, and
        # a delete by such an id would then miss it).
        self.index.register_tokenizer(ID_TOKENIZER, tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.raw()).build())
        self._writer: Any = None
        self._seen: Any = None
        self._searcher: Any = None
        self._lock = threading.Lock()

    def writer(self) -> Any:
        if self._writer is None:
            # one indexing thread: the other core is embedding the next batch
            self._writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        return self._writer

    def release_writer(self) -> None:
        if self._writer is not None:
            self._writer.wait_merging_threads()
            self._writer = None

    def add(self, ids: Sequence[str], words: Sequence[list[str]], replace: bool = True) -> None:
        """Add (by default in place of any document of the same id) and commit."""
        writer = self.writer()
        for chunk_id, chunk_words in zip(ids, words):
            if replace:
                writer.delete_documents_by_term("id", chunk_id)
            writer.add_document(self.tantivy.Document(id=chunk_id, words=" ".join(chunk_words)))
        writer.commit()

    def delete(self, ids: Sequence[str]) -> None:
        writer = self.writer()
        for chunk_id in ids:
            writer.delete_documents_by_term("id", chunk_id)
        writer.commit()

    def clear(self) -> None:
        writer = self.writer()
        writer.delete_all_documents()
        writer.commit()

    def searcher(self, version: Any) -> Any:
        """A searcher of tantivy's latest commit, reloaded when the table's ``version`` moved
        (tantivy commits before the table does, so it is at least as new)."""
        with self._lock:
            if self._searcher is None or self._seen != version:
                self.index.reload()
                self._searcher, self._seen = self.index.searcher(), version
            return self._searcher

    def candidates(self, searcher: Any, words: Sequence[str], depth: int, allowed: set[str] | None) -> tuple[list[str], bool]:
        """Chunk ids of tantivy's top ``depth`` hits holding any of ``words`` (and, with
        ``allowed``, among those ids), and whether there may be more."""
        Query, Occur = self.tantivy.Query, self.tantivy.Occur
        query = Query.boolean_query([(Occur.Should, Query.term_query(self.schema, "words", w)) for w in words])
        if allowed is not None:
            query = Query.boolean_query([(Occur.Must, query), (Occur.Must, Query.term_set_query(self.schema, "id", list(allowed)))])
        hits = searcher.search(query, depth).hits
        return [searcher.doc(address)["id"][0] for _, address in hits], len(hits) == depth


class TantivyIndex(TableIndex):
    """A ``LexicalIndex``: chunks written by id, searched by query text, scores BM25's (see the
    module docstring for how the two stores are kept in step)."""

    table_type = WordsTable
    max_batch_size = 100_000  # no limit of its own: the dense index's batch size governs

    def __init__(self, config: TantivyConfig):
        super().__init__(root=None)  # <state>/lexical once placed; in memory until then
        self.config = config
        self.tokenize = WordTokenizer(config)
        self._engines: dict[str, _Engine] = {}  # per collection, shared by views like the tables
        self._filters: dict[str, tuple[Any, set[str]]] = {}
        self._remake: set[str] = set()  # collections whose tantivy folder was of another schema

    # -- where ---------------------------------------------------------------------------------------
    def place(self, root: Path | None, collection: str) -> None:
        self.root = Path(root) if root is not None else None
        self.use_collection(collection)

    def for_collection(self, name: str) -> "TantivyIndex":
        other = TantivyIndex(self.config)
        other.root, other._tables, other._engines = self.root, self._tables, self._engines
        other.use_collection(name)
        return other

    def _engine(self, name: str | None = None) -> _Engine:
        name = name or self.collection_name
        if name not in self._engines:
            folder = self.folder(name)
            path = folder / ENGINE_FOLDER if folder is not None else None
            try:
                self._engines[name] = _Engine(path)
            except OtherSchema:
                # Derived data: the chunk table is the truth, so a writer makes it again from there.
                if not self._writing or path is None:
                    raise ConfigError(
                        f"the tantivy index of collection {name!r} was made by another version of rag-pipeline; "
                        "run `rag-pipeline ingest CONFIG` once to rebuild it from the stored chunks"
                    ) from None
                shutil.rmtree(path)
                self._engines[name] = _Engine(path)
                self._remake.add(name)
        return self._engines[name]

    def drop_collection(self, name: str) -> None:
        engine = self._engines.pop(name, None)
        if engine is not None:
            engine.release_writer()
        super().drop_collection(name)

    def _served_changed(self) -> None:
        super()._served_changed()
        self._filters.clear()

    def _reopen(self) -> None:
        """Another process committed: its tantivy commits are picked up by the next search (the
        table's version moved); nothing else is held."""

    def check(self) -> None:
        table = self._table()
        if table is not None and not self._writing and not table.in_step(self.config.words_key()):
            raise ConfigError(
                f"the lexical index of collection {self.collection_name!r} was last written by another lexical.type, "
                "or with another stemmer or stopword list; run `rag-pipeline ingest CONFIG` once to bring it up to date"
            )

    # -- writing ---------------------------------------------------------------------------------------
    def _session_starts(self) -> None:
        table = self._table(create=True)  # an ingest of an empty corpus still leaves an (empty) index
        self._engine()
        if self.collection_name in self._remake or not table.in_step(self.config.words_key()):
            self._convert(table)
            self._remake.discard(self.collection_name)

    def _convert(self, table: WordsTable) -> None:
        """Make every chunk's words and the statistics again, and the tantivy index from them: the
        table was written by another lexical type or with other words settings. Tantivy first, as
        for any write; a kill leaves the table still out of step, and the next writer converts."""
        logger.info("making the words of every chunk of %s again for lexical.type tantivy", self.collection_name)
        rows = table.rows("id, text")
        words = {chunk_id: w for (chunk_id, _), w in zip(rows, self._words([text for _, text in rows]))}
        engine = self._engine()
        engine.clear()
        for part in batches(list(words.items()), 10_000):
            engine.add([i for i, _ in part], [w for _, w in part], replace=False)
        table.rewrite_words(words, self.config.words_key())
        self._writes += 1

    def _words(self, texts: Sequence[str]) -> list[list[str]]:
        return [[w for w in words if w and len(w.encode("utf-8")) <= MAX_WORD_BYTES] for words in self.tokenize(texts)]

    def _session_ends(self, completed: bool) -> None:
        for engine in self._engines.values():
            engine.release_writer()

    def upsert_texts(self, chunks: Sequence[Document]) -> None:
        if not chunks:
            return
        table = self._table(create=True)
        if not table.in_step(self.config.words_key()):  # (a write outside a session)
            self._convert(table)
        words = self._words([c.page_content for c in chunks])
        held = dict(table.rows("id, words", [c.id for c in chunks]))
        # A chunk whose words tantivy holds already (its metadata changed, or a rerun) is not
        # written there again: each rewrite would leave a deleted document behind until a merge.
        changed = [(c.id, w) for c, w in zip(chunks, words) if held.get(c.id) != stored_words(w)]
        if changed:
            self._engine().add([i for i, _ in changed], [w for _, w in changed])
        table.write(chunks, words, self.config.words_key())
        self._writes += 1

    def _delete_rows(self, table: ChunkTable, ids: list[str]) -> None:
        assert isinstance(table, WordsTable)
        table.delete_words(ids, self.config.words_key())
        self._engine().delete(ids)

    def clear(self) -> None:
        table = self._table()
        if table is not None:
            assert isinstance(table, WordsTable)
            table.clear_words(self.config.words_key())
            self._engine().clear()
            self._writes += 1

    # -- search ----------------------------------------------------------------------------------------
    def search_batch_text(
        self, queries: Sequence[str], k: int, where: Any = None, *, with_text: bool = True
    ) -> list[list[Document]]:
        """Top-``k`` chunks per query by BM25 (Lucene's form), best first, ``metadata['score']``
        set; a chunk holding no word of the query is no hit. Ties are broken by id, descending,
        as trec_eval breaks them."""
        return self._search(queries, k, where, with_text)

    def _search_table(
        self, table: ChunkTable, queries: Sequence[str], k: int, where: Filter | None, with_text: bool
    ) -> list[list[Document]]:
        assert isinstance(table, WordsTable)
        engine = self._engine()
        searcher = engine.searcher(table.version())
        query_words = self.tokenize(queries)
        count, total, held = table.statistics(sorted({w for words in query_words for w in words}))
        average = total / count if count else 0.0
        allowed = self._allowed(table, where) if where is not None else None
        # (never more than the index holds: tantivy sizes its top-k heap by the depth asked)
        depth = min(max(self.config.candidates * k, k + 50), count + 50)
        hits: list[list[tuple[str, float]]] = []
        for words in query_words:
            words = [w for w in words if w in held]  # a word no live chunk holds scores nothing
            if not words or average == 0 or (allowed is not None and not allowed):
                hits.append([])
                continue
            hits.append(self._best(engine, searcher, table, words, k, depth, allowed, count, average, held))
        found = table.documents([i for row in hits for i, _ in row], with_text=with_text)
        return [[with_score(found[i], score) for i, score in row if i in found] for row in hits]

    def _best(
        self, engine: _Engine, searcher: Any, table: ChunkTable, words: list[str], k: int, depth: int,
        allowed: set[str] | None, count: int, average: float, held: dict[str, int],
    ) -> list[tuple[str, float]]:
        unique = sorted(set(words))
        small_filter = allowed is not None and len(allowed) <= MAX_FILTER_IDS
        while True:
            ids, more = engine.candidates(searcher, unique, depth, allowed if small_filter else None)
            if allowed is not None and not small_filter:
                ids = [i for i in ids if i in allowed]
            if len(ids) >= k + 50 or not more or depth > count:
                break
            depth *= 4  # a broad filter dropped most candidates: look deeper
        k1, b = self.config.k1, self.config.b
        idf = {w: math.log(1 + (count - held[w] + 0.5) / (held[w] + 0.5)) for w in unique}  # Lucene's, as bm25s
        scored = []
        # (a candidate SQLite does not hold, deleted or never committed there, is not read back)
        # (counting each query word as a whole word in the stored string (see stored_words) is
        # several times faster than splitting it into a Counter, and the same count)
        repeats = Counter(words)
        for chunk_id, chunk_words, length in table.rows("id, words, length", list(dict.fromkeys(ids))):
            norm = k1 * (1 - b + b * length / average)
            score = 0.0
            for word, times in repeats.items():
                tf = chunk_words.count(f" {word} ")
                if tf:
                    score += times * idf[word] * tf / (norm + tf)
            scored.append((score, chunk_id))
        scored.sort(reverse=True)
        return [(chunk_id, score) for score, chunk_id in scored[:k]]

    def _allowed(self, table: ChunkTable, where: Filter) -> set[str]:
        """The chunk ids ``where`` selects (the dense arm's meaning), kept while the table is unchanged."""
        key = json.dumps(where, sort_keys=True, default=str)
        version = table.version()
        cached = self._filters.get(key)
        if cached is None or cached[0] != version:
            cached = self._filters[key] = (version, table.ids(where))
        return cached[1]
