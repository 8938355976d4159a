"""Evaluation on BEIR-layout test collections: ``rag-pipeline eval`` and its Python API.

    from rag_pipeline.evaluation import evaluate, load_beir
    dataset = load_beir("../shared/datasets/scifact", split="test")
    result = evaluate("configs/scifact-dense.yaml", dataset)
    print(result.table())

    # one evaluation per combination of overrides (``rag-pipeline compare``); choose on a split that is not test
    sweep = compare("configs/scifact-dense.yaml", load_beir("../shared/datasets/scifact", split="train"),
                    {"retriever.fetch_k": [50, 100]})
    print(sweep.to_markdown()); sweep.best().overrides
"""

from .beir import BeirDataset, SubsetSpec, load_beir
from .comparison import (
    ComparisonPlan, ComparisonResult, ComparisonRow, compare, parse_grid, run_comparison, validate_grid,
)
from .metrics import METRICS, MetricReport, evaluate_run, recall_curve
from .runner import EvalResult, eval_collection_name, evaluate

__all__ = [
    "METRICS",
    "BeirDataset",
    "ComparisonPlan",
    "ComparisonResult",
    "ComparisonRow",
    "EvalResult",
    "MetricReport",
    "SubsetSpec",
    "compare",
    "eval_collection_name",
    "evaluate",
    "evaluate_run",
    "load_beir",
    "parse_grid",
    "recall_curve",
    "run_comparison",
    "validate_grid",
]
