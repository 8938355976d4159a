"""Evaluation on BEIR-layout test collections: ``rag-pipeline eval`` and its Python API.

    from rag_pipeline.evaluation import evaluate, load_beir
    dataset = load_beir("../shared/datasets/scifact", split="test")
    result = evaluate("configs/scifact-dense.yaml", dataset)
    print(result.table())

    # one evaluation per combination of overrides (``rag-pipeline compare``); choose on a split that is not test
    sweep = compare("configs/scifact-dense.yaml", load_beir("../shared/datasets/scifact", split="train"),
                    {"retriever.fetch_k": [50, 100]})
    print(sweep.to_markdown()); sweep.best().overrides

    # labelled questions over the config's own (ingested) index, instead of a BEIR folder
    pipe = Pipeline.from_yaml("configs/quickstart.yaml")
    print(evaluate_labels(pipe, load_labels("questions.jsonl", pipe)).table())
"""

from .beir import BeirDataset, SubsetSpec, load_beir
from .comparison import (
    ComparisonPlan, ComparisonResult, ComparisonRow, compare, parse_grid, run_comparison, validate_grid,
)
from .labels import Labels, LabelsEvalResult, evaluate_labels, load_labels, read_labels, write_labels
from .metrics import METRICS, MetricReport, evaluate_run, recall_curve
from .runner import EvalResult, eval_collection_name, evaluate

__all__ = [
    "METRICS",
    "BeirDataset",
    "ComparisonPlan",
    "ComparisonResult",
    "ComparisonRow",
    "EvalResult",
    "Labels",
    "LabelsEvalResult",
    "MetricReport",
    "SubsetSpec",
    "compare",
    "eval_collection_name",
    "evaluate",
    "evaluate_labels",
    "evaluate_run",
    "load_beir",
    "load_labels",
    "parse_grid",
    "read_labels",
    "recall_curve",
    "run_comparison",
    "validate_grid",
    "write_labels",
]
