"""``loader.type: directory`` — every supported file under a folder, filtered by globs."""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, Iterator, Literal

from langchain_core.documents import Document
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from ..stage_config import ConfigPath, StageConfig
from ..errors import LoaderError
from ..metadata import safe_metadata, valid_unicode
from ..registry import register
from .base import FileError, LoadResult
from ..contracts import FileNotRead
from .readers import READERS, BoundedInput, ReaderOptions, UnreadableFile

# Metadata the loader sets on every document; a record's own field is never renamed onto one of them.
# ``folder`` (the file's folder under loader.path, "" at the top) and ``top_folder`` (its first
# part) are there to filter on: Chroma's filters match whole values, not path prefixes.
LOADER_KEYS = ("source", "doc_id", "file_type", "folder", "top_folder")


def folder_metadata(source: str) -> dict[str, str]:
    """``folder`` and ``top_folder`` of a source path relative to loader.path (posix)."""
    parts = source.split("/")[:-1]
    return {"folder": "/".join(parts), "top_folder": parts[0] if parts else ""}


def build_directory_loader(config: "DirectoryLoaderConfig") -> "DirectoryLoader":
    return DirectoryLoader(config)


# The formats whose records have fields (the rest are read whole, so a field setting means nothing)
RECORD_FORMATS = (".csv", ".jsonl")


class FormatOverride(BaseModel):
    """``loader.formats.<glob>``: field settings for the record files the glob matches."""

    model_config = ConfigDict(extra="forbid")

    text_field: str | None = Field(None, description="CSV column / JSONL field holding the text for these files.")
    id_field: str | None = Field(None, description="CSV column / JSONL field used in their document ids.")


@register("loader", "directory", build_directory_loader)
class DirectoryLoaderConfig(StageConfig):
    """Load .txt, .md, .html, .pdf (one document per page), .csv and .jsonl (one per record)."""

    type: Literal["directory"] = "directory"
    path: ConfigPath
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=lambda: ["**/.*", "**/.*/**"])
    text_field: str = Field("text", description="CSV column / JSONL field holding the text.")
    id_field: str = Field("id", description="CSV column / JSONL field used in the document id, when present.")
    formats: dict[str, FormatOverride] = Field(
        default_factory=dict,
        description="Per glob (relative to path), text_field / id_field for the files it matches, e.g. "
        "{'**/*.csv': {text_field: notes}}; the first glob that matches a file wins.",
    )
    encoding: str = "utf-8"
    max_file_size: int | None = Field(50_000_000, gt=0, description="Bytes; larger files are skipped unread.")
    follow_external_links: bool = Field(
        False, description="Read symlinks that resolve outside `path` (off: they are reported and skipped)."
    )
    pdf_max_pages: int | None = Field(5_000, gt=0, description="PDFs with more pages are reported and skipped.")
    pdf_max_seconds: float | None = Field(
        300.0, gt=0, description="Seconds to read one PDF; a slower one is interrupted, reported and skipped."
    )
    on_error: Literal["skip", "fail"] = "skip"
    show_progress: bool = True

    @field_validator("formats")
    @classmethod
    def _formats_name_record_files(cls, value: dict[str, FormatOverride]) -> dict[str, FormatOverride]:
        for glob in value:
            suffix = Path(glob).suffix.lower()
            if not glob.strip():
                raise ValueError("a glob must not be empty, e.g. '**/*.csv'")
            if suffix and "*" not in suffix and suffix not in RECORD_FORMATS:
                raise ValueError(
                    f"{glob!r}: text_field and id_field apply to {' and '.join(RECORD_FORMATS)} files only"
                )
        return value

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value):
        if not value.exists():
            raise ValueError(f"path does not exist: {value}")
        return value


def _matches(relative: str, patterns: list[str]) -> bool:
    # fnmatch's "*" also crosses "/", so "**/*.md" matches at any depth; the extra check
    # lets "**/x" match "x" at the top level too.
    return any(
        fnmatch.fnmatch(relative, p) or (p.startswith("**/") and fnmatch.fnmatch(relative, p[3:])) for p in patterns
    )


