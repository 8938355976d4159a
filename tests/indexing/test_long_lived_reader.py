"""A long-lived reader (a notebook, a server process) and writers in other processes (issue 7,
item 12): the reader answers from the index as it is now, across an ingest and a reindex."""

from rag_pipeline import Pipeline

from sync_helpers import config_for, corpus_v1, run_cli_on, text_about, write_config, write_files


def _sources(retriever, query):
    return {d.metadata["source"] for d in retriever.invoke(query)}


def test_a_long_lived_retriever_follows_other_processes_ingest_and_reindex(tmp_path, tiny_bge_dir):
    corpus = tmp_path / "corpus"
    write_files(corpus, corpus_v1())
    config = config_for(corpus, tmp_path / "index", tiny_bge_dir)
    path = write_config(config, tmp_path / "pipeline.yaml")
    run_cli_on(path, "ingest")  # another process

    reader = Pipeline.from_config(config).as_retriever(k=100)  # every chunk: what is there, not ranking
    assert "otters.txt" not in _sources(reader, "otters")

    write_files(corpus, {"otters.txt": text_about("otters")})
    run_cli_on(path, "ingest")  # another process
    assert "otters.txt" in _sources(reader, "otters")  # not the process's old in-memory view

    (corpus / "bees.txt").unlink()
    run_cli_on(path, "reindex")
    found = _sources(reader, "otters")  # the old collection is gone: no NotFoundError, the new one serves
    assert "otters.txt" in found and "bees.txt" not in found
    assert reader.path.arms[0].index.collection_name == "test.v2"
