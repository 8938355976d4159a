"""``vectorstore.client: http``: the same index, sync and crash-safety against a real Chroma server
(``chroma run`` started by a fixture), with readers in other processes that see a writer's chunks."""

from __future__ import annotations

import os
import signal

import pytest
from chroma_server import ChromaServer
from sync_helpers import (
    cli_args, config_for, corpus_v1, mutate_to_v2, paused_at, run_cli_on, snapshot, text_about, write_config, write_files,
)
from warm_processes import run_cli

from rag_pipeline import ConfigError, IndexMismatchError, IndexUnavailableError, Pipeline, load_config


@pytest.fixture
def server(tmp_path):
    running = ChromaServer(tmp_path / "chroma-server").start()
    yield running
    running.stop()


def server_config(corpus, state, server: ChromaServer, model, **settings) -> dict:
    config = config_for(corpus, None, model)
    config["vectorstore"] = server.vectorstore_section(**settings)
    config["ingest"] = {"state_directory": str(state)}
    return config


def _sources(retriever, query):
    return {d.metadata["source"] for d in retriever.invoke(query)}


def test_server_mode_needs_a_state_directory_and_keeps_secrets_out_of_the_config(tmp_path, monkeypatch):
    section = {"type": "chroma", "client": "http", "host": "db.example", "port": 8123, "token_env": "CHROMA_TOKEN"}
    base = {"loader": {"path": str(tmp_path)}, "embeddings": {"model": "BAAI/bge-small-en-v1.5"}, "vectorstore": section}
    with pytest.raises(ConfigError, match=r"^ingest\.state_directory: required with vectorstore\.client: http"):
        load_config(base, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^vectorstore: persist_directory is not used with client: http"):
        load_config({**base, "vectorstore": {**section, "persist_directory": "x"}, "ingest": {"state_directory": "s"}},
                    base_dir=tmp_path)
    config = load_config({**base, "ingest": {"state_directory": str(tmp_path / "state")}}, base_dir=tmp_path)
    store = Pipeline(config).store
    assert store.location == "http://db.example:8123"
    with pytest.raises(ConfigError, match=r"^vectorstore\.token_env: environment variable CHROMA_TOKEN is not set"):
        config.vectorstore.server_headers()
    monkeypatch.setenv("CHROMA_TOKEN", "s3cret-token-value")
    assert config.vectorstore.server_headers() == {"Authorization": "Bearer s3cret-token-value"}
    shown = run_cli(  # another process
        cli_args(write_config(config.to_dict(), tmp_path / "c.yaml"), "config", "show")[:-1],
        env={**os.environ, "CHROMA_TOKEN": "s3cret-token-value"},
    )
    assert "token_env: CHROMA_TOKEN" in shown.stdout and "s3cret" not in shown.stdout + shown.stderr


def test_ingest_query_reingest_and_guard_against_a_server(tmp_path, server, tiny_bge_dir, tiny_bge_other_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = server_config(corpus, tmp_path / "state", server, tiny_bge_dir)
    first = Pipeline.from_config(config).ingest()
    assert first.added == first.chunks > 0
    assert (tmp_path / "state" / "index_record.sqlite").is_file() and (tmp_path / "state" / "ingest.lock").exists()
    assert (tmp_path / "state" / "embedding_cache.sqlite").is_file()
    assert not (tmp_path / "state" / "chroma.sqlite3").exists()  # the vectors are on the server

    # The same ingest from the command line, with a token and debug logs: nothing added, and the
    # token's value appears nowhere (the server ignores the header; it is sent all the same).
    with_token = {**config, "vectorstore": {**config["vectorstore"], "token_env": "CHROMA_TOKEN"}}
    ingest = run_cli(  # another process
        [*cli_args(write_config(with_token, tmp_path / "token.yaml"), "ingest"), "--debug"],
        timeout=180, env={**os.environ, "CHROMA_TOKEN": "s3cret-token-value"},
    )
    assert ingest.returncode == 0, ingest.stderr
    assert "s3cret" not in ingest.stdout + ingest.stderr and "DEBUG" in ingest.stderr
    again = Pipeline.from_config(config).ingest()
    assert (again.added, again.embedded, again.skipped) == (0, 0, first.chunks)
    assert "bees.txt" in _sources(Pipeline.from_config(config).as_retriever(k=3), "bees")

    other_model = server_config(corpus, tmp_path / "state", server, tiny_bge_other_dir)
    with pytest.raises(IndexMismatchError, match="run `rag-pipeline reindex CONFIG`"):
        Pipeline.from_config(other_model).ingest()
    # An empty state folder on another machine: the record is gone, the server still holds the
    # index; the guard still refuses the wrong model (it reads the fingerprint from the server).
    with pytest.raises(IndexMismatchError):
        Pipeline.from_config(server_config(corpus, tmp_path / "state2", server, tiny_bge_other_dir)).ingest()


def test_a_reader_process_sees_a_writer_process_chunks_while_it_ingests(tmp_path, server, tiny_bge_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = server_config(corpus, tmp_path / "state", server, tiny_bge_dir)
    path = write_config(config, tmp_path / "pipeline.yaml")
    run_cli_on(path, "ingest")  # another process

    reader = Pipeline.from_config(config).as_retriever(k=100)  # every chunk: what is there, not ranking
    assert "otters.txt" not in _sources(reader, "otters")
    write_files(corpus, {"otters.txt": text_about("otters")})
    release = tmp_path / "release"
    writer = paused_at(path, "ingest", release)  # another process, held at its first write
    try:
        from sync_helpers import wait_for_file

        wait_for_file(tmp_path / "release.waiting", writer)
        # Mid-ingest, nothing recorded yet: the chunks written so far already answer (an embedded
        # folder's reader would keep its old in-memory view until the record changes).
        assert "otters.txt" in _sources(reader, "otters")
    finally:
        release.touch()
        writer.wait(timeout=180)
    assert writer.returncode == 0, writer.stderr


@pytest.mark.slow
def test_sigkill_of_an_ingest_then_rerun_equals_a_clean_run(tmp_path, server, tiny_bge_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    clean = server_config(corpus, tmp_path / "clean-state", server, tiny_bge_dir, collection="clean")
    crashed = server_config(corpus, tmp_path / "state", server, tiny_bge_dir)
    Pipeline.from_config(clean).ingest()
    Pipeline.from_config(crashed).ingest()
    mutate_to_v2(corpus)
    Pipeline.from_config(clean).ingest()

    for point in ("writing:2", "recorded:1"):
        path = write_config(crashed, tmp_path / "pipeline.yaml")
        child = run_cli(cli_args(path, "ingest"), env={**os.environ, "RAG_PIPELINE_FAULT": point}, timeout=300)
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert snapshot(crashed)["dirty"]
        assert Pipeline.from_config(crashed).ingest().recovered
        ours, theirs = snapshot(crashed), snapshot(clean)
        assert ours["ids"] == theirs["ids"] and ours["record"] == theirs["record"] and not ours["dirty"]
        write_files(corpus, {"bees.txt": text_about("bees", version=3 if point == "writing:2" else 4)})
        Pipeline.from_config(clean).ingest()


@pytest.mark.slow
def test_server_stopped_mid_ingest_is_one_line_and_a_rerun_after_restart_completes(tmp_path, server, tiny_bge_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = server_config(corpus, tmp_path / "state", server, tiny_bge_dir)
    path = write_config(config, tmp_path / "pipeline.yaml")
    release = tmp_path / "release"
    writer = paused_at(path, "ingest", release)  # another process, held at its first write
    from sync_helpers import wait_for_file

    wait_for_file(tmp_path / "release.waiting", writer)
    server.stop()
    release.touch()
    _, stderr = writer.communicate(timeout=180)
    assert writer.returncode == 2
    assert stderr.count("\n") == 1 and stderr.startswith(f"error: vectorstore: the Chroma server at {server.url}")
    with pytest.raises(IndexUnavailableError, match="cannot be reached"):
        Pipeline.from_config(config).as_retriever().invoke("bees")

    server.start()
    rerun = Pipeline.from_config(config).ingest()
    assert rerun.recovered
    scratch = server_config(corpus, tmp_path / "scratch-state", server, tiny_bge_dir, collection="scratch")
    Pipeline.from_config(scratch).ingest()
    assert snapshot(config)["ids"] == snapshot(scratch)["ids"]
    assert snapshot(config)["record"] == snapshot(scratch)["record"]


@pytest.mark.slow
def test_reindex_against_a_server_switches_a_long_lived_reader(tmp_path, server, tiny_bge_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = server_config(corpus, tmp_path / "state", server, tiny_bge_dir)
    path = write_config(config, tmp_path / "pipeline.yaml")
    run_cli_on(path, "ingest")  # another process
    reader = Pipeline.from_config(config).as_retriever(k=100)
    (corpus / "bees.txt").unlink()
    run_cli_on(path, "reindex")
    assert "bees.txt" not in _sources(reader, "bees")
    assert reader.path.arms[0].index.collection_name == "test.v2"
    report = Pipeline.from_config(config).ingest()  # drops the retired generation from the server
    assert report.added == 0
    assert Pipeline.from_config(config).store.collection_names() == {"test.v2"}
