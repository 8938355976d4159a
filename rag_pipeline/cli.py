"""``rag-pipeline``: a thin command line over the Python API (parse, call, print)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

from . import __version__
from .config import load_config, parse_override
from .errors import RagPipelineError


def _debug_flag(parser: argparse.ArgumentParser) -> None:
    # Accepted after the subcommand too. SUPPRESS: a subcommand that does not see the flag must not
    # reset what the top-level parser already set.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-pipeline",
        description="Load, chunk, embed (BGE), store (Chroma) and rerank: a LangChain retriever from a YAML config.",
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks and debug logs")
    parser.add_argument("--quiet", "-q", action="store_true", default=False, help="no progress bars, ours or the libraries'")
    parser.add_argument("--version", action="version", version=f"rag-pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("config", help="pipeline config (YAML)")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value by dotted key, e.g. --set retriever.k=3 (repeatable)",
        )
        # before or after the subcommand: SUPPRESS keeps what the top-level parser set (as --debug)
        sub.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress bars, ours or the libraries'")
        _debug_flag(sub)
        return sub

    ingest = with_config(commands.add_parser("ingest", help="bring the index in step with the configured sources"))
    ingest.add_argument(
        "--dry-run", action="store_true", help="list the files that would be added, updated and removed; change nothing"
    )
    ingest.add_argument(
        "--prune-api", action="store_true",
        help="also remove the documents added from code (Pipeline.add_documents, pipe.vectorstore): mirror the folder alone",
    )
    ingest.add_argument(
        "--engine", choices=["local", "ray"], default=None,
        help="who reads, chunks and embeds the new and changed files (overrides ingest.engine; ray: extra `ray`)",
    )
    ingest.add_argument(
        "--address", default=None, metavar="ADDRESS",
        help="with --engine ray: the Ray cluster to join, e.g. auto or ray://HOST:10001 (overrides ingest.ray.address)",
    )
    with_config(commands.add_parser("reindex", help="re-embed the sources with the configured model into a new collection, then switch to it"))
    query = with_config(commands.add_parser("query", help="retrieve the best passages for a query"))
    query.add_argument("text", help="the query")
    query.add_argument("--k", type=int, default=None, help="number of results")
    query.add_argument("--json", action="store_true", help="print a JSON array of {id, content, metadata}")
    run = with_config(commands.add_parser("run", help="ingest, then answer the config's sample queries"))
    run.add_argument("--k", type=int, default=None, help="number of results per query")
    evaluate = with_config(commands.add_parser(
        "eval", help="score the pipeline on a BEIR-format test collection, or on labelled questions over its own index"
    ))
    collection = evaluate.add_mutually_exclusive_group(required=True)
    collection.add_argument("--dataset", metavar="DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    collection.add_argument(
        "--labels", metavar="FILE",
        help="questions (.jsonl or .csv), each naming the source, doc_id or chunk id that answers it, "
        "scored over the config's own index (ingest it first)",
    )
    evaluate.add_argument("--split", default=None, help="with --dataset: qrels/<split>.tsv to score (default: test)")
    evaluate.add_argument("--json", dest="json_path", metavar="FILE", help="also write metrics, config, timings as JSON")
    evaluate.add_argument(
        "--max-queries", type=int, default=None, metavar="N",
        help="quick run: the first N queries, their judged documents plus --distractors others (not comparable to published numbers)",
    )
    evaluate.add_argument("--distractors", type=int, default=None, metavar="D", help="with --max-queries: other documents drawn at random (default 500)")
    evaluate.add_argument("--seed", type=int, default=None, help="with --max-queries: seed for drawing the distractors (default 0)")
    evaluate.add_argument("--skip-bad", action="store_true", help="with --labels: leave bad labels out (each printed as a warning) instead of stopping")
    evaluate.add_argument(
        "--search", choices=["exact", "ann"], default="exact",
        help="exact: score every chunk (reproducible, as BEIR/MTEB); ann: Chroma's HNSW index, as in serving",
    )

    compare = with_config(commands.add_parser(
        "compare", help="evaluate every combination of --grid overrides on a BEIR collection; table and plot"
    ))
    compare.add_argument("--dataset", required=True, metavar="DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    compare.add_argument("--split", required=True, help="qrels/<split>.tsv to score: choose settings on train or dev, not test")
    compare.add_argument(
        "--grid", action="append", required=True, metavar="KEY=V1,V2",
        help="a dotted config key and the values to try, read as --set reads them, e.g. --grid retriever.fetch_k=50,100 "
        "(repeatable: every combination is run)",
    )
    compare.add_argument("--metric", default="ndcg@10", help="the metric that picks the best setting (default ndcg@10)")
    compare.add_argument("--out", metavar="DIR", help="write comparison.md, comparison.json and comparison.png there")
    compare.add_argument("--max-queries", type=int, default=None, metavar="N", help="quick run on a subset, as in eval")
    compare.add_argument("--distractors", type=int, default=500, metavar="D", help="with --max-queries: other documents drawn at random (default 500)")
    compare.add_argument("--seed", type=int, default=0, help="with --max-queries: seed for drawing the distractors")
    compare.add_argument("--search", choices=["exact", "ann"], default="exact", help="as in eval")

    serve = with_config(commands.add_parser(
        "serve", help="answer queries over HTTP with the models loaded once; a search page at /"
    ))
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--token-env", metavar="VAR",
        help="require `Authorization: Bearer <token>`, the token read from environment variable VAR "
        "(required when --host is not a loopback address)",
    )
    serve.add_argument(
        "--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="HOST",
        help="also answer requests whose Host header names HOST (a name, an address, a network such as 10.0.0.0/8, "
        "or '*' for any; repeatable). By default only the bound host's names: localhost, 127.x and [::1] on loopback",
    )
    serve.add_argument(
        "--max-k", type=int, default=100, metavar="N", help="the most results one query may ask for (default 100)"
    )
    serve.add_argument(
        "--max-body-mb", type=int, default=16, metavar="MB", help="the largest request body, in MiB (default 16)"
    )
    serve.add_argument(
        "--max-documents", type=int, default=1000, metavar="N",
        help="the most documents one POST /documents may carry, and the most inputs of one /v1/embeddings or /rerank call (default 1000)",
    )
    serve.add_argument(
        "--workers", type=int, default=16, metavar="N", help="queries answered at once (default 16)"
    )
    serve.add_argument(
        "--batch-wait-ms", type=float, default=2.0, metavar="MS",
        help="the longest a query's embedding waits for others to join its batch (default 2)",
    )
    serve.add_argument(
        "--max-queue", type=int, default=64, metavar="N",
        help="queries that may wait for a worker; more are answered 429 (default 64)",
    )
    serve.add_argument(
        "--serial", action="store_true",
        help="answer one request at a time, without batching (the old behaviour, for comparison)",
    )
    mcp = with_config(commands.add_parser(
        "mcp", help="offer the index as tools to an AI client (Model Context Protocol): stdio, or HTTP with --port"
    ))
    mcp.add_argument(
        "--allow-writes", action="store_true",
        help="also offer the add_documents and delete tools (by default the client can only search and list)",
    )
    mcp.add_argument(
        "--port", type=int, default=None, metavar="N",
        help="serve streamable HTTP at http://HOST:N/mcp instead of stdio (the client starts the server itself on stdio)",
    )
    mcp.add_argument("--host", default=None, help="with --port: interface to bind (default 127.0.0.1: this machine only)")
    mcp.add_argument(
        "--token-env", metavar="VAR",
        help="with --port: require `Authorization: Bearer <token>`, the token read from environment variable VAR "
        "(required when --host is not a loopback address)",
    )
    mcp.add_argument(
        "--max-k", type=int, default=100, metavar="N", help="the most results one search may ask for (default 100)"
    )
    ls = with_config(commands.add_parser("ls", help="list the index's sources: origin, chunk count, last written"))
    ls.add_argument("--json", action="store_true", help="print a JSON array of {source, origin, chunks, recorded_at}")
    stats = with_config(commands.add_parser("stats", help="collection, model, fingerprint, counts and sizes on disk"))
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    export = with_config(commands.add_parser("export", help="write every chunk with its metadata as JSON Lines"))
    export.add_argument("--vectors", action="store_true", help="include each chunk's stored vector")
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    delete = with_config(commands.add_parser("delete", help="remove documents added from code, by source or by chunk id"))
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--source", action="append", metavar="S", help="a source added from code (repeatable)")
    which.add_argument("--id", dest="ids", action="append", metavar="ID", help="a chunk id (repeatable)")

    config = commands.add_parser("config", help="validate or show a config")
    _debug_flag(config)
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    validate = with_config(config_commands.add_parser("validate", help="check a config without loading any model"))
    validate.add_argument(
        "--deep", action="store_true", help="also find every model the config names (no weights loaded)"
    )
    with_config(config_commands.add_parser("show", help="print the resolved config as YAML"))
    _finetune_parser(commands)
    return parser


def _finetune_parser(commands) -> None:
    finetune = commands.add_parser("finetune", help="mine hard negatives, fine-tune the embedder, train a reranker")
    _debug_flag(finetune)
    actions = finetune.add_subparsers(dest="finetune_command", required=True, metavar="ACTION")
    mine = actions.add_parser(
        "mine", help="write a FlagEmbedding-format training file from a BEIR split's qrels, or from labelled questions"
    )
    mine.add_argument("config", help="pipeline config (YAML) whose retriever finds the negatives")
    mine.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="as in eval")
    source = mine.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    source.add_argument(
        "--labels", metavar="FILE",
        help="questions (.jsonl or .csv), each naming the source, doc_id or chunk id that answers it; "
        "the corpus is the config's own index (ingest it first)",
    )
    mine.add_argument("--split", default=None, help="with --dataset: qrels/<split>.tsv to mine (default train; test needs --force)")
    mine.add_argument("--out", required=True, metavar="FILE", help="training file to write (.jsonl)")
    mine.add_argument("--ranks", default="10..100", metavar="N..M", help="negatives from ranks N+1..M of the first stage (default 10..100)")
    mine.add_argument("--margin", type=float, default=None, help="skip candidates scoring within this of the weakest retrieved positive")
    mine.add_argument("--max-negatives", type=int, default=None, metavar="K", help="keep the first K negatives per query")
    mine.add_argument("--dev-share", type=float, default=None, help="with --dataset: share of the split's queries held out as dev (default 0.2)")
    mine.add_argument("--dev-seed", type=int, default=None, help="with --dataset: seed of the dev draw (default 0)")
    mine.add_argument("--no-dev", action="store_true", help="with --dataset: mine every query of the split (hold nothing out)")
    mine.add_argument("--force", action="store_true", help="with --dataset: allow --split test")
    mine.add_argument(
        "--holdout", type=float, default=None, metavar="FRACTION",
        help="with --labels: share of the questions held out, written to OUT's stem + .heldout.jsonl for "
        "`eval --labels` (default 0.2; 0 holds nothing out)",
    )
    mine.add_argument("--seed", type=int, default=None, help="with --labels: seed of the held-out draw (default 0)")
    mine.add_argument("--skip-bad", action="store_true", help="with --labels: leave bad labels out (each printed as a warning) instead of stopping")
    mine.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _debug_flag(mine)
    for kind in ("embedder", "reranker"):
        train = actions.add_parser(kind, help=f"train the {kind} on a training file")
        train.add_argument("--data", required=True, metavar="FILE", help="FlagEmbedding-format .jsonl (from `finetune mine`)")
        train.add_argument("--base", required=True, metavar="MODEL", help="hub id, local folder or package:NAME to start from")
        train.add_argument("--out", required=True, metavar="DIR", help="output folder (loads as embeddings.model / reranker.model)")
        train.add_argument(
            "--loss", default="mnrl" if kind == "embedder" else "listwise",
            choices=["mnrl", "cached-mnrl"] if kind == "embedder" else ["listwise", "bce", "margin-mse"],
        )
        train.add_argument("--epochs", type=float, default=1.0)
        train.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
        train.add_argument("--batch-size", type=int, default=32)
        train.add_argument("--lr", type=float, default=2e-5)
        train.add_argument("--negatives", type=int, default=1 if kind == "embedder" else 4, help="hard negatives per query")
        train.add_argument("--max-length", type=int, default=None, help="tokens per input (default: the model's)")
        train.add_argument("--save-steps", type=int, default=200, help="checkpoint every N steps")
        train.add_argument("--seed", type=int, default=0)
        train.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: where the CPU has it natively)")
        train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT/checkpoints")
        train.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        if kind == "embedder":
            train.add_argument("--mini-batch-size", type=int, default=16, help="cached-mnrl: texts per forward pass")
            train.add_argument("--lora", type=int, default=None, metavar="RANK", help="train LoRA adapters of this rank (peft), merged on save")
            train.add_argument("--query-instruction", default=None, help="prefix for queries (default: the model's, as at query time)")
        else:
            train.add_argument(
                "--head", choices=["auto", "cls", "mean"], default="auto",
                help="what the score reads: [CLS] or the mean token state (auto: the base's own pooling)",
            )
            train.add_argument(
                "--in-batch-negatives", type=int, default=4, metavar="N",
                help="listwise: other queries' passages added to each list (default 4)",
            )
        _debug_flag(train)


def _pipeline(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from .pipeline import Pipeline

    overrides = dict(parse_override(o) for o in args.overrides)
    overrides.update(extra or {})  # flags that name a config key, taken as typed (not read as YAML)
    pipe = Pipeline.from_yaml(args.config, overrides)
    if getattr(args, "quiet", False):
        pipe.config.loader.show_progress = False
        pipe.config.embeddings.show_progress = False
    return pipe


def _print_results(query: str, documents: Sequence[Any], retriever: Any = None) -> None:
    print(f"\nQuery: {query}")
    if not documents:
        reason = retriever.empty_reason() if hasattr(retriever, "empty_reason") else "is the index empty?"
        print(f"  (no results: {reason})")
    for rank, document in enumerate(documents, start=1):
        meta = document.metadata
        scores = f"score={meta.get('score', float('nan')):.3f}"
        if any(f"{arm}_rank" in meta for arm in ("dense", "bm25")):  # fused: each arm's rank, "-" if it missed
            scores += "".join(f" {arm}#{meta.get(f'{arm}_rank', '-')}" for arm in ("dense", "bm25"))
        if "rerank_score" in meta:
            scores += f" rerank={meta['rerank_score']:.3f}"
        snippet = " ".join(document.page_content.split())[:100]
        print(f"  {rank}. [{scores}] {meta.get('doc_id', meta.get('source', '?'))}  {snippet}")


def _print_ingest(report) -> None:
    print(report.summary())
    for error in report.errors:
        print(f"  skipped {error}", file=sys.stderr)
    if report.truncated:
        print(f"  warning: {report.truncated} chunks exceed the model's max_seq_length and are truncated", file=sys.stderr)


def cmd_ingest(args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = _pipeline(args).plan(prune_api=args.prune_api)
        print(plan.summary())
        warning = plan.removal_warning()
        if warning:
            print(warning, file=sys.stderr)
        for label, sources in (("add", plan.added), ("update", plan.updated), ("remove", plan.removed), ("keep", plan.kept)):
            for source in sources:
                print(f"  {label:<6} {source}")
        return 0
    _print_ingest(_engine_pipeline(args).ingest(prune_api=args.prune_api))
    return 0


def _engine_pipeline(args: argparse.Namespace):
    """The pipeline with ``--engine`` and ``--address`` applied over the config."""
    extra: dict[str, Any] = {}
    if args.engine is not None:
        extra["ingest.engine"] = args.engine
    if args.address is not None:
        extra["ingest.ray.address"] = args.address
    pipe = _pipeline(args, extra)
    if args.address is not None and pipe.config.ingest.engine != "ray":
        raise RagPipelineError("--address: names a Ray cluster, so it needs --engine ray (or ingest.engine: ray)")
    return pipe


def cmd_reindex(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    report = pipe.reindex()
    _print_ingest(report)
    logical = pipe.config.vectorstore.collection
    print(
        f"now serving collection {report.collection!r} under the name {logical!r}: keep "
        f"vectorstore.collection: {logical} in your configs (the record maps the name to the current collection)"
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    retriever = _pipeline(args).as_retriever(k=args.k, k_name="--k")
    documents = retriever.invoke(args.text)
    if args.json:
        payload = [{"id": d.id, "content": d.page_content, "metadata": d.metadata} for d in documents]
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        _print_results(args.text, documents, retriever)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    queries = pipe.sample_queries()
    if not queries:
        raise RagPipelineError("sample_queries: the config lists no sample queries for `run`")
    started = time.perf_counter()
    report = pipe.ingest()
    _print_ingest(report)
    retriever = pipe.as_retriever(k=args.k, k_name="--k")
    answers = retriever.batch(queries)
    for query, documents in zip(queries, answers):
        _print_results(query, documents, retriever)
    empty = sum(1 for documents in answers if not documents)
    print(
        f"\ndone: {len(queries)} sample queries answered ({empty} with no result) from {report.collection_count} chunks "
        f"of {report.files_seen} files in {time.perf_counter() - started:.1f}s; "
        f"next: rag-pipeline query {args.config} \"...\" or rag-pipeline serve {args.config}"
    )
    return 0


def _require_extra(module: str, extra: str, verb: str) -> None:
    """Fail before any work when an optional feature's package is missing, naming the extra."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise RagPipelineError(f"{verb} needs {module}, which is not installed: pip install 'rag-pipeline[{extra}]'")


