"""The work spent on one PDF is bounded in pages and seconds (issue 7, item 10)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from pypdf import PageObject, PdfWriter

from rag_pipeline.loaders import DirectoryLoader, DirectoryLoaderConfig

SAMPLE_PDF = Path(__file__).resolve().parents[2] / "data" / "corpus" / "reports" / "weekend-projects-handbook.pdf"


def _load(path, **options):
    return DirectoryLoader(DirectoryLoaderConfig(path=path, show_progress=False, **options)).load()


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    writer = PdfWriter(clone_from=str(SAMPLE_PDF))  # 3 pages of text
    for _ in range(47):
        writer.add_blank_page(width=200, height=200)
    with open(root / "long.pdf", "wb") as handle:
        writer.write(handle)
    (root / "note.txt").write_text("Other files are still read.\n", encoding="utf-8")
    return root


@pytest.fixture
def extract_calls(monkeypatch):
    calls = []
    real = PageObject.extract_text

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PageObject, "extract_text", counting)
    return calls


def _reasons(result):
    return {e.source: e.reason for e in result.errors}


def test_a_pdf_over_pdf_max_pages_is_refused_before_a_page_is_read(corpus, extract_calls):
    result = _load(corpus, pdf_max_pages=49)
    assert _reasons(result) == {"long.pdf": "50 pages is over loader.pdf_max_pages (49); raise it to read this file"}
    assert extract_calls == []
    assert [d.metadata["doc_id"] for d in result.documents] == ["note.txt"]


def test_a_pdf_within_pdf_max_pages_is_read(corpus, extract_calls):
    result = _load(corpus, pdf_max_pages=50)
    assert result.errors == [] and len(extract_calls) == 50
    assert [d.metadata["doc_id"] for d in result.documents] == [
        "long.pdf#page=1", "long.pdf#page=2", "long.pdf#page=3", "note.txt"]


@pytest.mark.parametrize("stuck", ["busy", "sleep"])
def test_a_page_that_never_finishes_is_interrupted(corpus, monkeypatch, stuck):
    """In the main thread a timer interrupts the parser inside one page, and a caller's alarm survives."""

    def never_returns(self, *args, **kwargs):
        if stuck == "sleep":
            time.sleep(3600)
        while True:
            pass

    monkeypatch.setattr(PageObject, "extract_text", never_returns)
    outer_fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: outer_fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        started = time.monotonic()
        result = _load(corpus, pdf_max_seconds=0.3)
        elapsed = time.monotonic() - started
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        handler = signal.getsignal(signal.SIGALRM)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert _reasons(result) == {
        "long.pdf": "reading took longer than loader.pdf_max_seconds (0.3 s); raise it to read this file"
    }
    assert [d.metadata["doc_id"] for d in result.documents] == ["note.txt"]
    assert elapsed < 10
    # The caller's own alarm is back, with what was left of its time.
    assert handler is not previous and handler.__code__.co_name == "<lambda>"
    assert 30 - elapsed - 1 < remaining <= 30 - elapsed + 0.1 and outer_fired == []


def test_outside_the_main_thread_the_limit_is_checked_between_pages(corpus, monkeypatch):
    calls = []

    def slow(self, *args, **kwargs):
        calls.append(1)
        time.sleep(0.05)
        return ""

    monkeypatch.setattr(PageObject, "extract_text", slow)
    results = []
    worker = threading.Thread(target=lambda: results.append(_load(corpus, pdf_max_seconds=0.5)))
    worker.start()
    worker.join(60)
    assert not worker.is_alive()
    assert _reasons(results[0]) == {
        "long.pdf": "reading took longer than loader.pdf_max_seconds (0.5 s); raise it to read this file"
    }
    assert 5 <= len(calls) < 50  # stopped part-way, not after every page
