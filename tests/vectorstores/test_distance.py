"""A collection's distance is fixed when it is built; a config that says another is refused
(issue 7, item 4): scores computed for the wrong space were silently wrong."""

import pytest

from conftest import pipeline_config
from rag_pipeline import IndexMismatchError, Pipeline


def _config(corpus, index, model, distance):
    config = pipeline_config(corpus, index, str(model))
    config["vectorstore"]["distance"] = distance
    return config


def test_a_changed_distance_is_refused_with_the_fix(small_corpus, tmp_path, tiny_bge_dir):
    Pipeline.from_config(_config(small_corpus, tmp_path / "index", tiny_bge_dir, "cosine")).ingest()
    changed = Pipeline.from_config(_config(small_corpus, tmp_path / "index", tiny_bge_dir, "l2"))
    with pytest.raises(IndexMismatchError, match=r"vectorstore\.distance: .* built with distance 'cosine', the config says 'l2'"):
        changed.query("moon and tides")
    with pytest.raises(IndexMismatchError, match="set distance: cosine"):
        changed.ingest()


def test_each_distance_scores_match_the_space_the_collection_was_built_in(small_corpus, tmp_path, tiny_bge_dir):
    """l2 and ip collections report the cosine of unit vectors as their score, as cosine does."""
    scores = {}
    for distance in ("cosine", "l2", "ip"):
        pipe = Pipeline.from_config(_config(small_corpus, tmp_path / distance, tiny_bge_dir, distance))
        pipe.ingest()
        hits = pipe.query("moon and tides", k=3)
        scores[distance] = {h.id: h.metadata["score"] for h in hits}
    assert scores["l2"] == pytest.approx(scores["cosine"], abs=1e-4)
    assert scores["ip"] == pytest.approx(scores["cosine"], abs=1e-4)
