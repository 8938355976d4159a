"""A running ``rag-pipeline serve`` and its writes, over real HTTP (issue 22): a ``POST /documents``
in progress is invisible to queries until it commits and then wholly visible, and a server
SIGKILLed in the middle of one leaves an index that the next start serves without a half-written
chunk. The server is held or killed at a named write point (``RAG_PIPELINE_FAULT``, see
``rag_pipeline.indexing.faults``), so the test knows where the write is without timing it."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import pipeline_config

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import serving  # noqa: E402

from rag_pipeline import Pipeline  # noqa: E402

ANIMALS = [
    "The quokka is a small marsupial of Rottnest Island that seems to smile for photographs.",
    "The axolotl is a salamander that keeps its gills all its life and regrows lost limbs.",
    "The pangolin is a scaly anteater that rolls into a ball when it is threatened.",
    "The okapi is a forest giraffe with zebra stripes on its legs, found in the Congo.",
    "The narwhal is a whale of the Arctic whose males grow one long spiral tusk.",
]


def documents(batch: str) -> dict:
    return {
        "source": f"api:{batch}",
        "documents": [{"content": text, "metadata": {"batch": batch}} for text in ANIMALS],
    }


def served(server, batch: str) -> list[str]:
    """The contents of every chunk of ``batch`` that queries see (a filter on its metadata, k well
    above the batch's size, both arms of the hybrid)."""
    status, body = server.request(
        "POST", "/query", {"query": "an animal with a tusk, gills or scales", "k": 20, "filter": {"batch": batch}}
    )
    assert status == 200, body
    return sorted(result["content"] for result in body["results"])


def chunk_count(server) -> int:
    status, body = server.request("GET", "/stats")
    assert status == 200, body
    return body["chunks"]


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture()
def index_config(tmp_path, sample_corpus, tiny_bge_dir) -> Path:
    config = pipeline_config(
        sample_corpus, tmp_path / "index", str(tiny_bge_dir),
        lexical={"type": "tantivy"},  # the default: changed in place, so a kill can leave it ahead of its table
        retriever={"type": "hybrid", "k": 3, "fetch_k": 20},
    )
    Pipeline.from_config(config).ingest()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def post_in_background(server, body: dict) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def post() -> None:
        try:
            outcome["reply"] = server.request("POST", "/documents", body)
        except OSError as error:  # the server died under the request
            outcome["error"] = error

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


def test_a_write_is_invisible_while_it_runs_then_wholly_visible_and_a_sigkill_mid_post_loses_nothing(
    index_config, tmp_path
):
    # 1. A server that SIGKILLs itself mid-POST: chunks upserted into Chroma, the record not yet.
    with serving(index_config, env={"RAG_PIPELINE_FAULT": "writing:1"}) as server:
        before = chunk_count(server)
        thread, outcome = post_in_background(server, documents("killed"))
        thread.join(timeout=120)
        assert server.process.wait(timeout=30) == -signal.SIGKILL
        assert "error" in outcome, outcome  # the client saw the connection drop, not a 200

    # 2. The next start reconciles the index with its record before it serves: nothing of the
    # killed request is left in either index, nothing else is lost.
    release = tmp_path / "release"
    with serving(index_config, env={"RAG_PIPELINE_FAULT": f"committing:1=wait:{release}"}) as server:
        assert chunk_count(server) == before
        assert served(server, "killed") == []

        # 3. A write held once its documents are embedded, before its commit, is invisible ...
        thread, outcome = post_in_background(server, documents("held"))
        wait_for(Path(f"{release}.waiting"))
        assert served(server, "held") == []
        assert chunk_count(server) == before
        assert server.request("GET", "/ready") == (200, {"status": "ready"})
        # ... and once it commits, every one of its documents is found, at once.
        release.touch()
        thread.join(timeout=120)
        status, body = outcome["reply"]
        assert status == 200, body
        assert served(server, "held") == sorted(ANIMALS)
        assert chunk_count(server) == before + len(ANIMALS)

        # 4. The killed request, sent again, lands whole (no id of it is left half-owned).
        status, body = server.request("POST", "/documents", documents("killed"))
        assert status == 200, body
        assert served(server, "killed") == sorted(ANIMALS)
        assert chunk_count(server) == before + 2 * len(ANIMALS)
