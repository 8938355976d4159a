"""Fine-tune the embedder (bi-encoder) and train the reranker (cross-encoder) from a training file.

Both go through sentence-transformers' trainers (``SentenceTransformerTrainer``,
``CrossEncoderTrainer``): checkpoints, ``--resume``, bf16 autocast, progress and seeding are
theirs. What is ours: turning a FlagEmbedding file into the columns each loss reads, applying the
query instruction the pipeline applies at query time, and the card beside the weights.

The output folder is a plain sentence-transformers folder: it loads as ``embeddings.model`` or
``reranker.model`` by its path, and gets its own identity from its files (``sha256:…``), so an
index built with the base model is never mixed with the fine-tuned one. Trainer checkpoints live
in ``<out>/checkpoints/checkpoint-N``, which the identity leaves out.

Why the reranker's default loss is listwise, not binary cross-entropy: the encoder it starts
from (all-MiniLM-L6-v2) was trained to put meaning into the *mean* of its token states, and its
[CLS] state, which a sequence-classification head reads, barely moves between inputs (mean
cosine 0.82 between different SciFact pairs, against 0.34 for the mean-pooled states). A new
head over a near-constant input, under BCE with ~4 negatives to a positive, first learns the
label prior (a constant logit), and its order among the candidates is noise: on SciFact's dev
split BCE reranked the top 20 to nDCG@10 21.8, what a shuffled list gives, where a listwise loss
(a constant scores the same for every candidate, so only differences lower it) reached 39.5 on the
same data and steps (benchmarks/results/finetune-scifact.md).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from ..errors import ConfigError
from ..models import default_query_instruction, model_identity, resolve_model
from .data import TrainingExample, file_sha256, read_training_file

logger = logging.getLogger(__name__)

CARD_FILENAME = "finetune-card.yaml"  # not a suffix the identity hashes: metrics added later leave it unchanged
CHECKPOINTS = "checkpoints"

EmbedderLoss = Literal["mnrl", "cached-mnrl"]
RerankerLoss = Literal["listwise", "bce", "margin-mse"]
RerankerHead = Literal["auto", "cls", "mean"]


@dataclass
class TrainingSettings:
    """What both trainers share. ``max_steps`` > 0 overrides ``epochs`` (smoke runs, tests)."""

    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    negatives: int = 1
    max_steps: int = -1
    save_steps: int = 200
    seed: int = 0
    bf16: bool | None = None  # None: when the CPU computes bf16 natively
    resume: bool = False
    show_progress: bool = True
    max_length: int | None = None


@dataclass
class TrainingResult:
    out: Path
    steps: int
    seconds: float
    peak_rss_mb: float
    card: dict[str, Any] = field(default_factory=dict)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast pays off; elsewhere it is emulated and slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _rows(examples: list[TrainingExample], negatives: int, query_prefix: str = "") -> dict[str, list[str]]:
    """(anchor, positive, negative_1..n) columns: one row per positive, each example's negatives
    taken in rank order and reused in turn when it has fewer than ``negatives``."""
    if negatives > 0:
        lacking = next((i for i, e in enumerate(examples, start=1) if not e.neg), None)
        if lacking is not None:
            raise ConfigError(
                f"--data: example {lacking} has no negatives; mine with a wider --ranks window or train with --negatives 0"
            )
    columns: dict[str, list[str]] = {"anchor": [], "positive": []}
    columns.update({f"negative_{i + 1}": [] for i in range(negatives)})
    for example in examples:
        for positive in example.pos:
            columns["anchor"].append(query_prefix + example.query)
            columns["positive"].append(positive)
            for i in range(negatives):
                columns[f"negative_{i + 1}"].append(example.neg[i % len(example.neg)])
    return columns


def _pair_rows(examples: list[TrainingExample], negatives: int) -> dict[str, list]:
    """(query, passage, label) rows for binary cross-entropy: every positive, ``negatives`` negatives each."""
    rows: dict[str, list] = {"query": [], "passage": [], "label": []}
    for example in examples:
        for passage, label in [(p, 1.0) for p in example.pos] + [(n, 0.0) for n in example.neg[:negatives]]:
            rows["query"].append(example.query)
            rows["passage"].append(passage)
            rows["label"].append(label)
    return rows


def _margin_rows(examples: list[TrainingExample], negatives: int) -> dict[str, list]:
    """(query, positive, negative, label = teacher margin) rows: the first stage as the teacher."""
    rows: dict[str, list] = {"query": [], "positive": [], "negative": [], "label": []}
    for example in examples:
        if example.pos_scores is None or example.neg_scores is None:
            continue
        for positive, pos_score in zip(example.pos, example.pos_scores):
            for negative, neg_score in list(zip(example.neg, example.neg_scores))[:negatives]:
                rows["query"].append(example.query)
                rows["positive"].append(positive)
                rows["negative"].append(negative)
                rows["label"].append(pos_score - neg_score)
    if not rows["query"]:
        raise ConfigError("--loss margin-mse: the training file has no pos_scores/neg_scores to learn from")
    return rows


def _arguments(cls, out: Path, settings: TrainingSettings, rows: int, **extra):
    bf16 = cpu_has_native_bf16() if settings.bf16 is None else settings.bf16
    return cls(
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=min(settings.batch_size, rows),
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps (transformers 5)
        bf16=bf16,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=max(1, min(10, settings.save_steps)),
        seed=settings.seed,
        data_seed=settings.seed,
        report_to="none",
        disable_tqdm=not settings.show_progress,
        dataloader_drop_last=False,
        use_cpu=not _cuda(),
        **extra,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _resume_point(out: Path, resume: bool) -> str | None:
    if not resume:
        return None
    checkpoints = sorted((out / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise ConfigError(f"--resume: no checkpoint under {out / CHECKPOINTS}; run once without --resume first")
    return str(checkpoints[-1])


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def train_embedder(
    data: str | Path, base: str, out: str | Path, settings: TrainingSettings | None = None, *,
    loss: EmbedderLoss = "mnrl", mini_batch_size: int = 16, query_instruction: str | None = None,
    lora_rank: int | None = None,
) -> TrainingResult:
    """Contrastive fine-tuning with in-batch and hard negatives (MultipleNegativesRankingLoss,
    or its cached variant, whose batch can be larger than memory allows)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import losses

    settings = settings or TrainingSettings()
    out = Path(out)
    examples = read_training_file(data)
    resolved = resolve_model(base, what="--base")
    instruction = default_query_instruction(resolved.model_id) if query_instruction is None else query_instruction
    columns = _rows(examples, settings.negatives, instruction)
    started = time.perf_counter()
    model = SentenceTransformer(resolved.path or resolved.model_id, device="cuda" if _cuda() else "cpu")
    base_length = model.max_seq_length
    if settings.max_length is not None:
        model.max_seq_length = settings.max_length
    if lora_rank:
        _add_lora(model, lora_rank)
    if loss == "cached-mnrl":
        objective = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size)
    elif loss == "mnrl":
        objective = losses.MultipleNegativesRankingLoss(model)
    else:
        raise ConfigError(f"--loss: {loss!r} is not an embedder loss; use mnrl or cached-mnrl")
    arguments = _arguments(
        SentenceTransformerTrainingArguments, out, settings, len(columns["anchor"]), batch_sampler=BatchSamplers.NO_DUPLICATES
    )
    trainer, resume_from = _train(SentenceTransformerTrainer, model, arguments, Dataset.from_dict(columns), objective, out, settings)
    if lora_rank:
        _merge_lora(model)
    # The training length is a cost choice (shorter is faster), not a property of the tuned model:
    # saved with it, a config without max_seq_length would embed every chunk cut to it.
    model.max_seq_length = base_length
    model.save(str(out))
    card = _card(
        "embedder", base, resolved, data, loss, settings, trainer, time.perf_counter() - started,
        query_instruction=instruction, lora_rank=lora_rank, rows=len(columns["anchor"]), resumed_from=resume_from,
    )
    return _finished(out, trainer, card)


