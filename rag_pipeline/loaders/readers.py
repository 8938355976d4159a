"""One reader per file format. Each returns ``Record``s; a problem with the whole file raises
``UnreadableFile`` with a short reason, a problem with one record is returned as a warning.

Input is hostile until proven otherwise: no file is read past ``max_bytes`` (even one that grows
after its size was checked), binary and mis-encoded text is refused with the reason, and a parser
failure of any kind on a PDF or a JSON line becomes a reason, never a crash.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..contracts import UnreadableFile
from ..errors import first_line


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
    max_bytes: int | None = None


def _read_bytes(path: Path, options: ReaderOptions) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read() if options.max_bytes is None else handle.read(options.max_bytes + 1)
    if options.max_bytes is not None and len(data) > options.max_bytes:
        raise UnreadableFile(f"grew past loader.max_file_size ({options.max_bytes} bytes) while being read")
    return data


def _decode(path: Path, options: ReaderOptions) -> str:
    data = _read_bytes(path, options)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:  # UTF-16 text has NUL bytes but is text; its byte-order mark says so
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"not valid UTF-16 text (byte {exc.start})") from None
    if b"\x00" in data[:8192]:
        raise UnreadableFile("binary content (NUL bytes), not text")
    try:
        return data.decode(options.encoding)
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not valid {options.encoding} text (byte {exc.start})") from None


def read_plain_text(path: Path, options: ReaderOptions) -> ReadResult:
    return ReadResult([Record(_decode(path, options).lstrip("\ufeff"))])


# Never rendered as text: code, templates, the head, and the fallback children of iframe/canvas.
HIDDEN_TAGS = ["script", "style", "noscript", "template", "head", "svg", "iframe", "embed", "canvas"]
_DISPLAY_NONE = re.compile(r"(^|;)\s*(display\s*:\s*none|visibility\s*:\s*hidden)\b", re.IGNORECASE)


def _is_hidden(tag) -> bool:
    attrs = getattr(tag, "attrs", None) or {}
    # (aria-hidden is not here: it hides from screen readers what the page still shows)
    return "hidden" in attrs or bool(_DISPLAY_NONE.search(str(attrs.get("style", ""))))


def read_html(path: Path, options: ReaderOptions) -> ReadResult:
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(_decode(path, options), "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    # Only what a browser shows: scripts, styles and templates are code, not content, and
    # elements marked hidden are not shown.
    for tag in soup(HIDDEN_TAGS):
        tag.decompose()
    for tag in soup.find_all(_is_hidden):
        tag.decompose()
    # Plain strings only: comments, CDATA and the bodies of scripts/styles are other string types.
    lines = (line.strip() for line in soup.get_text("\n", types=(NavigableString,)).splitlines())
    text = "\n".join(line for line in lines if line)
    metadata = {"title": title} if title else {}
    return ReadResult([Record(text, metadata=metadata)])


def read_pdf(path: Path, options: ReaderOptions) -> ReadResult:
    from pypdf import PdfReader

    data = _read_bytes(path, options)
    if b"%PDF-" not in data[:1024]:
        raise UnreadableFile("not a PDF (no %PDF- header)")
    # pypdf raises many exception types on malformed input (and RecursionError on cyclic
    # objects): any of them means this file cannot be read, never that the ingest must stop.
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _decrypts_without_password(reader):
            raise UnreadableFile("encrypted PDF (password protected)")
        pages = list(reader.pages)
    except UnreadableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile input, see above
        raise UnreadableFile(f"corrupt or truncated PDF ({_short(exc)})") from None
    records, warnings = [], []
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception as exc:  # noqa: BLE001
            warnings.append(f"page {number}: text could not be extracted ({_short(exc)})")
            continue
        records.append(Record(text, key=f"page={number}", metadata={"page": number}))
    if not records and warnings:
        raise UnreadableFile(f"corrupt PDF: no page could be read ({warnings[0]})")
    return ReadResult(records, warnings)


def _decrypts_without_password(reader) -> bool:
    """A PDF with only an owner password (print/copy restrictions) opens with the empty password."""
    from pypdf import PasswordType

    try:
        return reader.decrypt("") != PasswordType.NOT_DECRYPTED
    except Exception:  # noqa: BLE001 - e.g. AES without the cryptography package
        return False


def _short(exc: BaseException) -> str:
    """The exception's type and first line: pypdf's messages alone rarely say what broke."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


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
    try:
        fields = reader.fieldnames or []
    except csv.Error as exc:
        raise UnreadableFile(f"malformed CSV header: {exc}") from None
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
        except RecursionError:
            warnings.append(f"line {number}: invalid JSON (nested too deeply)")
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
