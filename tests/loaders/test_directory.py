import pytest

from rag_pipeline import LoaderError
from rag_pipeline.loaders import DirectoryLoader, DirectoryLoaderConfig


def _load(path, **options):
    return DirectoryLoader(DirectoryLoaderConfig(path=path, show_progress=False, **options)).load()


def test_sample_corpus_loads_every_format(sample_corpus):
    result = _load(sample_corpus)
    assert result.errors == []
    assert result.files_loaded == result.files_seen >= 20
    types = {d.metadata["file_type"] for d in result.documents}
    assert types == {"md", "txt", "html", "pdf", "csv", "jsonl"}
    assert len(result.documents) >= 30
    ids = [d.metadata["doc_id"] for d in result.documents]
    assert len(ids) == len(set(ids))


def test_pdf_is_split_per_page(sample_corpus):
    result = _load(sample_corpus, include=["**/*.pdf"])
    handbook = [d for d in result.documents if d.metadata["source"] == "reports/weekend-projects-handbook.pdf"]
    assert [d.metadata["page"] for d in handbook] == [1, 2, 3]
    assert [d.metadata["doc_id"] for d in handbook][1] == "reports/weekend-projects-handbook.pdf#page=2"


def test_html_keeps_visible_text_only(sample_corpus):
    result = _load(sample_corpus, include=["**/*.html"])
    assert len(result.documents) == 5
    for document in result.documents:
        assert "trackingPixelInit" not in document.page_content  # <script>
        assert "zxqHiddenBanner" not in document.page_content  # <style>
        assert document.metadata["title"]
        assert len(document.page_content.split()) > 100


def test_csv_and_jsonl_records_become_documents_with_metadata(sample_corpus):
    result = _load(sample_corpus, include=["**/*.csv", "**/*.jsonl"])
    by_id = {d.metadata["doc_id"]: d for d in result.documents}
    tea = by_id["tables/quick-facts.csv#row=tea-types"]
    assert tea.metadata["category"] and tea.metadata["title"] and "text" not in tea.metadata
    jet = by_id["faq.jsonl#line=jet-lag"]
    assert isinstance(jet.metadata["tags"], str)  # lists flattened for Chroma


def test_unreadable_files_are_reported_and_the_rest_loaded(small_corpus):
    (small_corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog")  # truncated
    (small_corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (small_corpus / "people.csv").write_text("name,age\nada,36\n")
    (small_corpus / "mixed.jsonl").write_text('{"text": "good line"}\n{not json}\n')
    result = _load(small_corpus)
    reasons = {e.source: e.reason for e in result.errors}
    assert "corrupt or truncated PDF" in reasons["broken.pdf"]
    assert "not valid utf-8" in reasons["latin1.txt"]
    assert "no 'text' column" in reasons["people.csv"]
    assert "line 2: invalid JSON" in reasons["mixed.jsonl"]
    loaded = {d.metadata["doc_id"] for d in result.documents}
    assert {"bees.md", "tides.txt", "tea.html", "mixed.jsonl#line=1"} <= loaded


def test_on_error_fail_stops_at_the_first_bad_file(small_corpus):
    (small_corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LoaderError, match=r"latin1.txt: not valid utf-8"):
        _load(small_corpus, on_error="fail")


def test_include_and_exclude_globs(sample_corpus):
    result = _load(sample_corpus, include=["guides/*.md"], exclude=["**/git-*"])
    sources = {d.metadata["source"] for d in result.documents}
    assert sources and all(s.startswith("guides/") for s in sources)
    assert "guides/git-branching.md" not in sources
