"""One writer per index folder: ingest and reindex hold ``<persist_directory>/ingest.lock``.

The lock is an OS file lock (``flock``, through ``filelock``), so the kernel releases it when
its holder dies, even by ``SIGKILL``: a crash never leaves a stale lock behind. Queries take no
lock; Chroma and the record (SQLite in WAL mode) let them read while an ingest writes.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import IndexBusyError

logger = logging.getLogger(__name__)

LOCK_FILENAME = "ingest.lock"


@contextmanager
def index_lock(path: Path | None, timeout: float) -> Iterator[None]:
    """Hold the index's write lock; wait up to ``timeout`` seconds, then raise ``IndexBusyError``."""
    if path is None:  # an in-memory index lives in this process only
        yield
        return
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout > 0:
            logger.warning("another ingest is writing to %s; waiting up to %gs for it to finish", path.parent, timeout)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise IndexBusyError(
                f"another ingest or reindex is writing to {path.parent} (lock {path.name} is held); "
                f"wait for it to finish, or raise ingest.lock_timeout (now {timeout:g}s)"
            ) from None
    try:
        yield
    finally:
        lock.release()
