"""``compare``: one evaluation per combination of overrides, validated up front, reusing what
evaluate() already caches, written as Markdown, JSON and a PNG. Tiny BEIR folder, tiny models."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from conftest import pipeline_config
from eval_helpers import write_beir
from rag_pipeline import Pipeline, PipelineConfig
from rag_pipeline.cli import main
from rag_pipeline.errors import ConfigError
from rag_pipeline.evaluation import (
    ComparisonResult, ComparisonRow, compare, evaluate, load_beir, parse_grid, run_comparison, validate_grid,
)
from rag_pipeline.evaluation.comparison import combinations, label_of

# The package exports the function compare, which shadows the module of the same name as an attribute.
compare_module = sys.modules["rag_pipeline.evaluation.comparison"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def beir_folder(tmp_path):
    return write_beir(tmp_path / "tiny")


@pytest.fixture
def dataset(beir_folder):
    return load_beir(beir_folder)


@pytest.fixture
def config(tmp_path, tiny_bge_dir):
    config = pipeline_config(
        tmp_path, tmp_path / "index", str(tiny_bge_dir), chunker={"type": "recursive", "chunk_size": 400, "chunk_overlap": 0}
    )
    config["loader"]["show_progress"] = False
    return config


# -- grid parsing ----------------------------------------------------------------------------------
def test_grid_values_are_read_as_set_reads_them():
    grid = parse_grid([
        "retriever.fetch_k=10,100",
        "embeddings.normalize=true,false",
        'embeddings.query_instruction="","query: "',  # YAML quotes keep ": " text a string
        "retriever.weights=[0.3, 0.7],[0.5,0.5]",  # commas inside brackets do not split
        "chunker.separators='a,b',plain, 1.5",
        "reranker=null,{type: bge-reranker, top_n: 3}",
        "embeddings.query_instruction_alone=",  # as --set key=: the empty string
    ])
    assert grid == {
        "retriever.fetch_k": [10, 100],
        "embeddings.normalize": [True, False],
        "embeddings.query_instruction": ["", "query: "],
        "retriever.weights": [[0.3, 0.7], [0.5, 0.5]],
        "chunker.separators": ["a,b", "plain", 1.5],
        "reranker": [None, {"type": "bge-reranker", "top_n": 3}],
        "embeddings.query_instruction_alone": [""],
    }
    assert type(grid["retriever.fetch_k"][0]) is int and type(grid["chunker.separators"][2]) is float


@pytest.mark.parametrize(
    "specs, message",
    [
        (["retriever.fetch_k"], "--grid expects dotted.key=value1,value2,..., got 'retriever.fetch_k'"),
        (["=1,2"], "--grid expects dotted.key=value1,value2,..., got '=1,2'"),
        (["retriever.k=1", "retriever.k=2"], "--grid retriever.k: given twice; list all its values in one --grid retriever.k=v1,v2"),
        (["retriever.weights=[0.3,0.7"], "--grid retriever.weights: unclosed [ or { in '[0.3,0.7'; quote values that hold commas"),
        (["retriever.weights=0.3],1"], "--grid retriever.weights: unbalanced ']' in '0.3],1'"),
        (["embeddings.query_instruction='a,b"], "--grid embeddings.query_instruction: unclosed ' in \"'a,b\"; quote values that hold commas"),
    ],
)
def test_bad_grid_syntax_is_one_line(specs, message):
    with pytest.raises(ConfigError) as info:
        parse_grid(specs)
    assert str(info.value) == message


def test_the_cartesian_product_first_key_outermost_each_labelled_by_its_overrides():
    combos = combinations({"chunker.chunk_size": [200, 400], "embeddings.query_instruction": ["", "q: "]})
    assert [label_of(c) for c in combos] == [
        'chunker.chunk_size=200, embeddings.query_instruction=""',
        'chunker.chunk_size=200, embeddings.query_instruction="q: "',
        'chunker.chunk_size=400, embeddings.query_instruction=""',
        'chunker.chunk_size=400, embeddings.query_instruction="q: "',
    ]
    # a label's values read back through --grid (and --set) as the same values
    values = ["", "q: ", "a,b", 3, 0.5, True, None, [1, 2]]
    assert parse_grid(["k=" + ",".join(label_of({"k": v}).removeprefix("k=") for v in values)]) == {"k": values}


# -- validation before any run ---------------------------------------------------------------------
@pytest.fixture
def no_evaluation(monkeypatch):
    calls = []
    monkeypatch.setattr(compare_module, "evaluate", lambda *a, **k: calls.append(a) or pytest.fail("evaluate ran"))
    return calls


@pytest.mark.parametrize(
    "grid, overrides, message",
    [
        # the first combination is valid; the error is in a later one and must still come first
        ({"retriever.fetch_k": [10, 20], "retriever.k": [3, 0]}, {},
         "--grid retriever.fetch_k=10, retriever.k=0: retriever.k: Input should be greater than 0 (got 0)"),
        ({"retriever.fetch_k": [10], "chunker.chunk_sise": [100]}, {},
         "--grid retriever.fetch_k=10, chunker.chunk_sise=100: chunker.chunk_sise: unknown key"),
        ({"retrever.k": [1]}, {}, "--grid retrever.k=1: retrever.k: unknown key 'retrever'"),
        ({"retriever.k": [3]}, {"retriever.k": 5}, "retriever.k: set by --set and swept by --grid; keep one of the two"),
        ({"retriever.k": [3, 3]}, {}, "--grid retriever.k: the value 3 is given twice"),
        ({"retriever.k": []}, {}, "--grid retriever.k: give a list of one or more values, got []"),
        ({}, {}, "compare needs at least one --grid key=value1,value2"),
    ],
)
def test_a_bad_combination_fails_before_anything_runs(config, dataset, no_evaluation, grid, overrides, message):
    with pytest.raises(ConfigError) as info:
        compare(config, dataset, grid, overrides=overrides)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert no_evaluation == []


def test_an_unknown_metric_fails_before_anything_runs(config, dataset, no_evaluation):
    with pytest.raises(ConfigError, match=r"^--metric: unknown metric 'ndcg10'"):
        compare(config, dataset, {"retriever.k": [3]}, metric="ndcg10")


@pytest.fixture
def validations(monkeypatch):
    """The collection of every config validated (``config.validate_config``, where every way to a
    validated config ends), split by whether an evaluation was running; and the configs evaluate got."""
    config_module = sys.modules["rag_pipeline.config"]
    real_validate, real_evaluate = config_module.validate_config, compare_module.evaluate
    seen = {"outside": [], "inside": [], "evaluated": []}
    running = []

    def counting_validate(raw, base_dir):
        validated = real_validate(raw, base_dir)
        seen["inside" if running else "outside"].append(validated.vectorstore.collection)
        return validated

    def recording_evaluate(row_config, *args, **kwargs):
        seen["evaluated"].append(row_config)
        running.append(row_config)
        try:
            return real_evaluate(row_config, *args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(config_module, "validate_config", counting_validate)
    monkeypatch.setattr(compare_module, "evaluate", recording_evaluate)
    return seen


def test_each_combination_is_validated_once(config, dataset, validations):
    """One validation per combination, plus one of the base config the result reports; the run gets
    that validated config and validates it no further (evaluate sets its collection and search mode
    on a copy, field by field)."""
    result = compare(config, dataset, {"retriever.fetch_k": [10, 20]}, show_progress=False)
    assert validations["outside"] == ["test"] * (len(result.rows) + 1)
    assert [c.retriever.fetch_k for c in validations["evaluated"]] == [10, 20]
    assert all(isinstance(c, PipelineConfig) for c in validations["evaluated"])
    assert validations["inside"] == []


def test_a_plan_validated_first_is_run_without_validating_again(config, dataset, validations):
    """The CLI's order: validate before reading the dataset, then run that plan."""
    plan = validate_grid(config, {"retriever.fetch_k": [10, 20]})
    assert len(validations["outside"]) == 3 and plan.configs[0].retriever.fetch_k == 10
    result = run_comparison(plan, dataset, show_progress=False)
    assert len(validations["outside"]) == 3  # nothing more outside the runs
    assert validations["evaluated"] == plan.configs  # the very objects validated above
    assert result.config == plan.base.to_dict() and [row.overrides for row in result.rows] == plan.combinations


