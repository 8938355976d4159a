"""Run a configured pipeline over a BEIR collection and score it: the ``rag-pipeline eval`` engine.

Why it is built this way:
  * The corpus goes through the pipeline's own chunker, embeddings and write path (so the
    evaluation measures what users run), into a collection of its own, in only the indexes the
    retriever searches (a BM25-only config embeds nothing),
    ``<vectorstore.collection>-eval-<dataset>`` (``...-subset`` for a subset), so a user's index
    is never touched. Passage vectors come from the on-disk embedding cache beside a persistent
    index, so evaluating the same model twice does not embed the corpus twice.
  * Retrieval is batched (all queries embedded at once, then scored many at a time); a query
    at a time through the LangChain retriever would spend most of its time in overhead.
  * ``search="exact"`` (the default) scores every chunk of the collection, reading the vectors
    back from Chroma: exact, deterministic, and what BEIR/MTEB's published numbers use.
    ``search="ann"`` asks Chroma's HNSW index (``collection.query``), as the pipeline does when
    serving. They can differ: two HNSW builds of the very same SciFact vectors gave nDCG@10
    64.51 and 64.17, because in the second graph one relevant abstract was unreachable, so an
    approximate index would put build-to-build noise into every A/B comparison.
  * A document's score is its best chunk's score, and enough chunks are fetched that every
    query has ``depth`` (100) distinct documents, so Recall@100 is measured on 100 documents.
  * With several first-stage arms (``retriever.type: hybrid``), each arm is also run alone over the
    same queries (its queries encoded once), so one report holds each arm, their fusion (the first
    stage) and the final output: an A/B of the fusion against its own arms in the same run.
  * With a reranker, the first stage's top ``rerank_depth`` chunks (default ``retriever.fetch_k``,
    what the pipeline reranks in use) are rescored by the cross-encoder; a document's rerank score
    is its best chunk's; documents below the reranked depth follow in first-stage order.

    >>> from rag_pipeline.evaluation import evaluate, load_beir                 # doctest: +SKIP
    >>> result = evaluate("configs/scifact-dense.yaml", load_beir("../shared/datasets/scifact"))
    >>> print(result.table()); result.metrics["first_stage"]["ndcg@10"]
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
from langchain_core.documents import Document
from tqdm.auto import tqdm

from ..config import PipelineConfig, as_config
from ..errors import ConfigError, IndexMismatchError, positive_count
from ..indexing.report import IngestReport
from ..pipeline import Pipeline
from ..retrieval.path import document_key
from .beir import BeirDataset
from .metrics import METRICS, drop_identical_ids, evaluate_run, ranked
from .reuse import SweepMemo, search_setup

logger = logging.getLogger(__name__)

STAGES = ("first_stage", "final")
VERSIONED_PACKAGES = (
    "rag-pipeline", "torch", "transformers", "sentence-transformers", "chromadb", "langchain-core",
    "pytrec-eval-terrier", "numpy", "bm25s", "PyStemmer",
)


def write_report(path: str | Path, payload: dict[str, Any]) -> Path:
    """An evaluation's JSON (``eval --json``), folders made as needed; the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@dataclass
