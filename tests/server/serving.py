"""Start ``rag-pipeline serve`` as a real process on a free port, and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from conftest import pipeline_config
from model_factory import REPO

from rag_pipeline import Pipeline


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen):
        self.url = url
        self.process = process

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one HTTP request (``Host``: the loopback address it
        connects to, unless ``headers`` names another)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                status, raw, kind = reply.status, reply.read(), reply.headers.get_content_type()
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers.get_content_type()
        return status, json.loads(raw) if kind == "application/json" else raw.decode()


LOOPBACK_BASE_URL = "http://127.0.0.1"


def http_client(pipeline: Pipeline, settings: Any = None, *, warm_up: bool = True, service_settings: Any = None):
    """FastAPI's ``TestClient`` over ``create_app(pipeline, settings)``, in this process, sending
    ``Host: 127.0.0.1`` as a loopback client does (its default, ``testserver``, is not a loopback
    name, and the server's Host check refuses it)."""
    from fastapi.testclient import TestClient

    from rag_pipeline.server import create_app

    app = create_app(pipeline, settings, warm_up=warm_up, service_settings=service_settings)
    return TestClient(app, base_url=LOOPBACK_BASE_URL)


@contextmanager
def serving(config: Path, *extra: str, env: dict[str, str] | None = None, startup_s: float = 180) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rag_pipeline.cli", "serve", str(config), "--port", str(port), "-q", *extra],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}: {process.stderr.read()}")
            try:
                if server.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer /health in time")
            time.sleep(0.2)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (a server drains and exits), then SIGKILL if it has not exited within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page (``/metrics``), by (name, sorted labels), read with
    prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def ingested(folder: Path, config: dict) -> tuple[Path, Pipeline]:
    """``config`` ingested, and written as ``folder/config.yaml``: (that path, the pipeline)."""
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, pipe


@pytest.fixture(scope="module")
def hybrid_index(tmp_path_factory, sample_corpus, tiny_bge_dir):
    """A hybrid (dense + BM25) index of the sample corpus, so that results carry both arms' scores."""
    folder = tmp_path_factory.mktemp("serve-index")
    config = pipeline_config(
        sample_corpus, folder / "index", str(tiny_bge_dir),
        lexical={"type": "bm25"},
        retriever={"type": "hybrid", "k": 3, "fetch_k": 10},
    )
    return ingested(folder, config)


@pytest.fixture(scope="module")
def server(hybrid_index):
    with serving(hybrid_index[0]) as running:
        yield running
