"""Named points in an ingest where a crash test can kill or pause the process.

``RAG_PIPELINE_FAULT=POINT[:N][=ACTION]`` acts the N-th time (default 1) the ingest reaches POINT:

* ``kill`` (the default): ``SIGKILL`` itself, as a power cut or the OOM killer would;
* ``wait:FILE``: create ``FILE.waiting``, then wait (up to 120 s) until ``FILE`` exists, so a test
  can act on the index while an ingest holds it mid-way (a second ingest, queries).

The points, in the order an ingest reaches them:

* ``ray_embedding`` — (``ingest.engine: ray``) a batch of vectors came back from the actor pool
  and went into the embedding cache, more batches of the round still being embedded;
* ``loading`` — a file was read to the end and chunked, its last chunks not all written yet;
* ``embedding`` — a batch of vectors was computed and put in the embedding cache, not yet in Chroma;
* ``writing`` — a batch of chunks was upserted into Chroma, the record not yet updated;
* ``lexical`` — that batch was also written to the lexical index (``lexical:``), the record not yet updated;
* ``recorded`` — the record was committed, a changed file's old chunks not yet deleted;
* ``removing`` — deleted files were dropped from the record, their chunks not yet from Chroma.
* ``committing`` — (``serve``, ``RetrievalService``) a write's documents are chunked and embedded
  into the cache, its commit not begun; queries keep answering from the committed state.

Writes from code (``Pipeline.add_documents``/``delete``, the recorded vector store) pass the same
``embedding``, ``writing``, ``lexical``, ``recorded`` and ``removing`` points.

Unset (always, outside tests) it costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV_VAR = "RAG_PIPELINE_FAULT"

_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    target, _, action = spec.partition("=")
    point, _, nth = target.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != int(nth or 1):
        return
    action = action or "kill"
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("wait:"):
        release = Path(action.removeprefix("wait:"))
        Path(f"{release}.waiting").touch()
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        raise ValueError(f"{ENV_VAR}: unknown action {action!r}; use kill or wait:FILE")