class EvalResult:
    """Scores, runs and timings of one evaluation. ``to_json()`` is what ``--json`` writes."""

    metrics: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]]
    runs: dict[str, dict[str, dict[str, float]]]
    config: dict[str, Any]
    dataset: dict[str, Any]
    timings: dict[str, Any]
    versions: dict[str, Any]
    reranked: bool = False
    qrels: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    arm_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    arm_runs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        """``{"metrics": {"first_stage": {...}, "final": {...}}, "arms": {...}, "config", "dataset", "timings", "versions"}``.

        ``final`` is always present: without a reranker the final output is the first stage's.
        ``arms``: with several first-stage arms (hybrid), each arm's own metrics (``first_stage``
        is then their fusion); left out with one arm.
        """
        payload = {
            "metrics": self.metrics,
            "arms": self.arm_metrics,
            "config": self.config,
            "dataset": self.dataset,
            "timings": self.timings,
            "versions": self.versions,
        }
        if not self.arm_metrics:
            del payload["arms"]
        return payload

    def write_json(self, path: str | Path) -> Path:
        return write_report(path, self.to_json())

    def table(self) -> str:
        """A plain-text table (values x100, as papers and leaderboards print them) and the timings."""
        data = self.dataset
        subset = " (subset: not comparable to published numbers)" if data.get("subset") else ""
        lines = [
            f"{data['name']} ({data['split']}): {data['queries']} queries"
            + (f" ({data['queries_without_relevant']} with no relevant document, scored 0 as in BEIR)" if data.get("queries_without_relevant") else "")
            + f", {data['documents']} documents, "
            f"{self.timings['index']['chunks']} chunks, {self.config['evaluation']['search']} search{subset}",
        ]
        stages = list(STAGES) if self.reranked else ["first_stage"]
        columns = [(arm, self.arm_metrics[arm]) for arm in self.arm_metrics]
        columns += [("fused" if self.arm_metrics and s == "first_stage" else s.replace("_", " "), self.metrics[s]) for s in stages]
        headers = ["metric", *(title for title, _ in columns)]
        rows = [[name, *(f"{100 * values[name]:.2f}" for _, values in columns)] for name in self.metrics["first_stage"]]
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        for row in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if not self.reranked:
            lines.append(f"(no reranker: the final output is the {'fused list' if self.arm_metrics else 'first stage'})")
        index, t = self.timings["index"], self.timings
        lines.append(
            f"index {index['seconds']:.1f}s ({index['embedded']} embedded, {index['from_cache']} from the embedding "
            f"cache, {index['already_indexed']} already indexed; {index['truncated']} of {index['chunks']} chunks longer "
            f"than {index['max_seq_length']} tokens, embedded from their first {index['max_seq_length']} as BEIR/MTEB do)"
        )
        lines.append(
            f"model load {t['load_models']:.1f}s, query embedding {t['embed_queries']:.1f}s, search {t['search']:.1f}s"
            + (f" (each arm alone {t['search_arms']:.1f}s)" if self.arm_metrics else "")
            + (f", rerank {t['rerank']:.1f}s" if self.reranked else "")
            + f", total {t['total']:.1f}s"
        )
        return "\n".join(lines)


def eval_collection_name(collection: str, dataset: BeirDataset) -> str:
    """``<collection>-eval-<dataset>`` (``-subset`` appended for a subset): valid for Chroma."""
    name = f"{collection}-eval-{dataset.name}" + ("-subset" if dataset.subset else "")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:200].strip("._-")
    return name if len(name) >= 3 else f"eval-{name}"


def _as_config(source: Any, overrides: Mapping[str, Any] | None) -> PipelineConfig:
    """``config.as_config``, also for a built ``Pipeline`` (config.py cannot know that class)."""
    return as_config(source.config if isinstance(source, Pipeline) else source, overrides)