def train_reranker(
    data: str | Path, base: str, out: str | Path, settings: TrainingSettings | None = None, *,
    loss: RerankerLoss = "listwise", head: RerankerHead = "auto", in_batch_negatives: int = 4,
) -> TrainingResult:
    """A one-logit cross-encoder over (query, passage): from a cross-encoder, or from a
    bi-encoder's encoder weights (a new head on top). Queries go in without the embedder's
    instruction: the reranker is not asked to find the query's kind, only to compare.

    ``head``: what the new logit reads. ``cls`` is BERT's sequence-classification head over the
    [CLS] state; ``mean`` is a linear layer over the mean of the token states. ``auto`` takes the
    pooling the base was trained with: ``mean`` for a mean-pooling bi-encoder such as
    all-MiniLM-L6-v2 (its [CLS] state barely changes between inputs, module docstring), ``cls``
    for everything else, a cross-encoder included (its own head is kept)."""
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder import losses

    if in_batch_negatives < 0:
        raise ConfigError(f"--in-batch-negatives: must be 0 or more, got {in_batch_negatives}")
    settings = settings or TrainingSettings(negatives=4)
    out = Path(out)
    examples = read_training_file(data)
    resolved = resolve_model(base, what="--base")
    started = time.perf_counter()
    head = _reranker_head(resolved.path) if head == "auto" else head
    model = _cross_encoder(resolved.path or resolved.model_id, head, settings.max_length)
    if loss == "bce":
        columns = _pair_rows(examples, settings.negatives)
        objective = losses.BinaryCrossEntropyLoss(model)
    elif loss == "listwise":
        raw = _rows(examples, settings.negatives)
        columns = {"query": raw.pop("anchor"), **raw}
        # softmax over the positive, the mined hard negatives and ``in_batch_negatives`` other queries'
        # passages: those are easy (another topic) and cost a forward pass each, so on a CPU the
        # hard negatives are the better use of the same compute
        objective = _listwise_loss(losses, model, in_batch_negatives)
    elif loss == "margin-mse":
        columns = _margin_rows(examples, settings.negatives)
        objective = losses.MarginMSELoss(model)
    else:
        raise ConfigError(f"--loss: {loss!r} is not a reranker loss; use listwise, bce or margin-mse")
    rows = len(next(iter(columns.values())))
    arguments = _arguments(CrossEncoderTrainingArguments, out, settings, rows)
    trainer, resume_from = _train(CrossEncoderTrainer, model, arguments, Dataset.from_dict(columns), objective, out, settings)
    model.save_pretrained(str(out))
    card = _card(
        "reranker", base, resolved, data, loss, settings, trainer, time.perf_counter() - started, rows=rows,
        resumed_from=resume_from, head=head, in_batch_negatives=in_batch_negatives if loss == "listwise" else None,
    )
    return _finished(out, trainer, card)


