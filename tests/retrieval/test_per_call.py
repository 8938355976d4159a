"""Per-call settings on the pipeline's retriever: k, filter and top_n for one call, no model reloaded."""

import asyncio

import pytest

import rag_pipeline.models.loading as loading
from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.errors import ConfigError, QueryError

QUERY = "how do tides work"


@pytest.fixture(scope="module")
def reranked(sample_corpus, tiny_bge_dir, tiny_reranker_dir, tmp_path_factory):
    config = pipeline_config(
        sample_corpus,
        tmp_path_factory.mktemp("index"),
        str(tiny_bge_dir),
        reranker={"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"},
        lexical={"type": "bm25"},
        retriever={"type": "hybrid", "k": 4, "fetch_k": 12},
    )
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    pipe.as_retriever().invoke(QUERY)  # both models loaded before the tests count loads
    return pipe


@pytest.fixture
def load_count(monkeypatch):
    """How many models (or tokenizers) the process loads from here on."""
    loads = []
    shared = loading._shared

    def counting(key, load):
        return shared(key, lambda: loads.append(key) or load())

    monkeypatch.setattr(loading, "_shared", counting)
    return loads


def test_invoke_takes_k_per_call(reranked, load_count):
    retriever = reranked.as_retriever()
    assert len(retriever.invoke(QUERY)) == 4
    assert len(retriever.invoke(QUERY, k=1)) == 1
    assert len(retriever.invoke(QUERY, k=7)) == 7
    assert len(retriever.invoke(QUERY)) == 4  # the call's k did not stick
    assert load_count == []


def test_configurable_sets_k_filter_and_top_n(reranked, load_count):
    retriever = reranked.as_retriever()
    found = retriever.invoke(QUERY, config={"configurable": {"k": 2}})
    assert len(found) == 2
    assert len(retriever.invoke(QUERY, config={"configurable": {"top_n": 3}})) == 3
    # a keyword wins over the config, as a call's own argument should
    assert len(retriever.invoke(QUERY, config={"configurable": {"k": 2}}, k=5)) == 5
    only_md = retriever.invoke(QUERY, config={"configurable": {"k": 6, "filter": {"file_type": "md"}}})
    assert len(only_md) == 6 and {d.metadata["file_type"] for d in only_md} == {"md"}
    assert load_count == []


def test_filter_per_call_reaches_both_arms_and_rerank(reranked):
    retriever = reranked.as_retriever()
    unfiltered = {d.metadata["file_type"] for d in retriever.invoke(QUERY, k=12)}
    assert len(unfiltered) > 1
    found = retriever.invoke(QUERY, k=12, filter={"file_type": {"$in": ["txt"]}})
    assert found and {d.metadata["file_type"] for d in found} == {"txt"}
    assert all("rerank_score" in d.metadata for d in found)


def test_as_retriever_takes_k_and_filter(reranked, load_count):
    retriever = reranked.as_retriever(k=2, filter={"file_type": "md"})
    found = retriever.invoke(QUERY)
    assert len(found) == 2 and {d.metadata["file_type"] for d in found} == {"md"}
    # the call's filter replaces the retriever's; {} searches without one
    assert {d.metadata["file_type"] for d in retriever.invoke(QUERY, filter={"file_type": "txt"})} == {"txt"}
    assert len({d.metadata["file_type"] for d in retriever.invoke(QUERY, k=12, filter={})}) > 1
    assert load_count == []


def test_batch_and_ainvoke_take_per_call_settings(reranked, load_count):
    retriever = reranked.as_retriever()
    first, second = retriever.batch([QUERY, "bees"], config=[{"configurable": {"k": 1}}, {"configurable": {"k": 3}}])
    assert (len(first), len(second)) == (1, 3)
    assert [len(r) for r in retriever.batch([QUERY, "bees"], k=2)] == [2, 2]
    found = asyncio.run(retriever.ainvoke(QUERY, k=1, filter={"file_type": "md"}))
    assert len(found) == 1 and found[0].metadata["file_type"] == "md"
    configured = asyncio.run(retriever.ainvoke(QUERY, config={"configurable": {"k": 2}}))
    assert len(configured) == 2
    assert load_count == []


def test_configurable_fields_work_as_in_langchain(reranked, load_count):
    from langchain_core.runnables import ConfigurableField

    retriever = reranked.as_retriever().configurable_fields(k=ConfigurableField(id="result_count"))
    assert len(retriever.invoke(QUERY, config={"configurable": {"result_count": 1}})) == 1
    assert load_count == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k: must be a positive whole number, got 0"),
        ({"top_n": -1}, "top_n: must be a positive whole number, got -1"),
        ({"filter": {"title": {"$like": "x"}}}, "filter: unknown operator '$like' on 'title'; use one of $eq"),
    ],
)
def test_bad_per_call_settings_are_one_line_errors(reranked, kwargs, message):
    # a count is checked by the one positive-count check (ConfigError, as for --k and retriever.k)
    with pytest.raises(ConfigError if "filter" not in kwargs else QueryError) as caught:
        reranked.as_retriever().invoke(QUERY, **kwargs)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_bad_filter_for_as_retriever_is_a_config_error(reranked):
    with pytest.raises(ConfigError, match=r"^filter: unknown operator '\$regex' on 'source'"):
        reranked.as_retriever(filter={"source": {"$regex": "x"}})


def test_top_n_without_a_reranker_says_to_use_k(sample_corpus, tiny_bge_dir):
    pipe = Pipeline.from_config(pipeline_config(sample_corpus, None, str(tiny_bge_dir)))
    pipe.ingest()
    with pytest.raises(QueryError, match="no reranker; pass k instead"):
        pipe.as_retriever().invoke(QUERY, top_n=2)