# -- caching ---------------------------------------------------------------------------------------
def test_a_search_time_sweep_embeds_only_for_its_first_value(config, dataset):
    result = compare(config, dataset, {"retriever.fetch_k": [10, 20, 30]}, show_progress=False)
    index = [row.timings["index"] for row in result.rows]
    assert index[0]["embedded"] == 8
    assert [i["embedded"] for i in index[1:]] == [0, 0]
    assert [i["already_indexed"] for i in index[1:]] == [8, 8]  # the eval collection is kept, not rebuilt
    assert [row.overrides for row in result.rows] == [{"retriever.fetch_k": v} for v in (10, 20, 30)]


def test_the_embedder_is_loaded_once_per_sweep(config, dataset, monkeypatch):
    """Model handles are held weakly: a garbage collection between two runs would free the model and
    the next run would load it again, unless the sweep keeps it referenced."""
    import gc

    from sentence_transformers import SentenceTransformer

    loads = []
    real_init, real_evaluate = SentenceTransformer.__init__, compare_module.evaluate

    def counting_init(self, *args, **kwargs):
        loads.append(args[0] if args else kwargs.get("model_name_or_path"))
        real_init(self, *args, **kwargs)

    def evaluate_after_a_collection(*args, **kwargs):
        gc.collect()
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "__init__", counting_init)
    monkeypatch.setattr(compare_module, "evaluate", evaluate_after_a_collection)
    compare(config, dataset, {"retriever.fetch_k": [10, 20, 30]}, show_progress=False)
    assert len(loads) <= 1  # 0 when an earlier test in this process still holds it


