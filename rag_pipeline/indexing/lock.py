"""One writer per index folder: ingest and reindex hold ``<persist_directory>/ingest.lock``.

The lock is an OS file lock (``flock``, through ``filelock``), so the kernel releases it when
its holder dies, even by ``SIGKILL``: a crash never leaves a stale lock behind. Queries take no
lock; Chroma and the record (SQLite in WAL mode) let them read while an ingest writes.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import IndexBusyError

logger = logging.getLogger(__name__)

LOCK_FILENAME = "ingest.lock"


class _HeldLock:
    """The write lock of one folder as this process holds it: the OS file lock behind a thread
    lock, so that other threads of this process wait their turn as other processes do."""

    def __init__(self, path: Path):
        from filelock import FileLock

        self.path = path
        self.file_lock = FileLock(str(path), thread_local=False)
        self.thread_lock = threading.Lock()
        self.owner: int | None = None  # the thread holding it
        self.reentrant = False  # whether that thread's own later writes may enter
        self.depth = 0


_held: dict[Path, _HeldLock] = {}
_held_guard = threading.Lock()


def _held_lock(path: Path) -> _HeldLock:
    key = path.resolve()
    with _held_guard:
        if key not in _held:
            _held[key] = _HeldLock(key)
        return _held[key]


def _busy(path: Path, timeout: float) -> IndexBusyError:
    return IndexBusyError(
        f"another ingest or reindex is writing to {path.parent} (lock {path.name} is held); "
        f"wait for it to finish, or raise ingest.lock_timeout (now {timeout:g}s)"
    )


@contextmanager
def index_lock(path: Path | None, timeout: float, *, reentrant: bool = False) -> Iterator[None]:
    """Hold the index's write lock; wait up to ``timeout`` seconds, then raise ``IndexBusyError``.

    ``reentrant``: writes this thread starts while holding it enter without waiting (a server
    takes the lock before its own lock, then writes through the pipeline). Without it, a second
    writer waits like any other, in this thread too."""
    if path is None:  # an in-memory index lives in this process only
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    held = _held_lock(path)
    if held.reentrant and held.owner == threading.get_ident():
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
        return
    from filelock import Timeout

    deadline = time.monotonic() + max(timeout, 0)
    if not held.thread_lock.acquire(timeout=max(timeout, 0)):
        raise _busy(path, timeout)
    try:
        try:
            held.file_lock.acquire(timeout=0)
        except Timeout:
            if timeout > 0:
                logger.warning("another ingest is writing to %s; waiting up to %gs for it to finish", path.parent, timeout)
            try:
                held.file_lock.acquire(timeout=max(deadline - time.monotonic(), 0))
            except Timeout:
                raise _busy(path, timeout) from None
        held.owner, held.reentrant = threading.get_ident(), reentrant
        try:
            yield
        finally:
            held.owner, held.reentrant = None, False
            held.file_lock.release()
    finally:
        held.thread_lock.release()
