"""Run a configured pipeline over a BEIR collection and score it: the ``rag-pipeline eval`` engine.

Why it is built this way:
  * The corpus goes through the pipeline's own chunker, embeddings and ``index_chunks`` (so the
    evaluation measures what users run), into a collection of its own,
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
from typing import Any, Literal, Mapping

import numpy as np
from tqdm.auto import tqdm

from ..config import PipelineConfig, load_config
from ..errors import ConfigError, IndexMismatchError
from ..pipeline import Pipeline
from .beir import BeirDataset
from .metrics import METRICS, drop_identical_ids, evaluate_run, ranked

logger = logging.getLogger(__name__)

STAGES = ("first_stage", "final")
VERSIONED_PACKAGES = (
    "rag-pipeline", "torch", "transformers", "sentence-transformers", "chromadb", "langchain-core",
    "pytrec-eval-terrier", "numpy",
)


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

    def to_json(self) -> dict[str, Any]:
        """``{"metrics": {"first_stage": {...}, "final": {...}}, "config", "dataset", "timings", "versions"}``.

        ``final`` is always present: without a reranker the final output is the first stage's.
        """
        return {
            "metrics": self.metrics,
            "config": self.config,
            "dataset": self.dataset,
            "timings": self.timings,
            "versions": self.versions,
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

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
        headers = ["metric", *(s.replace("_", " ") for s in stages)]
        rows = [[name, *(f"{100 * self.metrics[s][name]:.2f}" for s in stages)] for name in self.metrics["first_stage"]]
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        for row in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if not self.reranked:
            lines.append("(no reranker: the final output is the first stage)")
        index, t = self.timings["index"], self.timings
        lines.append(
            f"index {index['seconds']:.1f}s ({index['embedded']} embedded, {index['from_cache']} from the embedding "
            f"cache, {index['already_indexed']} already indexed; {index['truncated']} longer than "
            f"{index['max_seq_length']} tokens, truncated)"
        )
        lines.append(
            f"model load {t['load_models']:.1f}s, query embedding {t['embed_queries']:.1f}s, search {t['search']:.1f}s"
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
    if isinstance(source, Pipeline):
        source = source.config
    if isinstance(source, PipelineConfig):
        return load_config(source.to_dict(), overrides, source.base_dir) if overrides else source
    return load_config(source, overrides)


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
) -> EvalResult:
    """Index ``dataset``'s corpus with the configured pipeline, run its queries and score them.

    ``depth``: documents kept per query (100: enough for Recall@100 and MAP@100).
    ``rerank_depth``: chunks per query the reranker rescores (default ``retriever.fetch_k``).
    ``search``: ``exact`` (every chunk scored) or ``ann`` (Chroma's HNSW index, as in serving).
    ``ignore_identical_ids``: drop a retrieved document whose id is the query's id, as BEIR does
    by default (see :mod:`.metrics`); needed for ArguAna, Quora and CQADupStack.
    """
    started = time.perf_counter()
    base = _as_config(config, overrides)
    if not hasattr(base.vectorstore, "collection"):
        raise ConfigError(f"vectorstore.type: evaluation needs a store with collections (chroma), got {base.vectorstore.type!r}")
    if depth <= 0:
        raise ConfigError(f"evaluation depth must be positive, got {depth}")
    if search not in ("exact", "ann"):
        raise ConfigError(f"--search must be exact or ann, got {search!r}")
    collection = eval_collection_name(base.vectorstore.collection, dataset)
    pipe = Pipeline.from_config(base, overrides={"vectorstore.collection": collection})
    if show_progress is not None:
        pipe.config.embeddings.show_progress = show_progress
    show_progress = pipe.config.embeddings.show_progress
    timings: dict[str, Any] = {}

    tick = time.perf_counter()
    embeddings = pipe.embeddings
    embeddings.client  # load now, so that the model's load time is not billed to indexing
    reranker = pipe.reranker
    if reranker is not None:
        reranker.cross_encoder
    timings["load_models"] = time.perf_counter() - tick

    # -- index the corpus ---------------------------------------------------------------------
    tick = time.perf_counter()
    chunks = pipe.chunker.split_documents(dataset.documents())
    if not chunks:
        raise ConfigError(f"{dataset.path}: the corpus has no text to index")
    _open_eval_collection(pipe)
    _drop_stale_chunks(pipe, {c.id for c in chunks})
    report = pipe.index_chunks(chunks, show_progress=show_progress)
    token_counts = embeddings.count_tokens([c.page_content for c in chunks])
    timings["index"] = {
        "seconds": time.perf_counter() - tick,
        "chunks": len(chunks),
        "embedded": report.embedded,
        "from_cache": report.added - report.embedded,
        "already_indexed": report.skipped,
        "truncated": sum(1 for n in token_counts if n > embeddings.max_seq_length),
        "max_seq_length": embeddings.max_seq_length,
        "mean_tokens": float(np.mean(token_counts)),
        "collection": collection,
    }

    # -- first stage: all queries embedded at once, then scored in batches -----------------------
    query_ids = list(dataset.queries)
    texts = [dataset.queries[q] for q in query_ids]
    tick = time.perf_counter()
    vectors = embeddings.embed_queries(texts)
    timings["embed_queries"] = time.perf_counter() - tick
    tick = time.perf_counter()
    rerank_depth = (rerank_depth or pipe.config.retriever.fetch_k) if reranker is not None else 0
    # As BEIR: search one deeper, so that dropping the query's own id still leaves `depth` documents.
    extra = 1 if ignore_identical_ids else 0
    if search == "exact":
        doc_runs, hits = _exact_search(pipe, chunks, vectors, depth + extra, rerank_depth and rerank_depth + extra, query_batch_size)
    else:
        hits = _ann_search(pipe, vectors, depth + extra, len(chunks), len(dataset.corpus), query_batch_size, with_text=reranker is not None)
        doc_runs = [_best_chunk_per_doc(h, depth + extra) for h in hits]
    timings["search"] = time.perf_counter() - tick
    first_stage = dict(zip(query_ids, doc_runs))

    # -- reranking -------------------------------------------------------------------------------
    final = first_stage
    timings["rerank"] = 0.0
    if reranker is not None:
        tick = time.perf_counter()
        final = {}
        for q, text, chunk_hits in tqdm(
            list(zip(query_ids, texts, hits)), desc="Reranking", unit="query", disable=not show_progress
        ):
            pool = [h for h in chunk_hits if not (ignore_identical_ids and h.doc_id == q)][:rerank_depth]
            final[q] = _rerank(reranker, text, pool, first_stage[q], depth + extra)
        timings["rerank"] = time.perf_counter() - tick
    if ignore_identical_ids:
        first_stage = drop_identical_ids(first_stage, depth)
        final = drop_identical_ids(final, depth) if reranker is not None else first_stage

    tick = time.perf_counter()
    reports = {"first_stage": evaluate_run(dataset.qrels, first_stage, metrics)}
    reports["final"] = evaluate_run(dataset.qrels, final, metrics) if reranker is not None else reports["first_stage"]
    timings["metrics"] = time.perf_counter() - tick
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
    )


def _open_eval_collection(pipe: Pipeline) -> None:
    """The eval collection is derived data: one built by another model is dropped and rebuilt
    (its vectors come back from the embedding cache) rather than refused as a user's index is."""
    store = pipe.store
    try:
        store.collection
    except IndexMismatchError:
        logger.info("collection %s was built with another embedding setup; rebuilding it", store.collection_name)
        store.client.delete_collection(store.collection_name)
        store.collection


def _drop_stale_chunks(pipe: Pipeline, wanted: set[str]) -> None:
    """Remove chunks that are not in this corpus (another subset, another chunker setting)."""
    collection = pipe.store.collection
    stale = [i for i in collection.get(include=[])["ids"] if i not in wanted]
    batch = pipe.store.max_batch_size
    for start in range(0, len(stale), batch):
        collection.delete(ids=stale[start : start + batch])
    if stale:
        logger.info("removed %d chunks that are not part of this evaluation corpus", len(stale))


@dataclass
class _Hit:
    doc_id: str
    score: float
    text: str | None


def _stored_vectors(pipe: Pipeline, chunk_ids: list[str]) -> np.ndarray:
    """The collection's vectors, in ``chunk_ids`` order (read back from Chroma, page by page)."""
    collection, page = pipe.store.collection, pipe.store.max_batch_size
    rows: dict[str, np.ndarray] = {}
    for start in range(0, len(chunk_ids), page):
        got = collection.get(ids=chunk_ids[start : start + page], include=["embeddings"])
        rows.update(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
    return np.vstack([rows[i] for i in chunk_ids])


def _exact_search(
    pipe: Pipeline, chunks: list, vectors: np.ndarray, depth: int, rerank_depth: int, batch_size: int
) -> tuple[list[dict[str, float]], list[list[_Hit]]]:
    """Score every chunk; a document's score is its best chunk's (its chunks are contiguous).

    Similarity follows the collection's distance exactly as Chroma reports it (cosine: of the
    normalised vectors; ip: dot product; l2: 1 - squared distance / 2), so scores from the two
    search modes are comparable. Returns the top ``depth`` documents per query and, for the
    reranker, the top ``rerank_depth`` chunks.
    """
    corpus = _stored_vectors(pipe, [c.id for c in chunks])
    queries = np.asarray(vectors, dtype=np.float32)
    distance = pipe.store.config.distance
    if distance == "cosine":
        corpus = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-12)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    doc_ids = [c.metadata.get("doc_id", c.id) for c in chunks]
    starts = [i for i in range(len(doc_ids)) if i == 0 or doc_ids[i] != doc_ids[i - 1]]
    if len(starts) != len(set(doc_ids)):
        raise ValueError("chunks of one document must be contiguous")
    doc_names = [doc_ids[i] for i in starts]
    keep = min(depth, len(doc_names))
    runs: list[dict[str, float]] = []
    hits: list[list[_Hit]] = []
    for start in range(0, len(queries), batch_size):
        block = queries[start : start + batch_size]
        similarity = block @ corpus.T
        if distance == "l2":
            squared = (block**2).sum(1)[:, None] + (corpus**2).sum(1)[None, :] - 2 * similarity
            similarity = 1.0 - squared / 2.0
        per_doc = np.maximum.reduceat(similarity, starts, axis=1)
        for row, doc_row in zip(similarity, per_doc):
            top = np.argpartition(-doc_row, keep - 1)[:keep] if keep < len(doc_row) else np.arange(len(doc_row))
            runs.append(dict(ranked({doc_names[j]: float(doc_row[j]) for j in top})))
            if rerank_depth:
                n = min(rerank_depth, len(row))
                best = np.argpartition(-row, n - 1)[:n] if n < len(row) else np.arange(len(row))
                best = best[np.argsort(-row[best], kind="stable")]
                hits.append([_Hit(doc_ids[j], float(row[j]), chunks[j].page_content) for j in best])
            else:
                hits.append([])
    return runs, hits


def _ann_search(
    pipe: Pipeline, vectors: np.ndarray, depth: int, n_chunks: int, n_docs: int, batch_size: int, with_text: bool
) -> list[list[_Hit]]:
    """Top chunks per query, enough of them to cover ``depth`` distinct documents.

    A query whose top chunks cover fewer documents (several chunks of one document) is asked
    again with twice as many, until it has ``depth`` documents or has seen the whole collection.
    """
    store = pipe.store
    wanted_docs = min(depth, n_docs)
    chunks_per_doc = n_chunks / max(n_docs, 1)
    n = min(n_chunks, depth if chunks_per_doc <= 1 else math.ceil(depth * chunks_per_doc * 1.5))
    include = ["metadatas", "distances"] + (["documents"] if with_text else [])
    results: list[list[_Hit] | None] = [None] * len(vectors)
    pending = list(range(len(vectors)))
    while pending:
        short = []
        for start in range(0, len(pending), batch_size):
            part = pending[start : start + batch_size]
            answer = store.collection.query(query_embeddings=vectors[part], n_results=n, include=include)
            for row, index in enumerate(part):
                texts = answer["documents"][row] if with_text else [None] * len(answer["ids"][row])
                hits = [
                    _Hit(str((meta or {}).get("doc_id", chunk_id)), store._similarity(float(dist)), text)
                    for chunk_id, meta, dist, text in zip(answer["ids"][row], answer["metadatas"][row], answer["distances"][row], texts)
                ]
                results[index] = hits
                if len({h.doc_id for h in hits}) < wanted_docs and n < n_chunks:
                    short.append(index)
        pending, n = short, min(n_chunks, n * 2)
    return [r or [] for r in results]


def _best_chunk_per_doc(hits: list[_Hit], depth: int) -> dict[str, float]:
    scores: dict[str, float] = {}
    for hit in hits:
        if hit.score > scores.get(hit.doc_id, -math.inf):
            scores[hit.doc_id] = hit.score
    return dict(ranked(scores)[:depth])


def _rerank(reranker, query: str, hits: list[_Hit], first_stage: dict[str, float], depth: int) -> dict[str, float]:
    """Reranked documents first (by best chunk's rerank score), then the rest in first-stage order.

    The run's scores are rank-derived (depth, depth-1, ...) so that the two parts stay in order.
    """
    scores = reranker.score(query, [h.text or "" for h in hits])
    best: dict[str, float] = {}
    for hit, score in zip(hits, scores):
        if score > best.get(hit.doc_id, -math.inf):
            best[hit.doc_id] = score
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
