"""One reader per file format. Each takes the open file and yields ``Record``s as it reads them;
a problem with the whole file raises ``UnreadableFile`` with a short reason (possibly after some
records were yielded), a problem with one record is appended to ``warnings``.

Input is hostile until proven otherwise: no file is read past ``max_bytes`` (even one that grows
after its size was checked), binary and mis-encoded text is refused with the reason, and a parser
failure of any kind on a PDF or a JSON line becomes a reason, never a crash. CSV and JSONL are
streamed: memory is bounded by the largest record, not the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from ..contracts import UnreadableFile
from ..errors import first_line
from .limits import TimeLimitExceeded, time_limit

# Bytes read at a time from a streamed file; also the window checked for NUL bytes (binary files).
BLOCK_SIZE = 1 << 20
_BINARY_SNIFF = 8192


@dataclass
class Record:
    text: str
    key: str | None = None  # part of the document id inside the file: "page=2", "row=7"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReaderOptions:
    encoding: str = "utf-8"
    text_field: str = "text"
    id_field: str = "id"
    max_bytes: int | None = None
    pdf_max_pages: int | None = None
    pdf_max_seconds: float | None = None


class BoundedInput:
    """An open binary file that refuses to be read past ``max_bytes``."""

    def __init__(self, handle: BinaryIO, max_bytes: int | None):
        self.handle = handle
        self.max_bytes = max_bytes
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        if self.max_bytes is not None:
            allowed = self.max_bytes + 1 - self.consumed  # one byte more shows that the file grew
            size = allowed if size < 0 else min(size, allowed)
        data = self.handle.read(size)
        self.consumed += len(data)
        if self.max_bytes is not None and self.consumed > self.max_bytes:
            raise UnreadableFile(f"grew past loader.max_file_size ({self.max_bytes} bytes) while being read")
        return data


Reader = Callable[[BoundedInput, ReaderOptions, list[str]], Iterator[Record]]


def _is_utf16(data: bytes) -> bool:
    return data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def _decode(data: bytes, options: ReaderOptions) -> str:
    """A whole file's text (without a leading byte-order mark)."""
    if _is_utf16(data):
        try:  # UTF-16 text has NUL bytes but is text; its byte-order mark says so
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"not valid UTF-16 text (byte {exc.start})") from None
    if b"\x00" in data[:_BINARY_SNIFF]:
        raise UnreadableFile("binary content (NUL bytes), not text")
    try:
        return data.decode(options.encoding).lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"not valid {options.encoding} text (byte {exc.start})") from None


def _text_blocks(source: BoundedInput, options: ReaderOptions) -> Iterator[str]:
    """The file's text, decoded a block at a time (a UTF-16 file, rare and small, whole)."""
    first = source.read(BLOCK_SIZE)
    if _is_utf16(first):
        yield _decode(first + source.read(), options)
        return
    if b"\x00" in first[:_BINARY_SNIFF]:
        raise UnreadableFile("binary content (NUL bytes), not text")
    decoder = codecs.getincrementaldecoder(options.encoding)()
    offset = 0  # bytes fed to the decoder before this block
    block, at_start = first, True
    while True:
        pending = len(decoder.getstate()[0])  # bytes of a character split across blocks
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"not valid {options.encoding} text (byte {offset - pending + exc.start})") from None
        offset += len(block)
        if at_start and text:
            text, at_start = text.removeprefix("\ufeff"), False
        if text:
            yield text
        if not block:
            return
        block = source.read(BLOCK_SIZE)


_LINE_FEED = re.compile("\n")
_ANY_LINE_END = re.compile("\r\n|\r|\n")


def _lines(blocks: Iterable[str], ends: re.Pattern) -> Iterator[str]:
    """Lines split where ``ends`` matches, each with its line end, across block boundaries."""
    pieces: list[str] = []  # the current line so far (joined once: a long line is not copied per block)
    carry = ""
    for block in blocks:
        block, carry = carry + block, ""
        if ends is _ANY_LINE_END and block.endswith("\r"):
            block, carry = block[:-1], "\r"  # may be the first half of a "\r\n" split across blocks
        start = 0
        for match in ends.finditer(block):
            pieces.append(block[start : match.end()])
            yield "".join(pieces)
            pieces, start = [], match.end()
        if start < len(block):
            pieces.append(block[start:])
    if carry:
        pieces.append(carry)
    if pieces:
        yield "".join(pieces)


def read_plain_text(source: BoundedInput, options: ReaderOptions, warnings: list[str]) -> Iterator[Record]:
    yield Record(_decode(source.read(), options))


# Never rendered as text: code, templates, the head, and the fallback children of iframe/canvas.
HIDDEN_TAGS = ["script", "style", "noscript", "template", "head", "svg", "iframe", "embed", "canvas"]
_DISPLAY_NONE = re.compile(r"(^|;)\s*(display\s*:\s*none|visibility\s*:\s*hidden)\b", re.IGNORECASE)


def _is_hidden(tag) -> bool:
    attrs = getattr(tag, "attrs", None) or {}
    # (aria-hidden is not here: it hides from screen readers what the page still shows)
    return "hidden" in attrs or bool(_DISPLAY_NONE.search(str(attrs.get("style", ""))))


def read_html(source: BoundedInput, options: ReaderOptions, warnings: list[str]) -> Iterator[Record]:
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(_decode(source.read(), options), "html.parser")
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
    yield Record(text, metadata=metadata)


