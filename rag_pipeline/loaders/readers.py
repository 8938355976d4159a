"""One reader per file format. Each returns ``Record``s; a problem with the whole file raises
``UnreadableFile`` with a short reason, a problem with one record is returned as a warning."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class UnreadableFile(Exception):
    """The file as a whole cannot be read; ``str(exc)`` is the reason shown to the user."""


@dataclass
class Record:
    text: str
    key: str | None = None  # part of the document id inside the file: "page=2", "row=7"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadResult:
    records: list[Record]
    warnings: list[str] = field(default_factory=list)  # per-record problems, e.g. a bad JSONL line


@dataclass(frozen=True)
class ReaderOptions:
    encoding: str = "utf-8"
    text_field: str = "text"
    id_field: str = "id"


def _decode(path: Path, options: ReaderOptions) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise UnreadableFile("binary content (NUL bytes), not text")
    try:
        return data.decode(options.encoding)
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not valid {options.encoding} text (byte {exc.start})") from None


def read_plain_text(path: Path, options: ReaderOptions) -> ReadResult:
    return ReadResult([Record(_decode(path, options).lstrip("\ufeff"))])


def read_html(path: Path, options: ReaderOptions) -> ReadResult:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(path, options), "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    # Only what a browser shows: scripts, styles and templates are code, not content.
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(line for line in lines if line)
    metadata = {"title": title} if title else {}
    return ReadResult([Record(text, metadata=metadata)])


def read_pdf(path: Path, options: ReaderOptions) -> ReadResult:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise UnreadableFile("encrypted PDF (password protected)")
        records = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            records.append(Record(text, key=f"page={number}", metadata={"page": number}))
    except UnreadableFile:
        raise
    except (PdfReadError, ValueError, KeyError, OSError, TypeError) as exc:
        raise UnreadableFile(f"corrupt or truncated PDF ({type(exc).__name__}: {exc})") from None
    return ReadResult(records)


def _scalar(value: Any) -> Any:
    """Chroma metadata takes str/int/float/bool only."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _record_from_mapping(row: dict[str, Any], options: ReaderOptions, fallback_key: str) -> Record:
    text = row.get(options.text_field)
    identifier = row.get(options.id_field)
    key = f"{fallback_key.split('=')[0]}={identifier}" if identifier not in (None, "") else fallback_key
    metadata = {k: _scalar(v) for k, v in row.items() if k != options.text_field and v is not None and k}
    return Record("" if text is None else str(text), key=key, metadata=metadata)


def read_csv(path: Path, options: ReaderOptions) -> ReadResult:
    reader = csv.DictReader(io.StringIO(_decode(path, options).lstrip("\ufeff"), newline=""))
    fields = reader.fieldnames or []
    if options.text_field not in fields:
        raise UnreadableFile(
            f"no {options.text_field!r} column (columns: {', '.join(fields) or 'none'}); set loader.text_field"
        )
    records = []
    try:
        for number, row in enumerate(reader, start=1):
            records.append(_record_from_mapping(row, options, f"row={number}"))
    except csv.Error as exc:
        raise UnreadableFile(f"malformed CSV: {exc}") from None
    return ReadResult(records)


def read_jsonl(path: Path, options: ReaderOptions) -> ReadResult:
    records, warnings = [], []
    for number, line in enumerate(_decode(path, options).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            warnings.append(f"line {number}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            warnings.append(f"line {number}: expected a JSON object, got {type(obj).__name__}")
            continue
        if options.text_field not in obj:
            warnings.append(f"line {number}: no {options.text_field!r} field")
            continue
        records.append(_record_from_mapping(obj, options, f"line={number}"))
    if not records and warnings:
        raise UnreadableFile(f"no readable lines ({warnings[0]})")
    return ReadResult(records, warnings)


READERS: dict[str, Callable[[Path, ReaderOptions], ReadResult]] = {
    ".txt": read_plain_text,
    ".md": read_plain_text,
    ".markdown": read_plain_text,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".csv": read_csv,
    ".jsonl": read_jsonl,
}
