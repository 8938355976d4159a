"""Incremental, crash-safe ingest: decide per file what changed, then write it in an order that a
kill at any instant cannot spoil.

Deciding (``plan_sync``, also what ``ingest --dry-run`` prints): a file whose size, mtime, inode
and ctime match its record is unchanged and is not opened. One whose stat changed is hashed; same
sha256, still unchanged (its new stat is remembered). A file whose record was made under other
reader or chunker settings is re-chunked. Files in the record that the loader no longer finds are
removed (``cleanup: full``) or kept. Sources added from code (origin ``api``, see
:mod:`rag_pipeline.indexing.documents`) are not the folder's: kept unless ``prune_api``.

Writing (``Indexer``): files are read one document at a time (here, or by Ray workers and replayed
here: :mod:`rag_pipeline.indexing.sources`) and their chunks written in bounded batches as they
come (``vectorstore.write_batch_size``), always in this order:

1. read a document and chunk it; its chunks join the write buffer;
2. per full batch: embed through the on-disk embedding cache (committed before the vectors go
   anywhere else) and upsert into Chroma. Every chunk of a file being indexed is upserted, also
   one whose id the collection holds, so that changed metadata reaches the index; its vector
   comes from the cache;
3. once a file has been read to the end and all its chunks are written: commit it (stat, hash,
   chunk ids) to the record, with the other files done by then, in one SQLite transaction;
4. delete the old chunks of the committed files that changed from Chroma.

A file that fails part-way has the chunks it wrote this run and the record does not list deleted
again, and keeps its recorded ones. A file that now gives no text at all leaves the index (and is
reported); one that cannot be read (permission, I/O error) keeps its chunks.

Deleted files leave the record first, then Chroma. Before its first write an ingest marks the
collection dirty in the record, and clears the mark when it is done. So after a kill the record
never lists a chunk Chroma lacks, and whatever Chroma holds that the record does not list (chunks
upserted before the kill, old chunks not yet deleted) is removed by the next ingest, which sees the
mark (or a chunk count that differs from the record's) and reconciles. Chunk ids are
content-derived, so redoing any step writes the same ids, and the embedding cache means nothing
already embedded is embedded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from langchain_core.documents import Document
from tqdm.auto import tqdm

from ..contracts import FileError, FileNotRead, UnreadableFile
from .session import WriteSession
from .faults import crash_point
from .sources import ChunkSource, FileReading
from .record import FileRecord, IndexRecord
from .report import FileChange, IngestReport, SyncPlan

logger = logging.getLogger(__name__)

# Bump when a reader or chunker changes what chunks a file gives: every file is then re-chunked
# (unchanged chunks keep their ids and are not embedded again).
SETTINGS_VERSION = 3  # 2: unsafe metadata keys renamed, JSONL split on "\n" only; 3: folder, top_folder
# Loader keys that choose which files are read, not what a file's chunks are.
_FILE_SELECTION_KEYS = {
    "path", "include", "exclude", "max_file_size", "on_error", "show_progress",
    "follow_external_links", "pdf_max_pages", "pdf_max_seconds",  # whether a file is read, not what it gives
}
# A file modified this close to when its record was written may have changed within the
# filesystem's timestamp granularity without its mtime moving ("racy git"): it is hashed.
RACY_WINDOW_NS = 2_000_000_000
CLEANUP_MODES = ("full", "incremental", "none")
CONFLICT_REASON = (
    "not indexed: documents added from code hold this source name; delete them "
    "(rag-pipeline delete CONFIG --source SOURCE) or rename the file"
)


def ingest_settings(loader_config: Any, chunker_config: Any, model: dict[str, Any] | None = None) -> str:
    """A short hash of every setting that shapes a file's chunks and their vectors (reader options,
    chunker, and ``model``: the embedding settings that change where a chunk is cut)."""
    reader = {k: v for k, v in loader_config.model_dump(mode="json").items() if k not in _FILE_SELECTION_KEYS}
    data = {"version": SETTINGS_VERSION, "reader": reader, "chunker": chunker_config.model_dump(mode="json")}
    if model:
        data["model"] = model
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hashable(st, max_file_size: int | None) -> bool:
    """Only regular files within the size limit are read to hash (never a FIFO or a device)."""
    return stat.S_ISREG(st.st_mode) and (max_file_size is None or st.st_size <= max_file_size)


def plan_sync(
    loader: Any, record: IndexRecord | None, collection: str, settings: str, cleanup: str, prune_api: bool = False
) -> SyncPlan:
    """What an ingest would do. Reads the record and the files' stat (and, where the stat changed,
    their bytes to hash); writes nothing.

    Sources added from code are not the folder's to decide: they are kept, unless ``prune_api``
    (``ingest --prune-api``) asks for the index to mirror the folder alone. A file whose source
    names one of them is not indexed over it (``plan.conflicts``)."""
    plan = SyncPlan(collection=collection, cleanup=cleanup)
    recorded = record.files(collection) if record is not None else {}
    plan.indexed_chunks = sum(entry.chunks for entry in recorded.values())  # from code included: all the index holds
    from_code = {source: file for source, file in recorded.items() if file.from_code}
    recorded = {source: file for source, file in recorded.items() if source not in from_code}
    plan.interrupted = record is not None and record.is_dirty(collection)
    max_file_size = getattr(loader.config, "max_file_size", None)
    seen: set[str] = set()
    for path in loader.discover():
        source = loader.source_id(path)
        if source in from_code:
            plan.conflicts.append(source)
            continue
        seen.add(source)
        previous = recorded.get(source)
        if previous is None:
            plan.added.append(source)
            plan.todo.append(FileChange(path, source))
            continue
        # (a file the loader would not open, a link out of the corpus, is never hashed: it is
        # "changed", and reading it reports why and drops what it held)
        if previous.settings == settings and loader.may_read(path) and _unchanged(path, previous, max_file_size, plan):
            plan.unchanged.append(source)
            plan.unchanged_chunks += previous.chunks
            continue
        plan.updated.append(source)
        plan.todo.append(FileChange(path, source, previous))
    # Never delete what could not be seen: files under a folder the loader could not list are kept.
    unlisted = [e.source.rstrip("/") + "/" for e in loader.unlisted]
    for source in sorted(set(recorded) - seen):
        if cleanup == "full" and not any(source.startswith(folder) for folder in unlisted):
            plan.removed.append(source)
            plan.removed_chunks += recorded[source].chunks
        else:
            plan.kept.append(source)
    plan.unsupported = list(loader.unsupported)
    for source in sorted(from_code):
        if prune_api:
            plan.removed.append(source)
            plan.removed_chunks += from_code[source].chunks
        else:
            plan.from_code.append(source)
    return plan


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What must all match for a file to be trusted unread. Size and mtime alone miss a file
    replaced by another of the same size whose mtime was set back (``cp -p``, ``rsync -t``, an
    unpacked archive); the replacement is another inode, and its ctime (which no program can set)
    moved."""
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _unchanged(path: Path, previous: FileRecord, max_file_size: int | None, plan: SyncPlan) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False  # gone or unreadable now: the loader reports why
    # A row recorded without inode and ctime (an older record) never matches: hashed once.
    same_stat = _stat_key(st) == (previous.size, previous.mtime_ns, previous.inode, previous.ctime_ns)
    racy = st.st_mtime_ns >= previous.recorded_ns - RACY_WINDOW_NS
    if same_stat and not racy:
        return True
    if st.st_size != previous.size or not _hashable(st, max_file_size):
        return False
    try:
        if file_sha256(path) != previous.sha256:
            return False
    except OSError:
        return False
    plan.restat.append((previous.source, *_stat_key(st)))
    return True