class DirectoryLoader:
    """Finds the files (``discover``), names them (``source_id``) and reads them (``load``).

    Hostile input is reported, never fatal (with ``on_error: skip``): each file that cannot be read
    becomes a ``FileError`` with its reason, and the rest load. Folders that cannot be listed and
    file names that are not UTF-8 are reported by ``discover`` in ``discovery_errors``. Directory
    symlinks are not followed (no loops); a file symlink loop is reported as one, and so is a file
    symlink that resolves outside the root (unless ``follow_external_links``): a corpus unpacked
    from elsewhere must not publish any file its reader can open.
    """

    def __init__(self, config: DirectoryLoaderConfig):
        self.config = config
        self.reader_options = ReaderOptions(
            config.encoding,
            config.text_field,
            config.id_field,
            config.max_file_size,
            config.pdf_max_pages,
            config.pdf_max_seconds,
        )
        self.discovery_errors: list[FileError] = []
        # files the globs select that no reader handles (reported, never read)
        self.unsupported: list[str] = []

    @property
    def unlisted(self) -> list[FileError]:
        """Folders the last ``discover`` could not list (their files' index entries must be kept)."""
        return [e for e in self.discovery_errors if e.source.endswith("/")]

    @property
    def root(self) -> Path:
        path = self.config.path
        return path if path.is_dir() else path.parent

    def discover(self) -> list[Path]:
        """Supported files under the root, sorted, without following directory symlinks (no loops)."""
        path = self.config.path
        self.discovery_errors = []
        self.unsupported = []
        if path.is_file():
            if path.suffix.lower() not in READERS:
                self.unsupported.append(path.name)
                return []
            return [path]
        found = []

        def unlistable(error: OSError) -> None:
            folder = Path(error.filename or path)
            relative = folder.relative_to(path).as_posix() if folder != path else "."
            self.discovery_errors.append(FileError(f"{relative}/", f"cannot list folder ({error.strerror or error})"))

        for folder, dirs, files in os.walk(path, followlinks=False, onerror=unlistable):
            dirs.sort()
            for name in sorted(files):
                file = Path(folder) / name
                relative = file.relative_to(path).as_posix()
                if not _matches(relative, self.config.include) or _matches(relative, self.config.exclude):
                    continue
                if file.suffix.lower() not in READERS:
                    self.unsupported.append(relative)
                    continue
                try:
                    relative.encode("utf-8")
                except UnicodeEncodeError:
                    printable = relative.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    self.discovery_errors.append(FileError(printable, "file name is not valid UTF-8; rename it"))
                    continue
                found.append(file)
        return found

    def source_id(self, file: Path) -> str:
        return file.relative_to(self.root).as_posix()

    def options_for(self, source: str) -> ReaderOptions:
        """The reader options for one file: the first ``loader.formats`` glob that matches its
        source path overrides the loader-wide fields."""
        for glob, override in self.config.formats.items():
            if _matches(source, [glob]):
                fields = {k: v for k, v in override.model_dump().items() if v is not None}
                return replace(self.reader_options, **fields)
        return self.reader_options

    def load(self, files: list[Path] | None = None, show_progress: bool | None = None) -> LoadResult:
        result = LoadResult()
        if files is None:
            files = self.discover()
            for error in self.discovery_errors:
                self.report(error, result.errors)
        result.files_seen = len(files)
        show_progress = self.config.show_progress if show_progress is None else show_progress
        progress = tqdm(files, desc="Loading", unit="file", disable=not show_progress or not files)
        for file in progress:
            source = self.source_id(file)
            try:
                documents, warnings = self.load_file(file)
            except UnreadableFile as exc:
                self.report(FileError(source, str(exc)), result.errors)
                continue
            except OSError as exc:
                self.report(FileError(source, exc.strerror or str(exc)), result.errors)
                continue
            for warning in warnings:
                self.report(FileError(source, warning), result.errors)
            result.documents.extend(documents)
            result.files_loaded += 1
        return result

    def report(self, error: FileError, errors: list[FileError]) -> None:
        """Add ``error`` to ``errors``, or raise ``LoaderError`` when ``on_error`` is ``fail``."""
        if self.config.on_error == "fail":
            raise LoaderError(f"{error} (loader.on_error is 'fail'; set it to 'skip' to ingest the rest)")
        errors.append(error)

    def load_file(self, file: Path) -> tuple[list[Document], list[str]]:
        """A file's documents and per-record warnings, all at once (``iter_file`` streams them)."""
        warnings: list[str] = []
        return list(self.iter_file(file, warnings)), warnings

    def iter_file(self, file: Path, warnings: list[str]) -> Iterator[Document]:
        """A file's documents, read as they are yielded, in file order.

        Per-record problems (a bad JSONL line, a renamed metadata field) are appended to ``warnings``
        as they are met; a problem with the whole file raises ``UnreadableFile``, possibly after some
        documents were yielded (a JSONL file with no readable line is known only at its end).
        """
        source = self.source_id(file)
        file_type = file.suffix.lower()[1:]
        folders = folder_metadata(source)
        reader = READERS[file.suffix.lower()]
        warned: set[str] = set()  # each metadata problem once per file, not once per record
        count, warnings_before = 0, len(warnings)
        try:
            with self._open(file) as handle:
                for record in reader(BoundedInput(handle, self.config.max_file_size), self.options_for(source), warnings):
                    if not record.text.strip():
                        continue  # an empty PDF page or CSV cell carries nothing to retrieve
                    metadata, problems = safe_metadata(record.metadata, taken=LOADER_KEYS)
                    text = valid_unicode(record.text)
                    if text is not record.text:
                        problems.append("text: invalid Unicode (a lone surrogate) replaced with U+FFFD")
                    for problem in problems:
                        if problem not in warned:
                            warned.add(problem)
                            warnings.append(problem)
                    doc_id = f"{source}#{record.key}" if record.key else source
                    metadata.update(source=source, doc_id=doc_id, file_type=file_type, **folders)
                    count += 1
                    yield Document(page_content=text, metadata=metadata)
        except OSError as exc:
            raise FileNotRead(exc.strerror or str(exc)) from None
        if not count and len(warnings) == warnings_before:
            raise UnreadableFile("no text found")

    def _open(self, file: Path) -> BinaryIO:
        """The file opened for reading, once it is known to be a regular file within the limits."""
        target = Path(os.path.realpath(file))
        st = target.stat()  # a symlink loop raises ELOOP here, a dangling link ENOENT
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"not a regular file ({_file_kind(st.st_mode)})")  # a FIFO would block forever
        if not self._may_read(file, target):
            raise UnreadableFile(
                f"symlink to {target}, outside loader.path; not followed (set loader.follow_external_links: true "
                "to read it)"
            )
        size = st.st_size
        if self.config.max_file_size is not None and size > self.config.max_file_size:
            raise UnreadableFile(f"{size} bytes is over loader.max_file_size ({self.config.max_file_size})")
        if size == 0:
            raise UnreadableFile("empty file")
        handle = open(target, "rb")
        opened = os.fstat(handle.fileno())
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            handle.close()  # a link or folder on the way was swapped after it was checked
            raise UnreadableFile("replaced while being opened; run the ingest again")
        return handle

    def may_read(self, file: Path) -> bool:
        """Whether the loader would open ``file`` at all (a symlink that resolves outside the root is
        not followed unless ``follow_external_links``): ingest hashes only what may be read."""
        return self._may_read(file, Path(os.path.realpath(file)))

    def _may_read(self, file: Path, target: Path) -> bool:
        # The file loader.path names itself is read wherever it points: the user chose it.
        if self.config.follow_external_links or file == self.config.path:
            return True
        return target.is_relative_to(os.path.realpath(self.root))


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "a special file"
