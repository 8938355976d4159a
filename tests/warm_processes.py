"""Child processes that start warm: real, separate OS processes for the tests that need one (a CLI
ingest killed with SIGKILL, a writer paused mid-ingest, readers and writers in other processes),
without each paying the ~10 s (several times that on two loaded cores) of importing torch,
sentence-transformers and Chroma again.

A multiprocessing *forkserver* is started once per test session (per xdist worker) with those
libraries imported and nothing else done: no model loaded, no Chroma client, no torch thread pool.
Each child is forked from it, so it starts with a fresh interpreter state (no index, lock, SQLite
connection or cache of the test process), runs ``rag-pipeline ARGS`` (``rag_pipeline.cli.main``, what
``python -m rag_pipeline.cli`` runs) or a ``python -c`` script, and ends the way a real process does:
its exit status, or -9 when a crash point (``RAG_PIPELINE_FAULT``) SIGKILLs it. The child gets the
environment and working directory of the call (``PYTHONPATH`` folders go ahead on ``sys.path``, as a
new interpreter puts them), and its stdout/stderr come back as text.

Keep real ``subprocess`` calls where the environment must be in place before the libraries are
imported (Hugging Face settings read at import time, e.g. ``HF_HUB_OFFLINE``) or where the test is
about the process start itself.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

# What `rag-pipeline ingest`/`reindex` import on a tiny index, imported once by the forkserver.
PRELOAD = [
    "numpy",
    "torch",
    "transformers",
    "sentence_transformers",
    "chromadb",
    "langchain_chroma",
    "langchain_text_splitters",
    "bm25s",
    "rag_pipeline",
    "rag_pipeline.cli",
    "rag_pipeline.embeddings",
    "rag_pipeline.vectorstores.chroma",
    "rag_pipeline.lexical.bm25",
    "warm_processes",
]

# The environment of the session (this module is imported while the tests are collected): the
# forkserver imports the libraries under it, not under whatever the first test to need a child has
# monkeypatched. Each child then gets the environment of its own call.
_SESSION_ENVIRONMENT = dict(os.environ)
_context = None


def _forkserver():
    global _context
    if _context is None:
        from multiprocessing import forkserver

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        current = dict(os.environ)
        os.environ.clear()
        os.environ.update(_SESSION_ENVIRONMENT)
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(current)
        _context = context
    return _context


def _child(kind: str, payload, env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the forked child: become the process the caller asked for, then exit with its status."""
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # PYTHONPATH as a new interpreter reads it: its folders ahead of the installed packages.
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = python_path
    code: int | str | None = 0
    try:
        if kind == "cli":
            from rag_pipeline.cli import main

            sys.argv = ["rag-pipeline", *payload]
            code = main(list(payload))
        else:  # "python": python -c CODE ARGS
            source, args = payload
            sys.argv = ["-c", *args]
            exec(compile(source, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()  # as an interpreter's own exit would (multiprocessing skips them)
        sys.stdout.flush()
        sys.stderr.flush()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.exit(code)


class WarmChild:
    """A started child, used as a ``subprocess.Popen`` opened with ``stdout=PIPE, stderr=PIPE,
    text=True``: ``pid``, ``poll()``, ``wait()``, ``communicate()``, ``kill()``, ``terminate()``, ``returncode``
    (negative: the signal that ended it), and ``stdout``/``stderr`` readable once it has ended."""

    def __init__(self, kind: str, payload, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None):
        self.args = payload
        folder = Path(tempfile.mkdtemp(prefix="warm-child-"))
        self._out, self._err = folder / "stdout", folder / "stderr"
        self.stdout = self.stderr = None
        environment = dict(os.environ if env is None else env)
        self._process = _forkserver().Process(
            target=_child,
            args=(kind, payload, environment, str(cwd or os.getcwd()), str(self._out), str(self._err)),
        )
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        code = self._process.exitcode
        if code is not None:
            self._collect()
        return code

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self._collect()
        return self._process.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self._read(self._out), self._read(self._err)

    def kill(self) -> None:
        self._process.kill()

    def terminate(self) -> None:
        self._process.terminate()

    def _read(self, path: Path) -> str:
        self._collect()
        return self._output[path]

    def _collect(self) -> None:
        if self.stdout is None:
            self._output = {
                path: path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
                for path in (self._out, self._err)
            }
            shutil.rmtree(self._out.parent, ignore_errors=True)
            self.stdout, self.stderr = io.StringIO(self._output[self._out]), io.StringIO(self._output[self._err])


def start_cli(args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd=None) -> WarmChild:
    """``rag-pipeline ARGS`` in a warm child process, started (``subprocess.Popen``)."""
    return WarmChild("cli", [str(a) for a in args], env=env, cwd=cwd)


def run_cli(args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 300, check: bool = False, cwd=None) -> subprocess.CompletedProcess:
    """``rag-pipeline ARGS`` in a warm child process, waited for (``subprocess.run`` with
    ``capture_output=True, text=True``)."""
    return _finish(start_cli(args, env=env, cwd=cwd), timeout, check)


def run_python(source: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """``python -c SOURCE ARGS`` in a warm child process, waited for."""
    return _finish(WarmChild("python", (source, [str(a) for a in args]), env=env), timeout, check)


def _finish(child: WarmChild, timeout: float, check: bool) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(30)
        raise
    result = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result
