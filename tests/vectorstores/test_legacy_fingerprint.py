"""An index built before model identities were recorded still opens with its own model (its
fingerprint names the model but not the hash of its weights), and still refuses another one."""

import json

import pytest

from conftest import pipeline_config
from rag_pipeline import IndexMismatchError, Pipeline
from rag_pipeline.vectorstores import chroma
from rag_pipeline.vectorstores.chroma import FINGERPRINT_KEY


def _strip_identity(pipe):
    collection = pipe.store.collection
    fingerprint = json.loads(collection.metadata[FINGERPRINT_KEY])
    del fingerprint["identity"]
    collection.modify(metadata={FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)})


def test_a_legacy_index_adopts_the_configured_identity(small_corpus, tmp_path, tiny_bge_dir, monkeypatch):
    config = pipeline_config(small_corpus, tmp_path / "index", str(tiny_bge_dir))
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    _strip_identity(pipe)
    warnings = []
    # (a spy rather than caplog: a library configuring logging elsewhere in the suite can disable loggers)
    monkeypatch.setattr(chroma.logger, "warning", lambda message, *args: warnings.append(message % args))
    again = Pipeline.from_config(config)
    assert again.query("tides", k=1)
    assert len(warnings) == 1 and "records no model identity" in warnings[0]
    recorded = json.loads(Pipeline.from_config(config).store.collection.metadata[FINGERPRINT_KEY])
    assert recorded["identity"] == again.embeddings.fingerprint(load_model=False)["identity"]


def test_a_legacy_index_still_refuses_another_model(small_corpus, tmp_path, tiny_bge_dir, tiny_bge_other_dir):
    pipe = Pipeline.from_config(pipeline_config(small_corpus, tmp_path / "index", str(tiny_bge_dir)))
    pipe.ingest()
    _strip_identity(pipe)
    other = Pipeline.from_config(pipeline_config(small_corpus, tmp_path / "index", str(tiny_bge_other_dir)))
    with pytest.raises(IndexMismatchError):
        other.ingest()
