"""Documents added from code: written into the same sinks and record as ingest's files, in the same
crash-safe order (see :mod:`rag_pipeline.indexing.sync`), under the same write lock.

Two ways in, both recorded as ``api`` sources (``FileRecord.origin``) that a folder sync keeps:

* ``add_source`` (``Pipeline.add_documents(docs, source=...)``): the documents are the whole of a
  source, chunked by the configured chunker. Adding the same documents again writes nothing;
  adding others replaces the source's chunks, as a changed file's are replaced.
* ``upsert_entries`` (the LangChain vector store): each document is one entry, stored as given under
  its id; the same id again overwrites it.

The writing itself, in ingest's crash-safe order, is the :class:`~.session.WriteSession`'s; this
module decides only what documents from code may change (never a folder file's source, never
an id another source owns).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Mapping, Sequence

from langchain_core.documents import Document

from ..chunkers.base import chunk_id
from ..errors import DocumentError
from .record import API, FileRecord
from .report import IngestReport
from .session import WriteSession

# Where a vector-store entry without a ``source`` in its metadata is recorded.
DEFAULT_API_SOURCE = "vectorstore"


def check_text(value: Any, what: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DocumentError(
                f"{what} is not valid text: {value[max(exc.start - 10, 0):exc.start]!r} is followed by a lone "
                f"surrogate {value[exc.start]!r} at position {exc.start}; decode the source with errors='replace'"
            ) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_text(key, f"{what} key")
            check_text(item, f"{what}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_text(item, what)


def check_documents(documents: Sequence[Document], source: str | None = None) -> None:
    """Refuse, naming the field, text that cannot be stored: a lone surrogate (what a bad decode
    or a JSON ``\\ud800`` escape leaves) in a document's content, id, metadata or source."""
    if source is not None:
        check_text(source, "source")
    for number, document in enumerate(documents):
        check_text(document.page_content, f"document {number}: content")
        check_text(document.id, f"document {number}: id")
        check_text(document.metadata, f"document {number}: metadata")


def chunk_source(chunker: Any, source: str, documents: Sequence[Document]) -> list[Document]:
    """Chunks of a source's documents. A document's ``doc_id`` is its id, its own
    ``metadata['doc_id']``, or the source (``source#n`` for the n-th after the first, so that
    appending a document keeps the others' chunk ids). Chunk ids are scoped by the source: a
    ``doc_id`` that is the source's own (the source, or ``source#...`` as the loader makes them)
    keeps the id the chunker gave; any other (a caller's id, or a folder file's ``doc_id`` copied
    into metadata) is prefixed with the source, so two sources never write the same chunk."""
    prepared = []
    for number, document in enumerate(documents):
        doc_id = document.id or document.metadata.get("doc_id") or (f"{source}#{number}" if number else source)
        metadata = {**document.metadata, "source": source, "doc_id": doc_id}
        prepared.append(Document(page_content=document.page_content, metadata=metadata))
    chunks = chunker.split_documents(prepared)
    for position, chunk in enumerate(chunks):
        doc_id = str(chunk.metadata.get("doc_id") or "")
        if doc_id != source and not doc_id.startswith(f"{source}#"):
            scoped = chunk_id(f"{source}\x1e{doc_id}", chunk.metadata.get("chunk_index", 0), chunk.page_content)
            chunks[position] = Document(page_content=chunk.page_content, metadata={**chunk.metadata, "chunk_id": scoped}, id=scoped)
    return chunks


