"""Evaluation on BEIR-layout test collections: ``rag-pipeline eval`` and its Python API.

    from rag_pipeline.evaluation import evaluate, load_beir
    dataset = load_beir("../shared/datasets/scifact", split="test")
    result = evaluate("configs/scifact-dense.yaml", dataset)
    print(result.table())
"""

from .beir import BeirDataset, SubsetSpec, load_beir
from .metrics import METRICS, MetricReport, evaluate_run, recall_curve
from .runner import EvalResult, eval_collection_name, evaluate

__all__ = [
    "METRICS",
    "BeirDataset",
    "EvalResult",
    "MetricReport",
    "SubsetSpec",
    "eval_collection_name",
    "evaluate",
    "evaluate_run",
    "load_beir",
    "recall_curve",
]