def test_a_chunk_size_sweep_rechunks_and_embeds_only_new_texts(config, dataset):
    sizes = [400, 40]
    chunk_texts = {
        size: {c.page_content for c in Pipeline.from_config(config, {"chunker.chunk_size": size}).chunker.split_documents(dataset.documents())}
        for size in sizes
    }
    assert len(chunk_texts[40]) == 2 * len(chunk_texts[400]) and not chunk_texts[40] & chunk_texts[400]
    first = compare(config, dataset, {"chunker.chunk_size": sizes}, show_progress=False)
    assert [row.timings["index"]["chunks"] for row in first.rows] == [len(chunk_texts[s]) for s in sizes]
    assert first.rows[0].timings["index"]["embedded"] == 8
    assert first.rows[1].timings["index"]["embedded"] == len(chunk_texts[40] - chunk_texts[400])
    again = compare(config, dataset, {"chunker.chunk_size": sizes[::-1]}, show_progress=False)
    assert [row.timings["index"]["embedded"] for row in again.rows] == [0, 0]  # both from the embedding cache


def test_runs_sharing_index_settings_are_adjacent_and_rows_keep_grid_order(config, dataset):
    order = []
    grid = {"retriever.fetch_k": [10, 20], "chunker.chunk_size": [400, 40]}
    result = compare(config, dataset, grid, show_progress=False, on_result=lambda done, total, row: order.append(row.label))
    assert [row.overrides for row in result.rows] == combinations(grid)
    assert order == [
        "retriever.fetch_k=10, chunker.chunk_size=400", "retriever.fetch_k=20, chunker.chunk_size=400",
        "retriever.fetch_k=10, chunker.chunk_size=40", "retriever.fetch_k=20, chunker.chunk_size=40",
    ]
    # each chunk size indexed once, the other fetch_k found its chunks in place
    assert sorted(row.timings["index"]["already_indexed"] > 0 for row in result.rows) == [False, False, True, True]
    for row in result.rows:  # each row holds the run of its own overrides
        expected = evaluate(config, load_beir(dataset.path), overrides=row.overrides, show_progress=False)
        assert row.timings["index"]["chunks"] == expected.timings["index"]["chunks"]
        assert row.metrics == expected.metrics


