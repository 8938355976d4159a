"""Shared by the indexing tests: small corpora with old mtimes, and snapshots of an index."""

from __future__ import annotations

import json
import os
import sqlite3
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from conftest import pipeline_config
from warm_processes import WarmChild, run_cli, start_cli
from rag_pipeline import Pipeline
from rag_pipeline.indexing import IndexRecord

TOPICS = ["bees", "tides", "kites", "glaciers", "volcanoes", "lighthouses", "otters", "comets"]


def text_about(topic: str, version: int = 1, sentences: int = 12) -> str:
    """A few hundred characters on one topic; another ``version`` changes every sentence."""
    return " ".join(
        f"Fact {i} (edition {version}) about {topic}: {topic} are studied by people who like {topic}."
        for i in range(sentences)
    ) + "\n"


def write_files(root: Path, files: dict[str, str], age_seconds: float = 3600) -> None:
    """Write files and date them in the past, as files are that were not just edited."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.time() - age_seconds
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        os.utime(path, (stamp, stamp))


def corpus_v1() -> dict[str, str]:
    return {f"{topic}.txt": text_about(topic) for topic in TOPICS[:6]}


def mutate_to_v2(root: Path) -> None:
    """Two files changed, one deleted, two added."""
    write_files(root, {"bees.txt": text_about("bees", 2), "tides.txt": text_about("tides", 2, sentences=6)})
    (root / "kites.txt").unlink()
    write_files(root, {"otters.txt": text_about("otters"), "deep/comets.txt": text_about("comets")})


def config_for(corpus: Path, index: Path, model: Path, **ingest) -> dict:
    config = pipeline_config(corpus, index, str(model))
    config["chunker"] = {"type": "recursive", "chunk_size": 300, "chunk_overlap": 0}
    config["vectorstore"]["write_batch_size"] = 4
    if ingest:
        config["ingest"] = ingest
    return config


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def cli_args(config_path: Path, *args: str) -> list[str]:
    """``rag-pipeline ARGS CONFIG -q`` as the arguments of :func:`warm_processes.run_cli`."""
    return [*args, str(config_path), "-q"]


def cli_command(config_path: Path, *args: str) -> list[str]:
    """The same as a command line for ``subprocess`` (a cold process: it imports everything)."""
    return [sys.executable, "-m", "rag_pipeline.cli", *cli_args(config_path, *args)]


def run_cli_on(config_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``rag-pipeline ARGS CONFIG -q`` in another process (a warm one, see warm_processes); it must succeed."""
    return run_cli(cli_args(config_path, *args), check=True, timeout=timeout)


def ingest_killed_at(config_path: Path, point: str) -> subprocess.CompletedProcess:
    """Run ``rag-pipeline ingest`` in a child process (a warm one, see warm_processes) that SIGKILLs
    itself at fault ``point`` (``RAG_PIPELINE_FAULT``, see rag_pipeline.indexing.faults); fail if it
    was not killed there."""
    child = run_cli(cli_args(config_path, "ingest"), env={**os.environ, "RAG_PIPELINE_FAULT": point}, timeout=300)
    assert child.returncode == -signal.SIGKILL, f"not killed at {point}: {child.stdout}{child.stderr}"
    return child


def record_snapshot(record: IndexRecord, collection: str) -> dict:
    """The record of one collection as plain data, without timestamps (for comparisons). Chunk rows
    are read from the file itself, so a row whose file is not recorded shows up too."""
    files = record.files(collection)
    with sqlite3.connect(f"file:{record.path}?mode=ro", uri=True) as connection:
        chunks = sorted(connection.execute("SELECT id, source FROM chunks WHERE collection = ?", (collection,)))
    return {
        "files": {source: (r.size, r.mtime_ns, r.sha256, r.settings, r.chunks) for source, r in files.items()},
        "chunks": chunks,
    }


def snapshot(config: dict) -> dict:
    """Everything that must be identical after a crash and a re-run as after one clean run."""
    pipe = Pipeline.from_config(config)
    store = pipe.store
    name = store.collection_name
    ids = sorted(store.ids())
    positions = [(d.metadata["doc_id"], d.metadata["chunk_index"]) for d in store.documents(ids)]
    with IndexRecord(pipe.state.record_path, readonly=True) as record:
        recorded = record_snapshot(record, name)
        collections = {n: s for n, s in record.collections(store.config.collection).items()}
        dirty = record.is_dirty(name)
    return {
        "ids": sorted(ids),
        "duplicate_ids": len(ids) - len(set(ids)),
        "duplicate_positions": len(positions) - len(set(positions)),
        "record": recorded,
        "collections": collections,
        "chroma_collections": sorted(store.collection_names()),
        "dirty": dirty,
    }


def wait_for_file(path: Path, child: subprocess.Popen | WarmChild, timeout: float = 120) -> None:
    """Wait until a paused child (``RAG_PIPELINE_FAULT=...=wait:FILE``) has created ``path``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before pausing: {child.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("the child never reached its pause point")
        time.sleep(0.05)


def paused_at(config_path: Path, command: str, release: Path) -> WarmChild:
    """A real ``rag-pipeline <command>`` process (a warm one, see warm_processes), started; it
    holds at its first write (chunks upserted, record not yet updated) until ``release`` exists."""
    return start_cli(cli_args(config_path, command), env={**os.environ, "RAG_PIPELINE_FAULT": f"writing:1=wait:{release}"})


@contextmanager
def paused_at_first_write(config_path: Path, command: str, release: Path) -> Iterator[WarmChild]:
    """A real ``rag-pipeline <command>`` process, held at its first write (chunks upserted, record
    not yet updated) until the block ends; then released and waited for."""
    child = paused_at(config_path, command, release)
    try:
        wait_for_file(Path(f"{release}.waiting"), child)
        yield child
    finally:
        release.touch()
        child.wait(timeout=120)


def jsonl_corpus(records: int, changed_every: int = 0) -> str:
    """A JSONL file of short records, one chunk each; with ``changed_every=n`` every n-th record's
    text is another edition (the rest keep their text, so their chunk ids)."""
    lines = []
    for number in range(records):
        topic = TOPICS[number % len(TOPICS)]
        edition = 2 if changed_every and number % changed_every == 0 else 1
        text = f"Record {number} (edition {edition}) is about {topic}, which people who like {topic} study."
        lines.append(json.dumps({"id": f"r{number}", "text": text, "topic": topic}))
    return "\n".join(lines) + "\n"
