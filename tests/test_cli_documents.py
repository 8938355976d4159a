"""The CLI verbs over what an index holds: ``ls``, ``stats``, ``export``, ``delete`` and
``ingest --prune-api`` (documents added from code beside the folder's files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from langchain_core.documents import Document

sys.path.insert(0, str(Path(__file__).parent / "indexing"))
from sync_helpers import config_for, corpus_v1, write_config, write_files  # noqa: E402

from rag_pipeline import Pipeline  # noqa: E402
from rag_pipeline.cli import main  # noqa: E402

NOTE = "Swifts sleep on the wing and can stay aloft for ten months. " * 8


@pytest.fixture
def indexed(tmp_path, tiny_bge_dir):
    """A folder of six files ingested, plus one source and one entry added from code."""
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = config_for(corpus, tmp_path / "index", tiny_bge_dir)
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    pipe.add_documents([Document(page_content=NOTE, metadata={"kind": "note"})], source="notes/swifts")
    pipe.vectorstore.add_texts(["A single wren sings."], ids=["wren"])
    return config, [str(write_config(config, tmp_path / "config.yaml")), "-q"]


def test_ls_lists_every_source_with_its_origin_and_chunk_count(indexed, capsys):
    config, args = indexed
    assert main(["ls", *args, "--json"]) == 0
    listed = {s["source"]: s for s in json.loads(capsys.readouterr().out)}
    assert set(listed) == {f"{name}" for name in corpus_v1()} | {"notes/swifts", "vectorstore"}
    assert {s["origin"] for n, s in listed.items() if n.endswith(".txt")} == {"folder"}
    assert listed["notes/swifts"]["origin"] == listed["vectorstore"]["origin"] == "api"
    assert listed["vectorstore"]["chunks"] == 1
    assert sum(s["chunks"] for s in listed.values()) == Pipeline.from_config(config).store.count()

    assert main(["ls", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("collection 'test': 8 sources, ") and "last ingest 20" in out
    wren_line = next(line for line in out.splitlines() if line.endswith("  vectorstore"))
    assert wren_line.startswith("  api         1  20")


def test_stats_gives_model_fingerprint_counts_and_sizes(indexed, capsys, tiny_bge_dir):
    config, args = indexed
    assert main(["stats", *args, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    count = Pipeline.from_config(config).store.count()
    assert stats["collection"] == stats["physical_collection"] == "test"
    assert stats["model"] == tiny_bge_dir.name and stats["fingerprint"]["dimension"] > 0
    assert stats["chunks"] == stats["recorded_chunks"] == count
    assert stats["sources"] == {"folder": 6, "api": 2}
    disk = stats["disk_bytes"]
    assert min(disk["vectorstore"], disk["record"], disk["embedding_cache"]) > 0
    assert disk["total"] == disk["vectorstore"] + disk["record"] + disk["embedding_cache"] + disk["lexical"]
    index = Path(config["vectorstore"]["persist_directory"])
    assert disk["total"] == sum(p.stat().st_size for p in index.rglob("*") if p.is_file())

    assert main(["stats", *args]) == 0
    assert f"chunks: {count}\n" in capsys.readouterr().out


def test_export_writes_every_chunk_as_jsonl_optionally_with_vectors(indexed, tmp_path, capsys):
    config, args = indexed
    out = tmp_path / "chunks.jsonl"
    assert main(["export", *args, "--vectors", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    pipe = Pipeline.from_config(config)
    assert capsys.readouterr().err == f"wrote {len(lines)} chunks to {out}\n"
    assert sorted(line["id"] for line in lines) == sorted(pipe.store.ids())
    wren = next(line for line in lines if line["id"] == "wren")
    assert (wren["content"], wren["source"], wren["origin"]) == ("A single wren sings.", "vectorstore", "api")
    swift = next(line for line in lines if line["source"] == "notes/swifts")
    assert swift["metadata"]["kind"] == "note" and swift["origin"] == "api"
    assert swift["vector"] == pytest.approx(pipe.store.vectors([swift["id"]])[0].tolist(), abs=1e-6)

    assert main(["export", *args]) == 0  # to standard output, without vectors
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == len(lines) and "vector" not in printed[0]


def test_delete_removes_sources_and_ids_from_code_and_refuses_folder_files(indexed, capsys):
    config, args = indexed
    assert main(["delete", *args, "--source", "notes/swifts"]) == 0
    assert capsys.readouterr().out.startswith("deleted ")
    assert main(["delete", *args, "--id", "wren", "--id", "never-was"]) == 0
    assert "deleted 1 of 2 chunk id(s)" in capsys.readouterr().out
    assert {s.origin for s in Pipeline.from_config(config).sources()} == {"folder"}

    assert main(["delete", *args, "--source", "bees.txt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: source 'bees.txt' is a file under loader.path") and err.count("\n") == 1
    assert main(["delete", *args, "--source", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: no source 'nope' in collection 'test'")


def test_ingest_keeps_documents_from_code_unless_prune_api(indexed, capsys):
    config, args = indexed
    assert main(["ingest", *args, "--dry-run"]) == 0
    assert "2 sources added from code kept (--prune-api removes them)" in capsys.readouterr().out
    assert main(["ingest", *args]) == 0
    assert "0 removed" in capsys.readouterr().out
    assert main(["ingest", *args, "--dry-run", "--prune-api"]) == 0
    out = capsys.readouterr().out
    assert "remove 2 files" in out and "  remove notes/swifts" in out
    assert main(["ingest", *args, "--prune-api"]) == 0
    assert "2 removed" in capsys.readouterr().out
    assert {s.origin for s in Pipeline.from_config(config).sources()} == {"folder"}


def test_the_verbs_on_an_index_never_ingested_say_so(tmp_path, tiny_bge_dir, capsys):
    config = config_for(tmp_path, tmp_path / "index", tiny_bge_dir)
    path = str(write_config(config, tmp_path / "config.yaml"))
    for verb in (["ls"], ["stats"], ["export"], ["delete", "--source", "x"]):
        assert main([verb[0], path, *verb[1:]]) == 2
        assert capsys.readouterr().err.startswith("error: no index at ")
    assert not (tmp_path / "index").exists()