def _only_with(args: argparse.Namespace, mode: str, flags: dict[str, str]) -> None:
    """Refuse a flag (``flags``: attribute -> flag) that the other mode (``--dataset`` or
    ``--labels``) reads, rather than ignore it."""
    given = [flag for attribute, flag in flags.items() if getattr(args, attribute) is not None and getattr(args, attribute) is not False]
    if given:
        raise RagPipelineError(f"{given[0]}: not read with {mode}")


_DATASET_EVAL_FLAGS = {"split": "--split", "max_queries": "--max-queries", "distractors": "--distractors", "seed": "--seed"}


def _print_skipped(labels) -> None:
    for line in labels.warnings():
        print(f"warning: {line} (left out)", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    _require_extra("pytrec_eval", "eval", "eval")
    from .evaluation import evaluate, load_beir

    if args.labels is not None:
        from .evaluation import evaluate_labels, load_labels

        _only_with(args, "--labels", _DATASET_EVAL_FLAGS)
        pipe = _pipeline(args)
        labels = load_labels(args.labels, pipe, skip_bad=args.skip_bad)
        _print_skipped(labels)
        result = evaluate_labels(pipe, labels, search=args.search)
        print(result.table())
        if args.json_path:
            print(f"wrote {result.write_json(args.json_path)}")
        return 0
    _only_with(args, "--dataset", {"skip_bad": "--skip-bad"})
    dataset = load_beir(args.dataset, split=args.split or "test")
    if args.max_queries is not None:
        distractors = 500 if args.distractors is None else args.distractors
        dataset = dataset.subset_of(args.max_queries, distractors=distractors, seed=args.seed or 0)
    result = evaluate(_pipeline(args), dataset, search=args.search)
    print(result.table())
    if args.json_path:
        print(f"wrote {result.write_json(args.json_path)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    _require_extra("pytrec_eval", "eval", "compare")
    from .evaluation import load_beir, parse_grid, run_comparison, validate_grid
    from .evaluation.comparison import check_can_plot

    grid = parse_grid(args.grid)
    overrides = dict(parse_override(o) for o in args.overrides)
    plan = validate_grid(args.config, grid, overrides=overrides, metric=args.metric)  # before reading any data
    if args.out:
        check_can_plot()
    dataset = load_beir(args.dataset, split=args.split)
    if args.max_queries is not None:
        dataset = dataset.subset_of(args.max_queries, distractors=args.distractors, seed=args.seed)

    def progress(done: int, total: int, row) -> None:
        print(f"[{done}/{total}] {row.label}: {args.metric} {100 * row.metrics['final'][args.metric]:.2f} "
              f"({row.seconds:.1f}s, {row.timings['index']['embedded']} embedded)", file=sys.stderr)

    result = run_comparison(
        plan, dataset, search=args.search, show_progress=False if args.quiet else None, on_result=progress
    )
    print(result.to_markdown(), end="")
    if args.out:
        for path in result.write(args.out).values():
            print(f"wrote {path}")
    if args.split == "test":
        print("note: a setting chosen on the test split is tuned to it; choose on train or dev, then report test once",
              file=sys.stderr)
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    sources = pipe.sources()
    if args.json:
        print(json.dumps([s.to_dict() for s in sources], ensure_ascii=False, indent=2))
        return 0
    stats = pipe.stats()
    print(f"collection {stats['collection']!r}: {len(sources)} sources, {stats['recorded_chunks']} chunks; "
          f"last ingest {stats['last_ingest'] or 'never'}")
    for info in sources:
        print(f"  {info.origin:<6} {info.chunks:>6}  {info.recorded_at}  {info.source}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    stats = _pipeline(args).stats()
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
        return 0
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key}: {value}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .jsonl import write_json_objects

    chunks = _pipeline(args).export(vectors=args.vectors)
    if args.out is None:
        write_json_objects(chunks, sys.stdout)
        return 0
    with open(args.out, "w", encoding="utf-8", newline="\n") as handle:
        count = write_json_objects(chunks, handle)
    print(f"wrote {count} chunks to {args.out}", file=sys.stderr)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    pipe.require_index()
    if args.source:
        removed = pipe.delete(source=args.source)
        print(f"deleted {removed} chunks of {len(args.source)} source(s): {', '.join(args.source)}")
    else:
        removed = pipe.delete(ids=args.ids)
        print(f"deleted {removed} of {len(args.ids)} chunk id(s) given (ids the index did not hold are ignored)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    config = load_config(args.config, overrides)
    if args.config_command == "validate":
        if args.deep:
            from .pipeline import Pipeline

            for key, resolved in Pipeline(config).preflight().items():
                print(f"{key}: {resolved.model_id} ({resolved.path or 'from the hub'})")
        print(f"{args.config}: valid")
    else:
        print(config.to_yaml(), end="")
        _print_precisions(config)
    return 0


def _network_token(args: argparse.Namespace, is_loopback: Callable[[str], bool]) -> str | None:
    """The token a network server (``serve``, ``mcp --port``) wants, read from ``--token-env``; a
    bind beyond loopback without one is refused."""
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise RagPipelineError(f"--token-env {args.token_env}: that environment variable is unset or empty; export the token in it")
        return token
    if not is_loopback(args.host):
        # an index of private notes must not be open to a network by one mistyped flag
        raise RagPipelineError(
            f"--host {args.host} is reachable from other machines: give --token-env VAR with a token in $VAR "
            "(clients send `Authorization: Bearer <token>`), or bind 127.0.0.1"
        )
    return None


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerSettings, create_app, is_loopback, run_server
        from .server.app import allowed_hosts_for
        from .service import ServiceSettings
    except ModuleNotFoundError as exc:
        raise RagPipelineError(
            f"serve needs {exc.name}, which is not installed: pip install 'rag-pipeline[serve]'"
        ) from None
    token = _network_token(args, is_loopback)
    for flag, value in (("--max-k", args.max_k), ("--max-body-mb", args.max_body_mb), ("--max-documents", args.max_documents),
                        ("--workers", args.workers)):
        if value <= 0:
            raise RagPipelineError(f"{flag}: must be a positive whole number, got {value}")
    if args.max_queue < 0:
        raise RagPipelineError(f"--max-queue: must be a whole number, 0 or more, got {args.max_queue}")
    if not args.batch_wait_ms >= 0:
        raise RagPipelineError(f"--batch-wait-ms: must be a number of milliseconds, 0 or more, got {args.batch_wait_ms}")
    settings = ServerSettings(
        token=token,
        allowed_hosts=allowed_hosts_for(args.host, args.allowed_hosts),
        max_k=args.max_k,
        max_body_bytes=args.max_body_mb * 2**20,
        max_documents=args.max_documents,
    )
    pipeline = _pipeline(args)
    lock_wait = pipeline.config.ingest.lock_timeout
    service_settings = ServiceSettings(
        workers=args.workers, max_wait_ms=args.batch_wait_ms, max_queue=args.max_queue, serial=args.serial,
        **({"write_lock_wait_s": lock_wait} if isinstance(lock_wait, (int, float)) and lock_wait >= 0 else {}),
    )
    app = create_app(pipeline, settings, service_settings=service_settings)
    docs = "/openapi.json with the token" if token else "/docs"
    print(f"serving {args.config} on http://{args.host}:{args.port}/  (API docs: {docs}; Ctrl-C stops)", file=sys.stderr)
    run_server(app, args.host, args.port, log_level="warning" if args.quiet else "info")
    return 0


def _cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from .server import is_loopback
        from .server.mcp import McpSettings, run_mcp
        from .service import ServiceSettings
    except ModuleNotFoundError as exc:
        import importlib.util

        name = (exc.name or "mcp").partition(".")[0]
        if name == "mcp" and importlib.util.find_spec("mcp") is not None:  # installed, but 1.x: no mcp.server.mcpserver
            raise RagPipelineError(
                f"mcp needs the MCP SDK 2.x, and the installed mcp lacks {exc.name}: pip install --upgrade 'mcp>=2.3'"
            ) from None
        extra = "mcp" if name in ("mcp", "mcp_types") else "mcp,serve"  # the result conversion is serve's (FastAPI)
        raise RagPipelineError(f"mcp needs {name}, which is not installed: pip install 'rag-pipeline[{extra}]'") from None
    token = None
    if args.port is None:
        for flag, given in (("--host", args.host), ("--token-env", args.token_env)):
            if given is not None:
                raise RagPipelineError(
                    f"{flag}: only with --port N (streamable HTTP); over stdio only the client that started the server reaches it"
                )
    else:
        args.host = args.host or "127.0.0.1"
        token = _network_token(args, is_loopback)
    if args.max_k <= 0:
        raise RagPipelineError(f"--max-k: must be a positive whole number, got {args.max_k}")
    args.quiet = True  # a server's standard error is the client's log, not a terminal: no progress bars
    pipeline = _pipeline(args)
    lock_wait = pipeline.config.ingest.lock_timeout
    service_settings = ServiceSettings(
        **({"write_lock_wait_s": lock_wait} if isinstance(lock_wait, (int, float)) and lock_wait >= 0 else {}),
    )
    settings = McpSettings(allow_writes=args.allow_writes, max_k=args.max_k, token=token)
    run_mcp(pipeline, settings, port=args.port, host=args.host or "127.0.0.1", service_settings=service_settings)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from . import finetuning

    if args.finetune_command == "mine":
        from .evaluation import load_beir

        skip, _, depth = args.ranks.partition("..")
        if not (skip.isdigit() and depth.isdigit()):
            raise RagPipelineError(f"--ranks: expected N..M (e.g. 10..100), got {args.ranks!r}")
        window = finetuning.MiningWindow(int(skip), int(depth))
        if args.labels is not None:
            return _mine_labels(args, window)
        _only_with(args, "--dataset", {"holdout": "--holdout", "seed": "--seed", "skip_bad": "--skip-bad"})
        split = args.split or "train"
        dev_share = finetuning.DEV_SHARE if args.dev_share is None else args.dev_share
        dev_seed = finetuning.DEV_SEED if args.dev_seed is None else args.dev_seed
        finetuning.refuse_test_split(split, args.force)
        dataset = load_beir(args.dataset, split=split)
        query_ids = list(dataset.queries)
        if not args.no_dev:
            query_ids, dev_ids = finetuning.dev_split(query_ids, dev_share, dev_seed)
            print(f"held out {len(dev_ids)} of {len(dev_ids) + len(query_ids)} {split} queries as dev "
                  f"(share {dev_share}, seed {dev_seed})", file=sys.stderr)
        examples = finetuning.mine_hard_negatives(
            args.config, finetuning.with_queries(dataset, query_ids),
            window=window, margin=args.margin, max_negatives=args.max_negatives,
            overrides=dict(parse_override(o) for o in args.overrides), show_progress=False if args.quiet else None,
        )
        path = finetuning.write_training_file(examples, args.out)
        print(f"wrote {path}: {len(examples)} queries, {sum(len(e.neg) for e in examples)} negatives")
        return 0
    settings = finetuning.TrainingSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, negatives=args.negatives,
        max_steps=args.max_steps, save_steps=args.save_steps, seed=args.seed, resume=args.resume,
        bf16={"auto": None, "on": True, "off": False}[args.bf16], show_progress=not args.quiet, max_length=args.max_length,
    )
    if args.finetune_command == "embedder":
        result = finetuning.train_embedder(
            args.data, args.base, args.out, settings, loss=args.loss, mini_batch_size=args.mini_batch_size,
            query_instruction=args.query_instruction, lora_rank=args.lora,
        )
    else:
        result = finetuning.train_reranker(args.data, args.base, args.out, settings, loss=args.loss, head=args.head,
                                               in_batch_negatives=args.in_batch_negatives)
    print(f"wrote {result.out}: {result.steps} steps in {result.seconds:.0f}s, peak memory {result.peak_rss_mb:.0f} MB "
          f"(card: {result.out / finetuning.CARD_FILENAME})")
    return 0


def _mine_labels(args: argparse.Namespace, window) -> int:
    """``finetune mine CONFIG --labels FILE``: hold a share out, mine the rest over the config's index."""
    from . import finetuning
    from .evaluation import load_labels, write_labels

    _only_with(args, "--labels", {"split": "--split", "dev_share": "--dev-share", "dev_seed": "--dev-seed",
                                  "no_dev": "--no-dev", "force": "--force"})
    holdout = finetuning.HOLDOUT_SHARE if args.holdout is None else args.holdout
    seed = 0 if args.seed is None else args.seed
    if not 0 <= holdout < 1:
        raise RagPipelineError(f"--holdout must be 0 or more and below 1, got {holdout}")
    pipe = _pipeline(args)
    labels = load_labels(args.labels, pipe, skip_bad=args.skip_bad)
    _print_skipped(labels)
    train, held_out = finetuning.split_labels(labels.labels, holdout, seed)
    examples = finetuning.mine_from_labels(
        pipe, labels, train, window=window, margin=args.margin, max_negatives=args.max_negatives,
        show_progress=False if args.quiet else None,
    )
    path = finetuning.write_training_file(examples, args.out)
    print(f"wrote {path}: {len(examples)} questions, {sum(len(e.neg) for e in examples)} negatives")
    if held_out:
        kept = write_labels(held_out, finetuning.heldout_path(args.out))
        print(f"held out {len(held_out)} of {len(labels.labels)} questions (share {holdout}, seed {seed}) in {kept}: "
              f"score them with `rag-pipeline eval {args.config} --labels {kept}`, before and after training")
    elif holdout:
        print(f"held out no question: {holdout} of {len(labels.labels)} rounds to 0", file=sys.stderr)
    return 0


def _print_precisions(config) -> None:
    """What each ``precision`` becomes on this machine and why, as YAML comments."""
    from .models import describe_precision, resolve_precision
    from .models.graph_fusion import GRAPH_FUSION_ENV, graph_fusion_enabled

    fusable = []
    for section in ("embeddings", "reranker"):
        stage = getattr(config, section, None)
        if stage is not None and hasattr(stage, "precision") and hasattr(stage, "device"):
            resolved = resolve_precision(stage.device, stage.precision, section)
            print("# " + describe_precision(stage.device, stage.precision, section, resolved))
            if resolved.device == "cpu" and resolved.dtype in ("float32", "bfloat16") and stage.type != "bge-m3":
                fusable.append(section)
    if fusable:
        state = "on" if graph_fusion_enabled() else f"off ({GRAPH_FUSION_ENV}=0)"
        print(f"# {' and '.join(fusable)}: oneDNN Graph fusion {state} (attention fused on the CPU; {GRAPH_FUSION_ENV}=0 turns it off)")


COMMANDS = {"ingest": cmd_ingest, "reindex": cmd_reindex, "query": cmd_query, "run": cmd_run, "eval": cmd_eval, "compare": cmd_compare,
            "config": cmd_config, "ls": _cmd_ls, "stats": _cmd_stats, "export": _cmd_export, "delete": _cmd_delete,
            "serve": _cmd_serve, "mcp": _cmd_mcp, "finetune": cmd_finetune}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.debug:
        _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except RagPipelineError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `rag-pipeline run ... | head`: the reader left; stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, telemetry notices) is noise on a command line."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    for name in ("chromadb", "sentence_transformers", "httpx", "pypdf"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
