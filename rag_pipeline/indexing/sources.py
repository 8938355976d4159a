"""Where an ingest's chunks come from: the seam between the ``Indexer``, which keeps the record,
the write order and every write in this process, and the engine that reads and chunks the files.

The local engine (``sync.LocalChunkSource``) reads each file here, when the Indexer asks for it.
The Ray engine (:mod:`rag_pipeline.indexing.ray_engine`) reads and chunks a round of files as Ray
Data tasks and embeds what the embedding cache lacks on an actor pool, then hands each file to the
Indexer as if it had been read here: the same documents, warnings and errors, in the same order.
So chunk ids, incremental sync and crash safety do not depend on the engine.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence

from langchain_core.documents import Document

from .report import FileChange, IngestReport


class FileReading(Protocol):
    """One file to index, as an engine read it."""

    change: FileChange
    # What the record keeps of the file's stat (``st_size``, ``st_mtime_ns``, ``st_ino``,
    # ``st_ctime_ns``), taken before it was hashed and parsed; None when it could not be taken.
    stat: Any
    sha256: str  # "" when the file is not to be hashed (not regular, too large, not to be opened)
    warnings: list[str]  # per-record problems, appended as ``documents()`` meets them

    def documents(self) -> Iterator[Any]:
        """The file's documents in file order; raises what ``loader.iter_file`` raises, where it
        raises it (``FileNotRead``, ``UnreadableFile``, ``OSError``)."""
        ...

    def chunk(self, document: Any) -> list[Document]:
        """The chunks of one item of ``documents()``."""
        ...


class ChunkSource(Protocol):
    """Reads the files an ingest has to (re)index, in the order given."""

    def read(self, todo: Sequence[FileChange], report: IngestReport) -> Iterator[FileReading]: ...