class _LocalFileReading:
    """A file read in this process, document by document as the Indexer asks for them."""

    def __init__(self, change: FileChange, loader: Any, chunker: Callable[[], Any]):
        # stat, then hash, then parse: if the file changes in between, the recorded stat and hash
        # are the older ones, so the next ingest sees the change and parses it again.
        self.change, self.warnings = change, []
        self._loader, self._chunker = loader, chunker
        path = change.path
        try:
            self.stat = path.stat()
            readable = _hashable(self.stat, getattr(loader.config, "max_file_size", None)) and loader.may_read(path)
            self.sha256 = file_sha256(path) if readable else ""
        except OSError:
            self.stat, self.sha256 = None, ""  # reading it fails too, and the loader says why

    def documents(self) -> Iterator[Document]:
        return self._loader.iter_file(self.change.path, self.warnings)

    def chunk(self, document: Document) -> list[Document]:
        return self._chunker().split_documents([document])


class LocalChunkSource:
    """The local engine: each file is read and chunked in this process when its turn comes."""

    def __init__(self, loader: Any, chunker: Callable[[], Any]):
        self.loader, self.chunker = loader, chunker

    def read(self, todo: Sequence[FileChange], report: IngestReport) -> Iterator[_LocalFileReading]:
        for change in todo:
            yield _LocalFileReading(change, self.loader, self.chunker)


