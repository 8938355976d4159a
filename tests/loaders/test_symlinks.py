"""A symlink in a corpus must not publish a file from outside it (issue 7, item 9)."""

from __future__ import annotations

import builtins
import os

import pytest

from rag_pipeline.loaders import DirectoryLoader, DirectoryLoaderConfig


def _load(path, **options):
    return DirectoryLoader(DirectoryLoaderConfig(path=path, show_progress=False, **options)).load()


@pytest.fixture
def corpus(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("The vault code is 0451.\n", encoding="utf-8")
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "real.txt").write_text("Owls turn their heads to look around.\n", encoding="utf-8")
    (root / "real.md").write_text("# Moss\nMoss grows on the shady side of rocks.\n", encoding="utf-8")
    os.symlink(outside / "secret.txt", root / "leak.txt")  # absolute link out
    os.symlink("../outside/secret.txt", root / "relative-leak.md")  # relative link out
    os.symlink("relative-leak.md", root / "chain.txt")  # inside -> inside -> out
    os.symlink("sub/real.txt", root / "inside.txt")  # stays inside: followed
    return root


def test_links_that_resolve_outside_the_root_are_reported_and_not_read(corpus, monkeypatch):
    if os.path.exists("/etc/hostname"):
        os.symlink("/etc/hostname", corpus / "hostname.txt")  # the example
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    result = _load(corpus)
    loaded = {d.metadata["doc_id"]: d.page_content for d in result.documents}
    assert set(loaded) == {"real.md", "sub/real.txt", "inside.txt"}
    assert loaded["inside.txt"] == loaded["sub/real.txt"]
    refused = {e.source: e.reason for e in result.errors}
    expected = {"leak.txt", "relative-leak.md", "chain.txt"}
    if (corpus / "hostname.txt").is_symlink():
        expected.add("hostname.txt")
    assert set(refused) == expected
    secret = os.path.realpath(corpus.parent / "outside" / "secret.txt")
    assert refused["chain.txt"] == (
        f"symlink to {secret}, outside loader.path; not followed (set loader.follow_external_links: true to read it)"
    )
    assert secret not in opened
    assert not any("0451" in text for text in loaded.values())


def test_follow_external_links_opts_in(corpus):
    result = _load(corpus, follow_external_links=True)
    loaded = {d.metadata["doc_id"]: d.page_content for d in result.documents}
    assert result.errors == []
    assert loaded["leak.txt"] == loaded["chain.txt"] == "The vault code is 0451.\n"


def test_a_root_reached_through_a_symlink_still_reads_its_files(corpus, tmp_path):
    os.symlink(corpus, tmp_path / "alias")
    result = _load(tmp_path / "alias")
    assert {d.metadata["doc_id"] for d in result.documents} == {"real.md", "sub/real.txt", "inside.txt"}


def test_a_single_file_loader_path_is_read_wherever_it_points(corpus):
    """loader.path naming one file: the user chose that file, so its link is followed."""
    result = _load(corpus / "leak.txt")
    assert result.errors == [] and [d.page_content for d in result.documents] == ["The vault code is 0451.\n"]
