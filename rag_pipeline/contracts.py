"""What each kind of stage promises the code that composes it: small structural ``Protocol``s.

Sync (``indexing``), evaluation and the retriever (``retrieval``) talk to these, never to a
concrete class, so a FAISS index, a BM25 index, an ONNX embedder or a remote Chroma is a new stage
module, not a patch across the house. The protocols are structural: a stage needs no base class
(the built-in indexes share one, :mod:`rag_pipeline.index_storage`, as a convenience, not a
requirement). ``tests/test_contracts.py`` checks that the built-in stages satisfy them, and
``tests/vectorstores/test_conformance.py`` that every index behaves as its protocol says.

Vectors are ``numpy`` float32 arrays, one row per text. A search returns, per query, LangChain
``Document``s best first, with ``id`` set and the similarity (higher is better) in
``metadata["score"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from langchain_core.documents import Document

@dataclass(frozen=True)
class FileError:
    """A source that could not be read (or part of one, e.g. a JSONL line), with the reason.
    Loaders return these as values: one bad file never stops an ingest."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class UnreadableFile(Exception):
    """A file as a whole cannot be read; ``str(exc)`` is the reason shown to the user."""


class FileNotRead(UnreadableFile):
    """The file could not be read at all (permission denied, an I/O error, gone meanwhile): unlike
    a file read and found empty or not text, this says nothing about what it holds."""


def with_score(document: Document, score: float) -> Document:
    """A search hit as every index returns it: a copy of the chunk with ``metadata['score']``."""
    return Document(page_content=document.page_content, metadata={**document.metadata, "score": score}, id=document.id)


Filter = Mapping[str, Any]
"""A metadata filter in Chroma's ``where`` syntax (``{"file_type": "pdf"}``, ``{"$and": [...]}``)."""


@runtime_checkable
class Loader(Protocol):
    """Finds the source files and reads them into Documents (per-file failures are values)."""

    config: Any

    def discover(self) -> list[Path]: ...

    def source_id(self, file: Path) -> str: ...

    def may_read(self, file: Path) -> bool:
        """Whether the loader would open ``file`` (ingest hashes nothing else)."""
        ...

    def load(self, files: list[Path] | None = None, show_progress: bool | None = None) -> Any: ...

    def iter_file(self, file: Path, warnings: list[str]) -> Iterator[Document]:
        """One file's documents, one at a time (ingest reads big files without holding them);
        recoverable problems are appended to ``warnings``; ``UnreadableFile`` for the whole file."""
        ...

    def report(self, error: FileError, errors: list[FileError]) -> None:
        """Record a per-file error (or raise ``LoaderError`` with ``on_error: fail``)."""
        ...

    # Set by ``discover()``: folders that could not be listed (their files are kept, never
    # deleted), files selected that no reader handles, and errors met while listing.
    unlisted: list[FileError]
    unsupported: list[str]
    discovery_errors: list[FileError]


@runtime_checkable
class Chunker(Protocol):
    """Splits Documents into the passages that get embedded, with deterministic ids."""

    def split_documents(self, documents: Iterable[Document]) -> list[Document]: ...


@runtime_checkable
class Embedder(Protocol):
    """A bi-encoder. Queries get the model's query instruction; passages are embedded as they are."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...

    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    @property
    def max_seq_length(self) -> int: ...

    def fingerprint(self, *, load_model: bool = True) -> dict[str, Any]:
        """What makes two indexes' vectors comparable (stored with a collection)."""
        ...

    def cache_identity(self) -> dict[str, Any]:
        """What decides a passage's vector (the embedding cache key)."""
        ...

    def warm_up(self) -> None: ...


@runtime_checkable
class Generations(Protocol):
    """What the dense and the lexical index share: each serves one physical collection at a time
    (``vectorstore.collection`` is served by ``name``, ``name.v2``, ... after each ``reindex``).
    The index object that owns them sets ``resolve_collection`` (the active collection per the
    record) and ``change_token`` (changes when another process commits), and the index follows
    both before each read."""

    resolve_collection: Callable[[], str] | None
    change_token: Callable[[], Any] | None

    @property
    def collection_name(self) -> str: ...

    def use_collection(self, name: str) -> None: ...

    def drop_collection(self, name: str) -> None: ...