def test_with_a_reranker_the_stage_picks_the_ranked_number(config, dataset, tiny_reranker_dir):
    config["reranker"] = {"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"}
    grid = {"retriever.fetch_k": [2, 8]}  # the reranker rescored the top 2 or all 8 documents
    final = compare(config, dataset, grid, show_progress=False)
    first = compare(config, dataset, grid, stage="first_stage", show_progress=False)
    assert all(row.reranked for row in final.rows)
    assert [first.value(row) for row in first.rows] == [row.metrics["first_stage"]["ndcg@10"] for row in final.rows]
    assert [final.value(row) for row in final.rows] == [row.metrics["final"]["ndcg@10"] for row in final.rows]
    assert "| ndcg@10 (first stage) |" in final.to_markdown() and "| ndcg@10 (final) |" in first.to_markdown()


# -- outputs ---------------------------------------------------------------------------------------
def _result(grid, values, metric="ndcg@10"):
    rows = []
    for combo, value in zip(combinations(grid), values):
        metrics = {"ndcg@10": value, "recall@10": 0.5, "recall@100": 0.9, "mrr@10": 0.4, "map@100": 0.3}
        rows.append(ComparisonRow(
            overrides=combo, metrics={"first_stage": metrics, "final": metrics},
            timings={"index": {"embedded": 0}, "total": 0.1}, seconds=0.1,
        ))
    return ComparisonResult(
        grid=grid, rows=rows, metric=metric, stage="final",
        dataset={"name": "tiny", "split": "train", "queries": 3, "documents": 8, "subset": None},
        config={}, evaluation={"search": "exact"},
    )


def test_best_is_the_argmax_and_the_first_of_a_tie():
    result = _result({"retriever.k": [1, 2, 3, 4]}, [0.2, 0.7, 0.5, 0.7])
    assert result.best() is result.rows[1]
    table = result.to_markdown()
    assert "| **ndcg@10** |" in table
    best_lines = [line for line in table.splitlines() if line.startswith("| **best**")]
    assert best_lines == ["| **best** | 2 | **70.00** | 50.00 | 90.00 | 40.00 | 30.00 | 0 | 0.1 |"]
    assert "best: retriever.k=2 (70.00)" in table


