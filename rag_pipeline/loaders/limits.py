"""A wall-clock bound on work that may not return: a parser stuck on hostile input.

In the main thread (the CLI, a notebook, a script) a real-time timer interrupts the work wherever it
is, even inside one call that never returns to our code. Elsewhere (signals can only be handled in
the main thread) the work must call ``Deadline.check`` between steps, so one step that never ends
cannot be interrupted there.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class TimeLimitExceeded(BaseException):
    """Not an ``Exception``: parsers catch ``Exception`` broadly on bad input and would swallow it."""


class Deadline:
    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise TimeLimitExceeded(self.seconds)


def _timer_available() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None) -> Iterator[Deadline]:
    """Raise ``TimeLimitExceeded`` in the body once ``seconds`` have passed (None: no limit).

    An alarm set by the caller (e.g. a test's own timeout) is kept: it is re-armed with its remaining
    time afterwards, and when it is due first it is left alone and only ``Deadline.check`` applies.
    """
    deadline = Deadline(seconds)
    if seconds is None or not _timer_available():
        yield deadline
        return
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_handler is None or (outer_delay and outer_delay <= seconds):
        # A handler installed outside Python cannot be put back; an earlier alarm will fire first anyway.
        yield deadline
        return
    started = time.monotonic()

    def expire(signum, frame):
        raise TimeLimitExceeded(seconds)

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield deadline
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_delay:
            remaining = outer_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), outer_interval)
