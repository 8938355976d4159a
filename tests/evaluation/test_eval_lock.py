"""``eval`` writes its collection into the index folder, so it takes the ingest write lock
(issue 7, item 13): it waits for a running ingest, and gives up with the usual one-line error."""

import pytest

from conftest import pipeline_config
from eval_helpers import write_beir
from rag_pipeline import IndexBusyError, Pipeline
from rag_pipeline.evaluation import evaluate, load_beir
from rag_pipeline.indexing.lock import index_lock


def test_eval_waits_for_the_index_lock_then_gives_up(tmp_path, tiny_bge_dir):
    dataset = load_beir(write_beir(tmp_path / "tiny"))
    config = pipeline_config(tmp_path, tmp_path / "index", str(tiny_bge_dir), chunker={"type": "none"})
    config["ingest"] = {"lock_timeout": 0.2}
    with index_lock(Pipeline.from_config(config).state.lock_path, timeout=0):
        with pytest.raises(IndexBusyError, match="another ingest or reindex is writing"):
            evaluate(config, dataset, show_progress=False)
    assert evaluate(config, dataset, show_progress=False).metrics["first_stage"]["ndcg@10"] >= 0