@pytest.mark.parametrize(
    "grid, values",
    [
        ({"retriever.fetch_k": [10, 50, 100]}, [0.61, 0.64, 0.63]),  # numeric axis
        ({"embeddings.query_instruction": ["", "query: "]}, [0.6, 0.62]),  # categorical axis
        ({"chunker.chunk_size": [200, 400], "retriever.fetch_k": [10, 50, 100]}, [0.5, 0.6, 0.55, 0.62, 0.7, 0.66]),  # heatmap
        ({"a.b": [1, 2], "c.d": [1, 2], "e.f": ["x", "y"]}, [0.1 * i for i in range(8)]),  # bars
    ],
)
def test_outputs_are_written_with_every_combination(tmp_path, grid, values):
    result = _result(grid, values)
    paths = result.write(tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["comparison.json", "comparison.md", "comparison.png"]
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    payload = json.loads(paths["json"].read_text())
    assert [run["overrides"] for run in payload["runs"]] == combinations(grid)
    best_value = max(values)
    assert payload["best"]["value"] == best_value
    assert payload["best"]["overrides"] == combinations(grid)[values.index(best_value)]
    assert payload["grid"] == grid and payload["metric"] == "ndcg@10"
    assert paths["markdown"].read_text() == result.to_markdown()


def test_json_of_a_real_sweep_names_each_run_and_its_argmax(config, dataset, tmp_path):
    result = compare(config, dataset, {"embeddings.query_instruction": ["", "query: ", "Represent: "]}, show_progress=False)
    payload = json.loads(result.write(tmp_path / "sweep")["json"].read_text())
    assert [run["label"] for run in payload["runs"]] == [
        'embeddings.query_instruction=""', 'embeddings.query_instruction="query: "', 'embeddings.query_instruction="Represent: "',
    ]
    values = [run["metrics"]["final"]["ndcg@10"] for run in payload["runs"]]
    assert payload["best"]["value"] == max(values)
    assert payload["best"]["label"] == payload["runs"][values.index(max(values))]["label"]
    assert payload["dataset"]["split"] == "test" and payload["evaluation"]["search"] == "exact"
    assert [run["timings"]["index"]["embedded"] for run in payload["runs"]] == [8, 0, 0]  # passages do not depend on it


# -- command line ----------------------------------------------------------------------------------
@pytest.fixture
def config_file(tmp_path, config):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_prints_the_table_writes_the_files_and_warns_about_test(config_file, beir_folder, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["compare", str(config_file), "--dataset", str(beir_folder), "--split", "test", "-q",
            "--grid", "retriever.fetch_k=10,20", "--grid", "chunker.chunk_size=400,40", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "| **best** |" in captured.out and captured.out.count("\n| ") >= 5
    assert f"wrote {out / 'comparison.png'}" in captured.out
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert len(json.loads((out / "comparison.json").read_text())["runs"]) == 4
    assert "[4/4]" in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("note: a setting chosen on the test split is tuned to it")


def test_cli_without_out_writes_nothing_and_a_train_split_gets_no_notice(config_file, beir_folder, tmp_path, capsys, monkeypatch):
    (beir_folder / "qrels" / "train.tsv").write_text((beir_folder / "qrels" / "test.tsv").read_text())
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["compare", str(config_file), "--dataset", str(beir_folder), "--split", "train", "-q",
                 "--grid", "retriever.k=1,2", "--set", "retriever.fetch_k=5"]) == 0
    captured = capsys.readouterr()
    assert "retriever.k" in captured.out and "note:" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "index"])  # only the eval collection


@pytest.mark.parametrize(
    "grid, message",
    [
        (["retriever.fetch_k"], "error: --grid expects dotted.key=value1,value2,..., got 'retriever.fetch_k'"),
        (["retriever.fetch_kk=1,2"], "error: --grid retriever.fetch_kk=1: retriever.fetch_kk: unknown key"),
        (["retriever.weights=[1,2"], "error: --grid retriever.weights: unclosed [ or {"),
    ],
)
def test_cli_mistakes_are_one_line_exit_2_and_run_nothing(config_file, beir_folder, tmp_path, capsys, no_evaluation, grid, message):
    args = ["compare", str(config_file), "--dataset", str(beir_folder), "--split", "test", "--out", str(tmp_path / "o")]
    for spec in grid:
        args += ["--grid", spec]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message), err
    assert not (tmp_path / "o").exists() and not (tmp_path / "index").exists()


def test_cli_checks_the_grid_before_reading_the_dataset(config_file, tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    args = ["compare", str(config_file), "--dataset", str(missing), "--split", "train", "--grid", "chunker.chunk_sise=1,2"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: --grid chunker.chunk_sise=1: chunker.chunk_sise: unknown key")
    assert main([*args[:-1], "chunker.chunk_size=1,2", "--metric", "ndcg"]) == 2
    assert capsys.readouterr().err.startswith("error: --metric: unknown metric 'ndcg'")
    assert main([*args[:-1], "chunker.chunk_size=100,200"]) == 2  # a valid grid: now the dataset is read
    assert str(missing) in capsys.readouterr().err


def test_cli_requires_a_grid_and_a_split(config_file, beir_folder):
    with pytest.raises(SystemExit) as info:
        main(["compare", str(config_file), "--dataset", str(beir_folder), "--split", "test"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["compare", str(config_file), "--dataset", str(beir_folder), "--grid", "retriever.k=1"])
    assert info.value.code == 2
