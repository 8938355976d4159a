"""The search page at ``/``, rendered by a real headless Chromium against a started server (issue 13.6).

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped, with that reason, without it.
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlencode

import pytest
from bs4 import BeautifulSoup

pytest.importorskip("fastapi")

from serving import hybrid_index, server  # noqa: E402,F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")


def chromium(tmp_path, url: str, *args: str) -> str:
    """Load ``url`` headless, let its scripts and requests finish, return stdout (the DOM with --dump-dom)."""
    result = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000", *args, url,
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_page_shows_each_result_with_its_position_and_every_score(server, hybrid_index, tmp_path):
    _, pipe = hybrid_index
    query = "how do I fix a flat bicycle tyre?"
    expected = pipe.as_retriever(k=3).invoke(query)
    url = f"{server.url}/?{urlencode({'q': query, 'k': 3})}"
    page = BeautifulSoup(chromium(tmp_path, url, "--dump-dom"), "html.parser")

    results = page.select("li.result")
    assert len(results) == 3
    for item, document in zip(results, expected):
        where = item.select_one(".where").get_text()
        assert where.startswith(f"{document.metadata['doc_id']} · chunk {document.metadata['chunk_index']}")
        shown = {row["data-score"]: row.select_one("td.value").get_text() for row in item.select("tr[data-score]")}
        assert shown["score"] == f"{document.metadata['score']:.4f}"
        for arm in ("dense", "bm25"):
            if f"{arm}_rank" in document.metadata:
                assert shown[f"{arm}_rank"] == f"#{document.metadata[f'{arm}_rank']}"
        assert item.select_one("tr.ranked-by")["data-score"] == "score"
        assert item.select_one('tr[data-score="score"] td.name').get_text() == "fused score (the arms combined)"
    assert page.select_one("#status").get_text().startswith("3 results in ")

    screenshot = tmp_path / "page.png"
    chromium(tmp_path, url, f"--screenshot={screenshot}", "--window-size=1100,900", "--hide-scrollbars")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_the_page_shows_the_servers_message_for_a_bad_request(server, tmp_path):
    page = BeautifulSoup(chromium(tmp_path, f"{server.url}/?{urlencode({'q': '   '})}", "--dump-dom"), "html.parser")
    status = page.select_one("#status")
    assert "error" in status["class"]
    assert status.get_text() == "400: the query is empty: give the text to search for"
    assert page.select("li.result") == []
