"""JSON Lines files that the user hands us whole (sample queries, BEIR queries and corpus): every
non-blank line one JSON object; a bad line is one ConfigError naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Iterable

from .errors import ConfigError


def read_json_objects(path: Path, required: tuple[str, ...], label: str = "") -> list[dict[str, Any]]:
    """The file's records, each an object with the ``required`` keys. Lines end at ``\\n`` only
    (a record may hold U+2028); ``label`` leads the message (``"sample_queries: "``)."""
    records = []
    with Path(path).open(encoding="utf-8", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{label}{path}: line {number}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or any(key not in record for key in required):
                raise ConfigError(f"{label}{path}: line {number}: expected a JSON object with {', '.join(required)}")
            records.append(record)
    return records


def write_json_objects(records: Iterable[dict[str, Any]], handle: IO[str]) -> int:
    """Write one JSON object per line (``\n``-ended, UTF-8 kept as is); returns how many."""
    count = 0
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