def evaluate(
    config: str | Path | Mapping[str, Any] | PipelineConfig | Pipeline,
    dataset: BeirDataset,
    *,
    overrides: Mapping[str, Any] | None = None,
    depth: int = 100,
    rerank_depth: int | None = None,
    search: Literal["exact", "ann"] = "exact",
    query_batch_size: int = 64,
    metrics: tuple[str, ...] = METRICS,
    show_progress: bool | None = None,
    ignore_identical_ids: bool = True,
    reuse: SweepMemo | None = None,
) -> EvalResult:
    """Index ``dataset``'s corpus with the configured pipeline, run its queries and score them.

    ``depth``: documents kept per query (100: enough for Recall@100 and MAP@100).
    ``rerank_depth``: chunks per query the reranker rescores (default ``retriever.fetch_k``).
    ``search``: ``exact`` (every chunk scored) or ``ann`` (Chroma's HNSW index, as in serving).
    ``ignore_identical_ids``: drop a retrieved document whose id is the query's id, as BEIR does
    by default (see :mod:`.metrics`); needed for ArguAna, Quora and CQADupStack.
    ``reuse``: a :class:`~.reuse.SweepMemo` shared by several calls on the same dataset (what
    :func:`~.comparison.compare` passes): query vectors and arms' ranked lists computed by an earlier
    call with the same setup are reused, so a fusion-only change re-fuses without searching again.
    """
    started = time.perf_counter()
    base = _as_config(config, overrides)
    positive_count(depth, "depth")
    if search not in ("exact", "ann"):
        raise ConfigError(f"--search must be exact or ann, got {search!r}")
    collection = eval_collection_name(base.vectorstore.collection, dataset)
    # The evaluation's own copy of the config: its collection and search mode, set on a copy (each
    # assignment is validated) rather than validating the whole config again.
    evaluated = base.model_copy(deep=True)
    evaluated.vectorstore.collection, evaluated.retriever.search = collection, search
    pipe = Pipeline(evaluated)
    if show_progress is not None:
        pipe.config.embeddings.show_progress = show_progress
    show_progress = pipe.config.embeddings.show_progress
    timings: dict[str, Any] = {"load_models": _load_models(pipe)}
    timings["index"], index_changed = _index_corpus(pipe, dataset, show_progress, reuse)

    path = pipe.as_retriever().path
    if reuse is not None:
        settings, described = pipe.config.to_dict(), dataset.describe()
        index_setup = search_setup({k: v for k, v in settings.items() if k not in ("retriever", "reranker")}, described)
        path = reuse.wrap(path, search_setup(settings, described), index_setup=index_setup, index_changed=index_changed)
        reused_before = reuse.snapshot()
    query_ids = list(dataset.queries)
    texts = [dataset.queries[q] for q in query_ids]
    # As BEIR: search one deeper, so that dropping the query's own id still leaves `depth` documents.
    deep = depth + (1 if ignore_identical_ids else 0)
    reranker = pipe.reranker
    encoded, hits, first_stage = _first_stage(path, query_ids, texts, deep, reranker is not None, timings)
    arm_runs = _arm_runs(path, query_ids, texts, encoded, deep, depth, ignore_identical_ids, timings)
    rerank_depth = (rerank_depth or pipe.config.retriever.fetch_k) if reranker is not None else 0
    final = first_stage
    if reranker is not None:
        final = _rerank(path, query_ids, texts, hits, first_stage, rerank_depth, deep, ignore_identical_ids, show_progress, timings)
    else:
        timings["rerank"] = 0.0
    if ignore_identical_ids:
        first_stage = drop_identical_ids(first_stage, depth)
        final = drop_identical_ids(final, depth) if reranker is not None else first_stage

    tick = time.perf_counter()
    reports = {"first_stage": evaluate_run(dataset.qrels, first_stage, metrics)}
    reports["final"] = evaluate_run(dataset.qrels, final, metrics) if reranker is not None else reports["first_stage"]
    arm_metrics = {name: evaluate_run(dataset.qrels, run, metrics).mean for name, run in arm_runs.items()}
    timings["metrics"] = time.perf_counter() - tick
    if reuse is not None:
        timings["reuse"] = {name: count - reused_before[name] for name, count in reuse.snapshot().items()}
    timings["total"] = time.perf_counter() - started
    return EvalResult(
        metrics={stage: r.mean for stage, r in reports.items()},
        per_query={stage: r.per_query for stage, r in reports.items()},
        runs={"first_stage": first_stage, "final": final},
        config={
            "pipeline": pipe.config.to_dict(),
            "evaluation": {
                "collection": collection,
                "search": search,
                "depth": depth,
                "rerank_depth": rerank_depth if reranker is not None else None,
                "doc_score": "best chunk",
                "ignore_identical_ids": ignore_identical_ids,
                "metrics_library": "pytrec_eval (trec_eval)",
            },
        },
        dataset=dataset.describe(),
        timings=timings,
        versions=environment(),
        reranked=reranker is not None,
        qrels={q: dict(d) for q, d in dataset.qrels.items()},
        arm_metrics=arm_metrics,
        arm_runs=arm_runs,
    )


# -- the steps of an evaluation ------------------------------------------------------------------------
def _load_models(pipe: Pipeline) -> float:
    """Load the models now, so that their load time is not billed to indexing; seconds. (An
    embedder whose index the retriever does not search is never loaded.)"""
    tick = time.perf_counter()
    if "vectorstore" in pipe.config.retriever.indexes_searched():
        pipe.embeddings.warm_up()
    if pipe.reranker is not None:
        pipe.reranker.warm_up()
    return time.perf_counter() - tick


def _index_corpus(pipe: Pipeline, dataset: BeirDataset, show_progress: bool, reuse: SweepMemo | None) -> tuple[dict[str, Any], bool]:
    """Make the evaluation collection hold exactly the corpus's chunks, in the indexes the
    retriever searches (through the one write path, keeping no record); its timings, and whether
    the collection changed."""
    tick = time.perf_counter()
    chunks = pipe.chunker.split_documents(dataset.documents())
    if not chunks:
        raise ConfigError(f"{dataset.path}: the corpus has no text to index")
    searched = pipe.config.retriever.indexes_searched()
    report = IngestReport(chunks=len(chunks))
    with pipe.index.writing(recorded=False, indexes=searched) as session:
        rebuilt = "vectorstore" in searched and _open_eval_collection(pipe.store)
        changed = session.keep_only({c.id for c in chunks})
        changed += session.write_missing(chunks, report, show_progress=show_progress)
    embeddings = pipe.embeddings
    chunk_texts = [c.page_content for c in chunks]
    token_counts = reuse.count_tokens(embeddings, chunk_texts) if reuse is not None else embeddings.count_tokens(chunk_texts)
    timings = {
        "seconds": time.perf_counter() - tick,
        "chunks": len(chunks),
        "embedded": report.embedded,
        "from_cache": report.added - report.embedded,
        "already_indexed": report.skipped,
        "truncated": sum(1 for n in token_counts if n > embeddings.max_seq_length),
        "max_seq_length": embeddings.max_seq_length,
        "mean_tokens": float(np.mean(token_counts)),
        "collection": pipe.store.collection_name,
    }
    return timings, rebuilt or changed > 0