def warn_truncated(report: IngestReport, limit: int) -> None:
    if report.truncated:
        logger.warning(
            "%d of %d chunks are longer than the model's max_seq_length (%d tokens) and will be truncated; "
            "use chunker.type: tokens (or a smaller chunk_size) so every word stays searchable",
            report.truncated,
            report.added,
            limit,
        )


@dataclass
class _FileInProgress:
    """A file being read and written. Its chunk ids are kept (not its chunks) until the file is
    recorded, which happens once it has been read to the end and every chunk of it is written."""

    change: FileChange
    stat: Any  # an os.stat_result, or the same four fields read by a Ray worker
    sha256: str
    ids: dict[str, None] = field(default_factory=dict)  # its chunk ids, each once, in order
    chunks: int = 0  # chunks its documents gave (the same chunk twice counts twice, as in the record)
    documents: int = 0
    unwritten: int = 0  # of its chunks, those still waiting in the write buffer


class Indexer:
    """Brings one physical collection and its record in step with the loader's files.

    ``chunker`` and ``cache`` are callables so that an ingest with nothing to parse or embed never
    builds them (the token chunker and the cache both load the model).

        >>> with pipe.index.writing() as session:                           # doctest: +SKIP
        ...     Indexer(loader=pipe.loader, chunker=lambda: pipe.chunker, session=session).sync()

    It decides what to write; the :class:`~.session.WriteSession` writes it (every sink gets the
    same chunks, deletions and reconciliation: the record lists what each holds).
    """

    def __init__(
        self,
        *,
        loader: Any,
        chunker: Callable[[], Any],
        session: WriteSession,
        cleanup: str = "full",
        show_progress: bool = False,
        prune_api: bool = False,
        source: ChunkSource | None = None,
    ):
        if cleanup not in CLEANUP_MODES:
            raise ValueError(f"cleanup must be one of {', '.join(CLEANUP_MODES)}, got {cleanup!r}")
        self.loader = loader
        self.chunker = chunker
        self.session = session
        self.sinks = session.sinks
        self.collection = session.collection
        self.record = session.record
        self.settings = session.settings
        self.cleanup = cleanup
        self.show_progress = show_progress
        self.prune_api = prune_api
        # Who reads and chunks the files (local, or Ray: see sources.py); the writes stay here.
        self.source = source if source is not None else LocalChunkSource(loader, chunker)

    def sync(self) -> IngestReport:
        report = IngestReport(collection=self.collection)
        # An interrupted ingest left its mark; a collection changed behind the record's back (or
        # removed) no longer holds as many chunks as the record lists. Either way: reconcile.
        held = [sink.count() if sink.exists() else 0 for sink in self.sinks]
        recorded = self.record.chunk_count(self.collection)
        report.recovered = self.record.is_dirty(self.collection) or any(n != recorded for n in held)
        if report.recovered:
            # this ingest reconciles: the mark it finds is cleared when it completes
            self.session.was_dirty = False
            logger.warning(
                "reconciling collection %r with its record (the last ingest was interrupted, or the collection "
                "holds %s chunks where the record lists %d)", self.collection, "/".join(map(str, held)), recorded,
            )
            self.session.mark_dirty()
            self._forget_files_missing_from_collection()
        plan = plan_sync(self.loader, self.record, self.collection, self.settings, self.cleanup, self.prune_api)
        report.files_seen = plan.files_seen
        report.unsupported = plan.unsupported
        for source in plan.conflicts:
            self.loader.report(FileError(source, CONFLICT_REASON), report.errors)
        report.files_unchanged = len(plan.unchanged)
        report.chunks = report.skipped = plan.unchanged_chunks
        for error in self.loader.discovery_errors:
            self.loader.report(error, report.errors)  # raises with loader.on_error: fail
        if plan.restat:
            self.record.update_stats(self.collection, plan.restat)
        self._index_files(plan, report)
        self._remove_files(plan, report)
        if report.recovered:
            self._sweep(report)
        self.record.set_meta(f"last_ingest:{self.collection}", str(time.time()))
        primary = self.sinks[0]
        report.collection_count = primary.count() if primary.exists() else 0
        return report

    # -- steps -------------------------------------------------------------------------------------
    def _forget_files_missing_from_collection(self) -> None:
        """After a crash: a file whose recorded chunks are not all in Chroma is indexed again."""
        recorded = self.record.chunk_ids(self.collection)
        missing = set().union(*((recorded - sink.ids()) if sink.exists() else recorded for sink in self.sinks))
        if missing:
            sources = self.record.chunk_sources(self.collection, missing)
            files = self.record.files(self.collection)
            from_code = {s for s in sources if s in files and files[s].from_code}
            logger.warning("%d recorded chunks are missing from the collection; re-indexing %d files", len(missing), len(sources - from_code))
            self.record.remove_sources(self.collection, sources - from_code)
            if from_code:
                # Documents added from code cannot be read again: only the chunks that are gone are forgotten.
                lost = missing & self.record.chunk_ids(self.collection, from_code)
                logger.warning("%d chunks added from code are missing from the collection; forgetting them", len(lost))
                self.record.remove_chunks(self.collection, lost)

    def _index_files(self, plan: SyncPlan, report: IngestReport) -> None:
        """Read each file document by document, and write its chunks in bounded batches as they
        come (across files and within one): memory holds one write batch, one document's chunks
        and the ids of the files not yet recorded, whatever the files' sizes."""
        if not plan.todo:
            return
        self._buffer: list[tuple[Document, _FileInProgress]] = []
        self._awaiting: list[_FileInProgress] = []  # read to the end, not yet recorded
        readings = self.source.read(plan.todo, report)
        for reading in tqdm(readings, total=len(plan.todo), desc="Indexing", unit="file", disable=not self.show_progress):
            self._index_file(reading, report)
        self._flush(report, everything=True)

    def _index_file(self, reading: FileReading, report: IngestReport) -> None:
        change, st = reading.change, reading.stat
        progress = _FileInProgress(change, st, reading.sha256)
        warnings = reading.warnings
        reported = 0
        failure: FileError | None = None
        has_no_text = False
        documents = reading.documents()
        while True:
            # Only the reading is guarded: an error while writing is the ingest's, not the file's.
            try:
                document = next(documents)
            except StopIteration:
                if progress.documents == 0:
                    failure, has_no_text = FileError(change.source, "no text found"), True
                break
            except FileNotRead as exc:
                # Not read (permission denied, an I/O error, gone meanwhile): that says nothing
                # about what the file holds, which may well still be what was indexed: kept.
                failure = FileError(change.source, str(exc))
                break
            except UnreadableFile as exc:
                failure = FileError(change.source, str(exc))
                # Read and judged to hold no text (empty, blank, no record, not text at all): the
                # file now says that nothing of it is to be found.
                has_no_text = progress.documents == 0
                break
            except OSError as exc:
                # Not read (permission denied, an I/O error, gone meanwhile): that says nothing
                # about what the file holds, which may well still be what was indexed: kept.
                failure = FileError(change.source, exc.strerror or str(exc))
                break
            # Reported as they come, so that with on_error: fail nothing more is written.
            reported = self._report_warnings(change.source, warnings, reported, report)
            progress.documents += 1
            self._add(reading.chunk(document), progress, report)
        if failure is not None or st is None:
            self._abandon(progress, report)
            # cleanup: none keeps every old version, so also what an emptied file held.
            if has_no_text and change.previous is not None and self.cleanup != "none":
                failure = self._drop_emptied(failure, report)
        self._report_warnings(change.source, warnings, reported, report)
        if failure is not None:
            self.loader.report(failure, report.errors)  # raises with loader.on_error: fail
        if failure is not None or st is None:
            return
        self._awaiting.append(progress)
        crash_point("loading")
        self._record_written(report)

    def _report_warnings(self, source: str, warnings: list[str], reported: int, report: IngestReport) -> int:
        for warning in warnings[reported:]:
            self.loader.report(FileError(source, warning), report.errors)
        return len(warnings)

    def _add(self, chunks: list[Document], progress: _FileInProgress, report: IngestReport) -> None:
        for chunk in chunks:
            progress.chunks += 1
            if chunk.id in progress.ids:
                continue  # the same chunk twice in one file (a repeated record) is one chunk
            progress.ids[chunk.id] = None
            progress.unwritten += 1
            self._buffer.append((chunk, progress))
        self._flush(report)

    def _flush(self, report: IngestReport, everything: bool = False) -> None:
        """Write full batches from the buffer (all of it with ``everything``), recording each file
        as soon as all its chunks are written."""
        batch = self.session.max_batch_size
        while len(self._buffer) >= batch or (everything and self._buffer):
            part, self._buffer = self._buffer[:batch], self._buffer[batch:]
            self._owner_of = {chunk.id: progress.change.source for chunk, progress in part}
            self._write_batch([chunk for chunk, _ in part], report)
            for _, progress in part:
                progress.unwritten -= 1
            self._record_written(report)
        if everything:
            self._record_written(report)

    def _write_batch(self, chunks: list[Document], report: IngestReport) -> None:
        # Every chunk of a file being (re)indexed is written, also those whose id the collection
        # holds: the id is derived from the text and position only, so a chunk whose metadata
        # changed (a record's fields, an HTML title, its start_index) keeps its id, and skipping
        # it would leave the old metadata in the index. Its vector comes from the embedding cache.
        chunks = list({c.id: c for c in chunks}.values())
        by_source: dict[str, list[str]] = {}
        for chunk in chunks:
            by_source.setdefault(self._owner_of[chunk.id], []).append(chunk.id)
        for source, ids in by_source.items():
            self.session.check_owner(source, ids)
        self.session.write(chunks, report)

    def _record_written(self, report: IngestReport) -> None:
        """Record, in one transaction, the files read to the end whose chunks are all written; then
        delete the old chunks of those that changed."""
        done = [p for p in self._awaiting if p.unwritten == 0]
        if not done:
            return
        self._awaiting = [p for p in self._awaiting if p.unwritten]
        records = [
            FileRecord(
                p.change.source, p.stat.st_size, p.stat.st_mtime_ns, p.sha256, self.settings, p.chunks,
                inode=p.stat.st_ino, ctime_ns=p.stat.st_ctime_ns,
            )
            for p in done
        ]
        self.session.commit(
            records, {p.change.source: list(p.ids) for p in done}, report, replace=self.cleanup != "none"
        )
        for p in done:
            report.files_loaded += 1
            report.documents += p.documents
            report.chunks += p.chunks
            if p.change.previous is None:
                report.files_added += 1
            else:
                report.files_updated += 1

    def _abandon(self, progress: _FileInProgress, report: IngestReport) -> None:
        """A file that failed part-way: its chunks still buffered are dropped, and those already
        written that the record does not list are deleted again. A changed file's recorded chunks
        stay: it keeps its old chunks until it reads."""
        waiting = {chunk.id for chunk, owner in self._buffer if owner is progress}
        self._buffer = [(chunk, owner) for chunk, owner in self._buffer if owner is not progress]
        written = progress.ids.keys() - waiting
        if not written:
            return
        orphans = written - self.record.chunk_ids(self.collection, [progress.change.source])
        if orphans:
            self.session.delete_unrecorded(orphans)
            report.deleted += len(orphans)

    def _drop_emptied(self, failure: FileError, report: IngestReport) -> FileError:
        """A file that now gives no text leaves the index (record first, then Chroma, as a deleted
        file does); the error says so. It is read again, and reported again, on every ingest."""
        source = failure.source
        removed = self.session.remove_sources([source])
        report.deleted += removed
        return FileError(source, f"{failure.reason}; its {removed} chunks were removed from the index")

    def _remove_files(self, plan: SyncPlan, report: IngestReport) -> None:
        if not plan.removed:
            return
        report.deleted += self.session.remove_sources(plan.removed)
        report.files_removed = len(plan.removed)

    def _sweep(self, report: IngestReport) -> None:
        """Delete what a sink holds and the record does not list: chunks upserted before a kill and
        not recorded, old chunks not yet deleted, anything written around ingest."""
        report.deleted += self.session.keep_only(self.record.chunk_ids(self.collection))
