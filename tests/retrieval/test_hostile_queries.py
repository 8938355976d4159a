"""Queries as a careless or hostile caller sends them: one-line errors or a bounded answer, never a
library's traceback."""

from __future__ import annotations

import pytest

from rag_pipeline import Pipeline
from rag_pipeline.errors import ConfigError, QueryError


@pytest.fixture(scope="module", params=["tantivy", "bm25"])
def pipe(request, tmp_path_factory, tiny_bge_dir):
    from conftest import pipeline_config

    root = tmp_path_factory.mktemp("hostile")
    (root / "corpus").mkdir()
    for name in ("bees", "tides", "kites"):
        (root / "corpus" / f"{name}.txt").write_text(f"All about {name}. " * 20, encoding="utf-8")
    config = pipeline_config(root / "corpus", root / "index", str(tiny_bge_dir))
    config["lexical"] = {"type": request.param}
    config["retriever"] = {"type": "hybrid", "k": 2}
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    return pipe


def test_a_query_with_a_lone_surrogate_is_a_query_error(pipe):
    with pytest.raises(QueryError, match="not valid text: a lone surrogate"):
        pipe.as_retriever().invoke("bees \ud800")


@pytest.mark.parametrize("k", [10**6, 10**18])
def test_a_huge_k_returns_what_the_index_holds(pipe, k):
    found = pipe.as_retriever().invoke("bees", k=k)
    assert len(found) == len(pipe.store.ids())


@pytest.mark.parametrize("k", [0, -1, True, 2.5])
def test_a_count_that_is_not_a_positive_whole_number_is_refused_in_one_line(pipe, k):
    with pytest.raises(ConfigError, match=r"^k: must be a positive whole number"):
        pipe.as_retriever().invoke("bees", k=k)