def _train(trainer_class, model, arguments, dataset, objective, out: Path, settings: TrainingSettings):
    """Train (from the last checkpoint with ``settings.resume``); the trainer and where it resumed."""
    trainer = trainer_class(model=model, args=arguments, train_dataset=dataset, loss=objective)
    resume_from = _resume_point(out, settings.resume)
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer, resume_from


def _finished(out: Path, trainer, card: dict[str, Any]) -> TrainingResult:
    write_card(out, card)
    return TrainingResult(out, trainer.state.global_step, card["seconds"], card["peak_rss_mb"], card)


def _listwise_loss(losses, model, in_batch_negatives: int):
    if in_batch_negatives > 0:
        return losses.MultipleNegativesRankingLoss(model, num_negatives=in_batch_negatives)

    class HardNegativesOnly(losses.MultipleNegativesRankingLoss):
        """The softmax over each query's own list: the library samples at least one in-batch negative."""

        def get_in_batch_negatives(self, anchors, candidates):
            return iter(())

    return HardNegativesOnly(model)


def _reranker_head(path: str | None) -> str:
    """``mean`` when ``path`` is a sentence-transformers bi-encoder that mean-pools, else ``cls``."""
    if path is None:
        return "cls"
    folder = Path(path)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "cls"
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            try:
                pooling = json.loads((folder / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return "cls"
            # sentence-transformers 3-5 write one flag per mode; 6 writes ``pooling_mode``
            if pooling.get("pooling_mode") == "mean" or pooling.get("pooling_mode_mean_tokens"):
                return "mean"
    return "cls"


def _cross_encoder(reference: str, head: str, max_length: int | None):
    """A one-logit cross-encoder; for ``mean``, the encoder + mean pooling + a linear layer to one
    score, saved as modules sentence-transformers' ``CrossEncoder(path)`` loads back by itself."""
    from sentence_transformers import CrossEncoder

    device = "cuda" if _cuda() else "cpu"
    if head == "cls":
        return CrossEncoder(reference, num_labels=1, max_length=max_length, device=device)
    if head != "mean":
        raise ConfigError(f"--head: {head!r} is not a reranker head; use auto, cls or mean")
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    encoder = Transformer(reference, transformer_task="feature-extraction", max_seq_length=max_length)
    width = encoder.model.config.hidden_size
    score = Dense(width, 1, activation_function=None, module_output_name="scores")
    return CrossEncoder(modules=[encoder, Pooling(width, "mean"), score], device=device)


def _add_lora(model, rank: int) -> None:
    """Train low-rank adapters on the attention projections instead of every weight."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--lora: needs peft (pip install 'rag-pipeline[finetune]')") from None
    module = model[0]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=["query", "key", "value"])
    module.model = get_peft_model(module.model, config)


def _merge_lora(model) -> None:
    """Fold the adapters into the weights: the saved folder is a plain model any loader reads."""
    module = model[0]
    module.model = module.model.merge_and_unload()


def _card(kind, base, resolved, data, loss, settings: TrainingSettings, trainer, seconds: float, **extra) -> dict[str, Any]:
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "kind": kind,
        "base_model": base,
        "base_identity": model_identity(resolved),
        "data": str(data),
        "data_sha256": file_sha256(data),
        "loss": loss,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "settings": {
            "batch_size": settings.batch_size, "learning_rate": settings.learning_rate, "negatives": settings.negatives,
            "warmup_ratio": settings.warmup_ratio, "seed": settings.seed, "max_steps": settings.max_steps,
            "bf16": trainer.args.bf16, "max_length": settings.max_length,
        },
        "training_loss": [{"step": e["step"], "loss": round(float(e["loss"]), 5)} for e in history],
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dev_metrics": None,
        **extra,
    }


def write_card(out: Path, card: dict[str, Any]) -> Path:
    path = Path(out) / CARD_FILENAME
    path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def read_card(out: str | Path) -> dict[str, Any]:
    path = Path(out) / CARD_FILENAME
    if not path.is_file():
        raise ConfigError(f"{out}: no {CARD_FILENAME}; not a folder written by `rag-pipeline finetune`")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def record_dev_metrics(out: str | Path, metrics: dict[str, Any]) -> Path:
    """Add the dev split's metrics (measured after training) to the card."""
    card = read_card(out)
    card["dev_metrics"] = metrics
    return write_card(Path(out), card)


DevEvaluator = Callable[[Path], dict[str, float]]
