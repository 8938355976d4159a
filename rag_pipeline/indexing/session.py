"""The one write path: every change to an index (ingest, reindex, documents from code, the
LangChain vector store, evaluation collections) goes through a :class:`WriteSession`.

A session is opened by ``Index.writing()`` under the index's write lock, on the active collection,
with the sinks the config asks for (dense, and lexical with ``lexical:``). It keeps the order that
makes a kill at any instant harmless:

1. before the first write, mark the collection dirty in the record;
2. write chunks into every sink (upsert by id);
3. commit a source: its chunk ids into the record, in one transaction;
4. delete from the sinks what the record no longer lists (a changed source's old chunks).

Removing a source runs the other way round: the record forgets it and lists its chunks as pending
deletion in one transaction, then every sink deletes them, then the deletion is confirmed. A sink
that fails (a Chroma server gone away) leaves them pending; the next session retries them first,
and deleting the same source again finishes the job. The mark is cleared when the session ends
cleanly; a dirty collection is reconciled by the next ingest.

Ownership: a chunk id has one source. Writing an id that the record lists under another source is
refused before anything reaches a sink (:class:`OwnershipError`), so deleting one source can never
remove what another records.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

from langchain_core.documents import Document
from tqdm.auto import tqdm

from ..errors import RagPipelineError
from .faults import crash_point
from .record import FileRecord, IndexRecord
from .report import IngestReport
from .sinks import Sink

logger = logging.getLogger(__name__)


class OwnershipError(RagPipelineError):
    """A write would give a chunk id that one source records to another source."""

    def __init__(self, source: str, taken: Mapping[str, str]):
        chunk, owner = next(iter(taken.items()))
        self.source, self.taken = source, dict(taken)
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        super().__init__(
            f"chunk {chunk!r}{more} of source {source!r} is already indexed under source {owner!r}; "
            "give the documents other ids, or delete them from that source first"
        )


class WriteSession:
    """Writes to one physical collection and its record (held under the index's write lock).

    ``record=None``: an unrecorded collection (evaluation), where only the sinks are written.
    """

    def __init__(self, *, sinks: Sequence[Sink], record: IndexRecord | None, collection: str, settings: str = ""):
        if not sinks:
            raise ValueError("a write session needs at least one sink")
        self.sinks = list(sinks)
        self.record = record
        self.collection = collection
        self.settings = settings
        self.was_dirty = record is not None and record.is_dirty(collection)
        self._marked = False
        # chunks of an earlier removal that failed part-way, finished when this session opened, by source
        self.finished_removals: dict[str, int] = {}
        if record is not None:
            self._retry_pending()

    @property
    def max_batch_size(self) -> int:
        return min(sink.max_batch_size for sink in self.sinks)

    def close(self, *, completed: bool) -> None:
        """Clear the dirty mark this session set, once every step finished (a mark left by an
        interrupted ingest stays for the next ingest to reconcile)."""
        if self._marked and completed and not self.was_dirty and self.record is not None:
            self.record.set_dirty(self.collection, False)

    def mark_dirty(self) -> None:
        if not self._marked and self.record is not None:
            self.record.set_dirty(self.collection, True)
            self._marked = True

    # -- writing -----------------------------------------------------------------------------------
    def check_owner(self, source: str, ids: Iterable[str]) -> None:
        """Refuse ids that another source records (see :class:`OwnershipError`)."""
        if self.record is None:
            return
        taken = {i: owner for i, owner in self.record.chunk_owners(self.collection, ids).items() if owner != source}
        if taken:
            raise OwnershipError(source, taken)

    def write(self, chunks: Sequence[Document], report: IngestReport) -> list[Document]:
        """Upsert ``chunks`` (each id once) into every sink, in batches; returns them de-duplicated."""
        unique = list({c.id: c for c in chunks}.values())
        if not unique:
            return unique
        self.mark_dirty()
        batch = self.max_batch_size
        for start in range(0, len(unique), batch):
            part = unique[start : start + batch]
            for sink in self.sinks:
                sink.write(part, report)
        return unique

    def keep_only(self, wanted: set[str]) -> int:
        """Delete from every sink the chunks not in ``wanted``: what the record does not list
        (ingest's sweep after a crash), or what an unrecorded collection's corpus no longer holds
        (another subset, another chunker setting); how many deletions."""
        removed = 0
        for sink in self.sinks:
            stale = sorted(sink.ids() - wanted) if sink.exists() else []
            if stale:
                self.mark_dirty()
                sink.delete(stale)
                removed += len(stale)
                logger.info("removed %d chunks that are not wanted any more from the %s index", len(stale), sink.name)
        return removed

    def write_missing(self, chunks: Sequence[Document], report: IngestReport, *, show_progress: bool = False) -> int:
        """Write the chunks some sink does not hold yet (each sink only what it lacks): the
        primitive for unrecorded collections, where a chunk id fixes its text and metadata.
        Returns how many chunk writes it made, over all sinks."""
        written = 0
        unique = list({c.id: c for c in chunks}.values())
        ids = [c.id for c in unique]
        for sink in self.sinks:
            held = sink.existing_ids(ids) if sink.exists() else set()
            missing = [c for c in unique if c.id not in held]
            if sink is self.sinks[0]:
                report.skipped += len(unique) - len(missing)
            if not missing:
                continue
            written += len(missing)
            self.mark_dirty()
            # Longest first across the whole set: the model pads each batch to its longest text.
            missing.sort(key=lambda chunk: len(chunk.page_content), reverse=True)
            batch = sink.max_batch_size
            with tqdm(total=len(missing), desc=f"Indexing ({sink.name})", unit="chunk", disable=not show_progress) as bar:
                for start in range(0, len(missing), batch):
                    sink.write(missing[start : start + batch], report)
                    bar.update(len(missing[start : start + batch]))
        return written

    def commit(
        self, files: Sequence[FileRecord], chunk_ids: Mapping[str, Sequence[str]], report: IngestReport,
        *, replace: bool = True,
    ) -> int:
        """Record ``files`` with their chunk ids (written already) in one transaction, then delete
        from the sinks the chunks those sources held before and hold no more; how many."""
        assert self.record is not None, "an unrecorded collection has nothing to commit"
        self.mark_dirty()
        sources = [f.source for f in files]
        old = self.record.chunk_ids(self.collection, sources) if replace and sources else set()
        self.record.commit_files(self.collection, list(files), {s: list(i) for s, i in chunk_ids.items()}, replace=replace)
        crash_point("recorded")
        stale = old.difference(*(chunk_ids.get(s, ()) for s in sources))
        if stale:
            self.delete_unrecorded(stale)
            report.deleted += len(stale)
        return len(stale)

    def commit_entries(self, by_source: Mapping[str, Sequence[str]]) -> None:
        """Record chunks written one by one from code (vector-store entries) under their sources."""
        assert self.record is not None
        self.mark_dirty()
        self.record.put_api_chunks(self.collection, {s: list(i) for s, i in by_source.items()}, self.settings)

    # -- removing ----------------------------------------------------------------------------------
    def remove_sources(self, sources: Sequence[str]) -> int:
        """Forget ``sources`` (record first, their chunks pending), then delete their chunks from
        every sink; how many chunks they held (those of an earlier failed removal included)."""
        assert self.record is not None
        self.mark_dirty()
        ids = self.record.forget_sources_pending(self.collection, list(sources))
        crash_point("removing")
        self._delete_pending(ids)
        return len(ids)

    def remove_chunks(self, ids: Sequence[str]) -> None:
        """Forget chunks by id (their sources recounted), then delete them from every sink."""
        assert self.record is not None
        self.mark_dirty()
        self.record.forget_chunks_pending(self.collection, ids)
        crash_point("removing")
        self._delete_pending(set(ids))

    def delete_unrecorded(self, ids: Iterable[str]) -> None:
        """Delete from every sink chunks the record does not list (old versions, orphans of a
        failed file): nothing is pending, a later sweep finds any that remain."""
        ids = sorted(ids)
        if not ids:
            return
        self.mark_dirty()
        for sink in self.sinks:
            if sink.exists():
                sink.delete(ids)

    def _delete_pending(self, ids: set[str]) -> None:
        """Delete from every sink, each tried even when another fails, then confirm."""
        if not ids:
            return
        ordered, failure = sorted(ids), None
        for sink in self.sinks:
            try:
                if sink.exists():
                    sink.delete(ordered)
            except Exception as exc:  # the other sinks still drop the text; the first failure is raised
                logger.warning("deleting %d chunks from the %s index failed: %s", len(ordered), sink.name, exc)
                failure = failure or exc
        if failure is not None:
            raise failure
        self.record.confirm_deleted(self.collection, ordered)

    def _retry_pending(self) -> None:
        pending = self.record.pending_owners(self.collection)
        if pending:
            logger.warning("removing %d chunks whose earlier deletion did not finish", len(pending))
            self.mark_dirty()
            self._delete_pending(set(pending))
            for source in pending.values():
                self.finished_removals[source] = self.finished_removals.get(source, 0) + 1