def _first_stage(path, query_ids, texts, deep: int, with_text: bool, timings: dict[str, Any]):
    """The serving path's first stage, all queries embedded at once and searched in batches."""
    tick = time.perf_counter()
    encoded = path.encode(texts)
    timings["embed_queries"] = time.perf_counter() - tick
    tick = time.perf_counter()
    hits = path.covering(texts, deep, encoded=encoded, with_text=with_text)
    first_stage = dict(zip(query_ids, (_best_chunk_per_doc(found, deep) for found in hits)))
    timings["search"] = time.perf_counter() - tick
    return encoded, hits, first_stage


def _arm_runs(path, query_ids, texts, encoded, deep: int, depth: int, ignore_identical_ids: bool, timings):
    """With several arms (hybrid): the same search through each arm alone, reported beside the fusion."""
    arm_runs: dict[str, dict[str, dict[str, float]]] = {}
    if len(path.arms) < 2:
        return arm_runs
    tick = time.perf_counter()
    for index, arm in enumerate(path.arms):
        alone = path.arm_path(index).covering(texts, deep, encoded=[encoded[index]], with_text=False)
        run = dict(zip(query_ids, (_best_chunk_per_doc(found, deep) for found in alone)))
        arm_runs[arm.name] = drop_identical_ids(run, depth) if ignore_identical_ids else run
    timings["search_arms"] = time.perf_counter() - tick
    return arm_runs


def _rerank(path, query_ids, texts, hits, first_stage, rerank_depth, deep, ignore_identical_ids, show_progress, timings):
    """The path's own rerank step over each query's top ``rerank_depth`` chunks."""
    tick = time.perf_counter()
    final = {}
    for q, text, found in tqdm(list(zip(query_ids, texts, hits)), desc="Reranking", unit="query", disable=not show_progress):
        pool = [h for h in found if not (ignore_identical_ids and document_key(h) == q)][:rerank_depth]
        reranked = path.rerank(text, pool, top_n=None)
        final[q] = _reranked_run(reranked, first_stage[q], deep)
    timings["rerank"] = time.perf_counter() - tick
    return final


def _open_eval_collection(index) -> bool:
    """The eval collection is derived data: one built by another model is dropped and rebuilt
    (its vectors come back from the embedding cache) rather than refused as a user's index is.
    True when it was dropped."""
    try:
        index.check()
    except IndexMismatchError:
        logger.info("the evaluation collection was built with another embedding setup; rebuilding it")
        index.clear()
        index.check()
        return True
    return False


def _best_chunk_per_doc(
    chunks: list[Document], depth: int, key: Callable[[Document], str] = document_key
) -> dict[str, float]:
    """A document's score is its best chunk's (``key``: what counts as one document; a file for
    labels that name files)."""
    scores: dict[str, float] = {}
    for chunk in chunks:
        doc, score = key(chunk), float(chunk.metadata["score"])
        if score > scores.get(doc, -math.inf):
            scores[doc] = score
    return dict(ranked(scores)[:depth])


def _reranked_run(
    reranked: list[Document], first_stage: dict[str, float], depth: int, key: Callable[[Document], str] = document_key
) -> dict[str, float]:
    """Reranked documents first (by best chunk's rerank score), then the rest in first-stage order.

    The run's scores are rank-derived (depth, depth-1, ...) so that the two parts stay in order.
    """
    best: dict[str, float] = {}
    for chunk in reranked:
        doc, score = key(chunk), float(chunk.metadata["rerank_score"])
        if score > best.get(doc, -math.inf):
            best[doc] = score
    order = [doc for doc, _ in ranked(best)] + [doc for doc, _ in ranked(first_stage) if doc not in best]
    return {doc: float(depth - rank) for rank, doc in enumerate(order[:depth])}


def environment() -> dict[str, Any]:
    """Package versions and the machine, for the ``versions`` section of the JSON report."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        threads = None
    versions["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "executable": sys.executable,
    }
    return versions