def documents_digest(documents: Sequence[Document]) -> str:
    """What decides whether adding a source again changes anything: texts, metadata and ids."""
    digest = hashlib.sha256()
    for document in documents:
        payload = [document.id, document.page_content, document.metadata]
        digest.update(json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


class DocumentWriter:
    """What documents from code may change, decided over one :class:`~.session.WriteSession`."""

    def __init__(self, session: WriteSession):
        self.session = session
        self.record = session.record
        self.collection = session.collection
        self.settings = session.settings

    def _held_by_folder(self, sources: set[str]) -> list[str]:
        files = self.record.files(self.collection)
        return sorted(s for s in sources if s in files and not files[s].from_code)

    # -- sources (Pipeline.add_documents) ----------------------------------------------------------
    def add_source(self, source: str, documents: Sequence[Document], chunks: Sequence[Document]) -> IngestReport:
        """Make ``source`` hold exactly ``chunks`` (cut from ``documents``)."""
        report = IngestReport(collection=self.collection, files_seen=1, documents=len(documents))
        if self._held_by_folder({source}):
            raise DocumentError(
                f"source {source!r} is a file under loader.path that ingest keeps in step; "
                "give your documents another source name"
            )
        if not chunks:
            raise DocumentError(f"the documents given for source {source!r} hold no text; nothing was added")
        digest = documents_digest(documents)
        previous = self.record.files(self.collection).get(source)
        report.chunks = len(chunks)
        if previous is not None and previous.sha256 == digest and previous.settings == self.settings:
            report.files_unchanged, report.skipped = 1, previous.chunks
            return report
        ids = list(dict.fromkeys(c.id for c in chunks))
        self.session.check_owner(source, ids)
        self.session.write(chunks, report)
        size = sum(len(d.page_content.encode("utf-8")) for d in documents)
        file = FileRecord(source, size, 0, digest, self.settings, len(chunks), origin=API)
        self.session.commit([file], {source: ids}, report)
        report.files_loaded = 1
        report.files_added, report.files_updated = (1, 0) if previous is None else (0, 1)
        return report

    def delete_sources(self, sources: Sequence[str]) -> int:
        """Remove sources added from code; returns how many chunks left the index. A source whose
        earlier removal failed part-way is finished."""
        files = self.record.files(self.collection)
        finished = {s: n for s, n in self.session.finished_removals.items() if s in sources and s not in files}
        unknown = [s for s in sources if s not in files and s not in finished]
        if unknown:
            raise DocumentError(
                f"no source {unknown[0]!r} in collection {self.collection!r}; `rag-pipeline ls CONFIG` lists them"
            )
        folder = self._held_by_folder(set(sources))
        if folder:
            raise DocumentError(
                f"source {folder[0]!r} is a file under loader.path: delete or exclude the file, then run ingest"
            )
        return self.session.remove_sources([s for s in sources if s in files]) + sum(finished.values())

    # -- entries (the LangChain vector store) ------------------------------------------------------
    def upsert_entries(self, documents: Sequence[Document]) -> None:
        """Store each document (with its id) as one chunk, recorded under its metadata's ``source``."""
        check_documents(documents)
        by_source: dict[str, list[str]] = {}
        for document in documents:
            source = document.metadata.get("source")
            by_source.setdefault(source if isinstance(source, str) and source else DEFAULT_API_SOURCE, []).append(
                document.id
            )
        ids = [d.id for d in documents]
        folder = self._held_by_folder(set(by_source) | self.record.chunk_sources(self.collection, ids))
        if folder:
            raise DocumentError(
                f"source {folder[0]!r} is a file under loader.path that ingest keeps in step; documents from code "
                "cannot be written into it (give them another metadata['source'] or other ids)"
            )
        for source, source_ids in by_source.items():
            self.session.check_owner(source, source_ids)
        self.session.write(documents, IngestReport(collection=self.collection))
        self.session.commit_entries(by_source)

    def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete entries by id (missing ids are no error); returns how many the record listed."""
        owners = self.record.chunk_sources(self.collection, ids)
        folder = self._held_by_folder(owners)
        if folder:
            raise DocumentError(
                f"an id given belongs to {folder[0]!r}, a file under loader.path: delete or exclude the file, "
                "then run ingest"
            )
        recorded = self.record.chunk_ids(self.collection, owners) & set(ids)
        self.session.remove_chunks(list(ids))
        return len(recorded)


def copy_sources_from_code(index: Any, old: str, session: WriteSession, report: IngestReport) -> None:
    """``reindex``: the chunks added from code cannot be read from the folder again, so their stored
    texts and metadata are re-embedded into the new collection (as they were cut, not re-chunked)."""
    record = session.record
    for source, file in record.files(old).items():
        if not file.from_code:
            continue
        chunks = index.documents_in(old, sorted(record.chunk_ids(old, [source])))
        ids = [c.id for c in chunks]
        if not ids:
            continue
        session.write(chunks, report)
        session.commit([replace(file, chunks=len(ids))], {source: ids}, report)
        report.chunks += len(ids)