def read_pdf(source: BoundedInput, options: ReaderOptions, warnings: list[str]) -> Iterator[Record]:
    data = source.read()
    if b"%PDF-" not in data[:1024]:
        raise UnreadableFile("not a PDF (no %PDF- header)")
    try:
        # The whole parse is timed, not only text extraction: pypdf's known infinite loops and
        # memory blow-ups are in reading the object and page trees as much as in the pages.
        with time_limit(options.pdf_max_seconds) as deadline:
            records = _pdf_records(data, options, warnings, deadline)
    except TimeLimitExceeded:
        raise UnreadableFile(
            f"reading took longer than loader.pdf_max_seconds ({options.pdf_max_seconds:g} s); "
            "raise it to read this file"
        ) from None
    yield from records


def _pdf_records(data: bytes, options: ReaderOptions, warnings: list[str], deadline) -> list[Record]:
    from pypdf import PdfReader

    # pypdf raises many exception types on malformed input (and RecursionError on cyclic
    # objects): any of them means this file cannot be read, never that the ingest must stop.
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _decrypts_without_password(reader):
            raise UnreadableFile("encrypted PDF (password protected)")
        page_count = len(reader.pages)
    except UnreadableFile:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile input, see above
        raise UnreadableFile(f"corrupt or truncated PDF ({_short(exc)})") from None
    # Over the limit, the file is refused rather than cut: a cut file would be recorded as ingested
    # and its missing pages never mentioned again; refused, it is reported at every ingest.
    if options.pdf_max_pages is not None and page_count > options.pdf_max_pages:
        raise UnreadableFile(
            f"{page_count} pages is over loader.pdf_max_pages ({options.pdf_max_pages}); raise it to read this file"
        )
    records, failed = [], []
    for number in range(1, page_count + 1):
        deadline.check()  # where the timer cannot interrupt (outside the main thread), between pages
        try:
            text = reader.pages[number - 1].extract_text() or ""
        except Exception as exc:  # noqa: BLE001
            failed.append(f"page {number}: text could not be extracted ({_short(exc)})")
            continue
        records.append(Record(text, key=f"page={number}", metadata={"page": number}))
    if not records and failed:
        raise UnreadableFile(f"corrupt PDF: no page could be read ({failed[0]})")
    warnings.extend(failed)
    return records


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


# csv's field size limit is one setting for the whole process (131,072 characters by default). It
# is raised only while this module's parser runs, under a lock, so no other code sees it changed.
_CSV_LIMIT_LOCK = threading.Lock()


def _csv_next(rows: Iterator, limit: int):
    with _CSV_LIMIT_LOCK:
        previous = csv.field_size_limit()
        csv.field_size_limit(max(previous, limit))
        try:
            return next(rows)
        finally:
            csv.field_size_limit(previous)


def read_csv(source: BoundedInput, options: ReaderOptions, warnings: list[str]) -> Iterator[Record]:
    # A cell may be as long as the file may be: characters never outnumber bytes.
    limit = options.max_bytes if options.max_bytes is not None else sys.maxsize
    rows = csv.reader(_lines(_text_blocks(source, options), _ANY_LINE_END))
    try:
        fields = _csv_next(rows, limit)
    except StopIteration:
        fields = []
    except csv.Error as exc:
        raise UnreadableFile(f"malformed CSV header: {exc}") from None
    if options.text_field not in fields:
        raise UnreadableFile(
            f"no {options.text_field!r} column (columns: {', '.join(fields) or 'none'}); set loader.text_field, "
            "or loader.formats for these files"
        )
    number = 0
    while True:
        try:
            values = _csv_next(rows, limit)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UnreadableFile(f"malformed CSV: {exc}") from None
        if not values:
            continue  # a blank line, as csv.DictReader skips it
        number += 1
        # As csv.DictReader: missing cells are None, extra cells (under no column name) are not kept.
        row = dict(zip(fields, values + [None] * (len(fields) - len(values))))
        yield _record_from_mapping(row, options, f"row={number}")


def read_jsonl(source: BoundedInput, options: ReaderOptions, warnings: list[str]) -> Iterator[Record]:
    # Only "\n" ends a record: a JSON string may hold U+2028, U+0085 or "\r" raw, and
    # str.splitlines would cut the record there.
    first_problem = None
    readable = 0
    for number, line in enumerate(_lines(_text_blocks(source, options), _LINE_FEED), start=1):
        if not line.strip():
            continue
        problem = None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"line {number}: invalid JSON ({exc.msg})"
        except RecursionError:
            problem = f"line {number}: invalid JSON (nested too deeply)"
        else:
            if not isinstance(obj, dict):
                problem = f"line {number}: expected a JSON object, got {type(obj).__name__}"
            elif options.text_field not in obj:
                problem = f"line {number}: no {options.text_field!r} field"
        if problem is not None:
            first_problem = first_problem or problem
            warnings.append(problem)
            continue
        readable += 1
        yield _record_from_mapping(obj, options, f"line={number}")
    if not readable and first_problem:
        raise UnreadableFile(f"no readable lines ({first_problem})")


READERS: dict[str, Reader] = {
    ".txt": read_plain_text,
    ".md": read_plain_text,
    ".markdown": read_plain_text,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".csv": read_csv,
    ".jsonl": read_jsonl,
}
