"""Documents added from code: written into the same sinks and record as ingest's files, in the same
crash-safe order (see :mod:`rag_pipeline.indexing.sync`), under the same write lock.

Two ways in, both recorded as ``api`` sources (``FileRecord.origin``) that a folder sync keeps:

* ``add_source`` (``Pipeline.add_documents(docs, source=...)``): the documents are the whole of a
  source, chunked by the configured chunker. Adding the same documents again writes nothing;
  adding others replaces the source's chunks, as a changed file's are replaced.
* ``upsert_entries`` (the LangChain vector store): each document is one entry, stored as given under
  its id; the same id again overwrites it.

Order, as for a file: mark the collection dirty, write every sink, record, then delete what the
record no longer lists. A kill at any point leaves chunks that the record does not list (removed by
the next ingest's sweep) or a record that lists only chunks the sinks hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Sequence

from langchain_core.documents import Document

from ..errors import DocumentError
from .faults import crash_point
from .record import API, FileRecord, IndexRecord
from .report import IngestReport
from .sinks import Sink

# Where a vector-store entry without a ``source`` in its metadata is recorded.
DEFAULT_API_SOURCE = "vectorstore"


def documents_digest(documents: Sequence[Document]) -> str:
    """What decides whether adding a source again changes anything: texts, metadata and ids."""
    digest = hashlib.sha256()
    for document in documents:
        payload = [document.id, document.page_content, document.metadata]
        digest.update(json.dumps(payload, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


class DocumentWriter:
    """One write session on one collection (held under the index's write lock)."""

    def __init__(self, *, sinks: Sequence[Sink], record: IndexRecord, collection: str, settings: str):
        self.sinks = list(sinks)
        self.record = record
        self.collection = collection
        self.settings = settings
        self._was_dirty = record.is_dirty(collection)
        self._writing = False

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # A mark set by an interrupted ingest stays for the next ingest to reconcile; ours is
        # cleared only when every step finished.
        if self._writing and exc_type is None and not self._was_dirty:
            self.record.set_dirty(self.collection, False)

    def _begin_writes(self) -> None:
        if not self._writing:
            self.record.set_dirty(self.collection, True)
            self._writing = True

    def _write(self, chunks: Sequence[Document], report: IngestReport) -> None:
        unique = list({c.id: c for c in chunks}.values())
        batch = min(sink.max_batch_size for sink in self.sinks)
        self._begin_writes()
        for start in range(0, len(unique), batch):
            for sink in self.sinks:
                sink.write(unique[start : start + batch], report)

    def _delete(self, ids: set[str]) -> None:
        for sink in self.sinks:
            if sink.exists():
                sink.delete(sorted(ids))

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
        ids = [c.id for c in chunks]
        self._write(chunks, report)
        old = self.record.chunk_ids(self.collection, [source])
        size = sum(len(d.page_content.encode("utf-8")) for d in documents)
        file = FileRecord(source, size, 0, digest, self.settings, len(chunks), origin=API)
        self.record.commit_files(self.collection, [file], {source: ids}, replace=True)
        crash_point("recorded")
        stale = old - set(ids)
        if stale:
            self._delete(stale)
            report.deleted = len(stale)
        report.files_loaded = 1
        report.files_added, report.files_updated = (1, 0) if previous is None else (0, 1)
        return report

    def delete_sources(self, sources: Sequence[str]) -> int:
        """Remove sources added from code; returns how many chunks left the index."""
        files = self.record.files(self.collection)
        unknown = [s for s in sources if s not in files]
        if unknown:
            raise DocumentError(
                f"no source {unknown[0]!r} in collection {self.collection!r}; `rag-pipeline ls CONFIG` lists them"
            )
        folder = self._held_by_folder(set(sources))
        if folder:
            raise DocumentError(
                f"source {folder[0]!r} is a file under loader.path: delete or exclude the file, then run ingest"
            )
        ids = self.record.chunk_ids(self.collection, sources)
        self._begin_writes()
        self.record.remove_sources(self.collection, sources)  # record first, then the sinks
        crash_point("removing")
        self._delete(ids)
        return len(ids)

    # -- entries (the LangChain vector store) ------------------------------------------------------
    def upsert_entries(self, documents: Sequence[Document]) -> None:
        """Store each document (with its id) as one chunk, recorded under its metadata's ``source``."""
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
        report = IngestReport(collection=self.collection)
        self._write(documents, report)
        self.record.put_api_chunks(self.collection, by_source, self.settings)

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
        self._begin_writes()
        self.record.remove_chunks(self.collection, ids)
        crash_point("removing")
        self._delete(set(ids))
        return len(recorded)


def copy_sources_from_code(
    record: IndexRecord, index: Any, old: str, new: str, sinks: Sequence[Sink], report: IngestReport
) -> None:
    """``reindex``: the chunks added from code cannot be read from the folder again, so their stored
    texts and metadata are re-embedded into the new collection (as they were cut, not re-chunked)."""
    for source, file in record.files(old).items():
        if not file.from_code:
            continue
        chunks = index.documents_in(old, sorted(record.chunk_ids(old, [source])))
        ids = [c.id for c in chunks]
        if not ids:
            continue
        batch = min(sink.max_batch_size for sink in sinks)
        for start in range(0, len(chunks), batch):
            for sink in sinks:
                sink.write(chunks[start : start + batch], report)
        record.commit_files(new, [replace(file, chunks=len(ids))], {source: ids}, replace=True)
        report.chunks += len(ids)