@runtime_checkable
class VectorIndex(Generations, Protocol):
    """A dense index of chunks: write by id, read by id, search by vector."""

    config: Any

    @property
    def local_directory(self) -> Path | None:
        """The folder on this machine that holds it (None: in memory, or on a server)."""
        ...

    @property
    def location(self) -> str | None:
        """Where it lives, for messages and the index's identity: a folder or a server's address
        (None: in memory)."""
        ...

    def index_exists(self) -> bool:
        """Whether anything was ever written where the config points (asked without creating it)."""
        ...

    def exists_named(self, name: str) -> bool: ...

    def collection_names(self) -> set[str]:
        """Every physical collection the storage holds (generations included)."""
        ...

    def documents_in(self, collection: str, ids: Sequence[str]) -> list[Document]:
        """Stored chunks of another physical collection (``reindex`` copies documents from code)."""
        ...

    def stored_fingerprint(self) -> dict[str, Any] | None:
        """The embedding setup the collection was built with (None: not built yet)."""
        ...

    @property
    def max_batch_size(self) -> int: ...

    def exists(self) -> bool: ...

    def check(self) -> None:
        """Open the index now; raise ``IndexMismatchError`` when it was built with another setup."""
        ...

    def writing(self) -> ContextManager[None]:
        """Held around a write session (under the write lock): the index's view stays this
        process's own; readers refresh theirs when another process has written."""
        ...

    def clear(self) -> None:
        """Drop everything the index holds (derived data only: evaluation collections)."""
        ...

    def count(self) -> int: ...

    def content_version(self) -> Any:
        """Something that changes whenever the served collection's chunks may have changed (this
        process's writes, another process's commit, a switch of collection), cheap to ask before
        every query: what a reader that keeps a copy (exact search) compares to know it is current."""
        ...

    def ids(self, where: Filter | None = None) -> set[str]: ...

    def existing_ids(self, ids: Sequence[str]) -> set[str]: ...

    def upsert(self, chunks: Sequence[Document], vectors: np.ndarray) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def documents(self, ids: Sequence[str]) -> list[Document]:
        """The stored chunks (text and metadata), in ``ids`` order."""
        ...

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors, in ``ids`` order."""
        ...

    def similarity(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Scores of every (query, vector) pair exactly as ``search_batch`` reports them."""
        ...

    def search_batch(
        self, queries: np.ndarray, k: int, where: Filter | None = None, *, with_text: bool = True
    ) -> list[list[Document]]: ...


@runtime_checkable
class LexicalIndex(Generations, Protocol):
    """A sparse / lexical index (BM25, BGE-M3 sparse) with the write side of a ``VectorIndex``:
    it is told the chunks' texts instead of vectors and searched by query text. Scores are the
    index's own (higher is better; a chunk that matches nothing is not a hit)."""

    @property
    def max_batch_size(self) -> int: ...

    def exists(self) -> bool: ...

    def writing(self) -> ContextManager[None]:
        """Held around a write session (under the write lock); derived structures are brought up
        to date when it ends."""
        ...

    def clear(self) -> None: ...

    root: Path | None  # where its collections live (``<state>/lexical``), None in memory

    def place(self, root: Path | None, collection: str) -> None:
        """Keep the index under ``root`` (None: in memory) and serve ``collection``."""
        ...

    def for_collection(self, name: str) -> "LexicalIndex":
        """The same index type and storage, serving another physical collection (``reindex``)."""
        ...

    def count(self) -> int: ...

    def upsert_texts(self, chunks: Sequence[Document]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def ids(self, where: Filter | None = None) -> set[str]: ...

    def existing_ids(self, ids: Sequence[str]) -> set[str]: ...

    def documents(self, ids: Sequence[str]) -> list[Document]:
        """The stored chunks (text and metadata), in ``ids`` order."""
        ...

    def search_batch_text(
        self, queries: Sequence[str], k: int, where: Filter | None = None, *, with_text: bool = True
    ) -> list[list[Document]]: ...


@runtime_checkable
class Reranker(Protocol):
    """A cross-encoder: a relevance score per (query, passage) pair, higher is better."""

    top_n: int | None

    def score(self, query: str, passages: Sequence[str]) -> list[float]: ...

    def rank(self, query: str, documents: Sequence[Document]) -> list[Document]:
        """All ``documents`` best first, each with ``metadata['rerank_score']``."""
        ...

    def warm_up(self) -> None: ...

