"""``rag-pipeline``: a thin command line over the Python API (parse, call, print)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Sequence

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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("config", help="pipeline config (YAML)")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value by dotted key, e.g. --set retriever.k=3 (repeatable)",
        )
        sub.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        _debug_flag(sub)
        return sub

    ingest = with_config(commands.add_parser("ingest", help="bring the index in step with the configured sources"))
    ingest.add_argument(
        "--dry-run", action="store_true", help="list the files that would be added, updated and removed; change nothing"
    )
    with_config(commands.add_parser("reindex", help="re-embed the sources with the configured model into a new collection, then switch to it"))
    query = with_config(commands.add_parser("query", help="retrieve the best passages for a query"))
    query.add_argument("text", help="the query")
    query.add_argument("--k", type=int, default=None, help="number of results")
    query.add_argument("--json", action="store_true", help="print a JSON array of {id, content, metadata}")
    run = with_config(commands.add_parser("run", help="ingest, then answer the config's sample queries"))
    run.add_argument("--k", type=int, default=None, help="number of results per query")
    evaluate = with_config(commands.add_parser("eval", help="score the pipeline on a BEIR-format test collection"))
    evaluate.add_argument("--dataset", required=True, metavar="DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    evaluate.add_argument("--split", default="test", help="qrels/<split>.tsv to score (default: test)")
    evaluate.add_argument("--json", dest="json_path", metavar="FILE", help="also write metrics, config, timings as JSON")
    evaluate.add_argument(
        "--max-queries", type=int, default=None, metavar="N",
        help="quick run: the first N queries, their judged documents plus --distractors others (not comparable to published numbers)",
    )
    evaluate.add_argument("--distractors", type=int, default=500, metavar="D", help="with --max-queries: other documents drawn at random (default 500)")
    evaluate.add_argument("--seed", type=int, default=0, help="with --max-queries: seed for drawing the distractors")
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

    config = commands.add_parser("config", help="validate or show a config")
    _debug_flag(config)
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    with_config(config_commands.add_parser("validate", help="check a config without loading any model"))
    with_config(config_commands.add_parser("show", help="print the resolved config as YAML"))
    return parser


def _pipeline(args: argparse.Namespace):
    from .pipeline import Pipeline

    overrides = dict(parse_override(o) for o in args.overrides)
    pipe = Pipeline.from_yaml(args.config, overrides)
    if getattr(args, "quiet", False):
        pipe.config.loader.show_progress = False
        pipe.config.embeddings.show_progress = False
    return pipe


def _print_results(query: str, documents: Sequence[Any]) -> None:
    print(f"\nQuery: {query}")
    if not documents:
        print("  (no results: is the index empty? run `rag-pipeline ingest` first)")
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
        plan = _pipeline(args).plan()
        print(plan.summary())
        for label, sources in (("add", plan.added), ("update", plan.updated), ("remove", plan.removed), ("keep", plan.kept)):
            for source in sources:
                print(f"  {label:<6} {source}")
        return 0
    _print_ingest(_pipeline(args).ingest())
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    report = _pipeline(args).reindex()
    _print_ingest(report)
    print(f"now serving collection {report.collection!r}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    documents = _pipeline(args).as_retriever(k=args.k, k_name="--k").invoke(args.text)
    if args.json:
        payload = [{"id": d.id, "content": d.page_content, "metadata": d.metadata} for d in documents]
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        _print_results(args.text, documents)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    queries = pipe.sample_queries()
    if not queries:
        raise RagPipelineError("sample_queries: the config lists no sample queries for `run`")
    _print_ingest(pipe.ingest())
    retriever = pipe.as_retriever(k=args.k, k_name="--k")
    for query, documents in zip(queries, retriever.batch(queries)):
        _print_results(query, documents)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, load_beir

    dataset = load_beir(args.dataset, split=args.split)
    if args.max_queries is not None:
        dataset = dataset.subset_of(args.max_queries, distractors=args.distractors, seed=args.seed)
    result = evaluate(_pipeline(args), dataset, search=args.search)
    print(result.table())
    if args.json_path:
        print(f"wrote {result.write_json(args.json_path)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation import compare, load_beir, parse_grid
    from .evaluation.comparison import check_can_plot, validate_grid

    grid = parse_grid(args.grid)
    overrides = dict(parse_override(o) for o in args.overrides)
    validate_grid(args.config, grid, overrides=overrides, metric=args.metric)  # before reading any data
    if args.out:
        check_can_plot()
    dataset = load_beir(args.dataset, split=args.split)
    if args.max_queries is not None:
        dataset = dataset.subset_of(args.max_queries, distractors=args.distractors, seed=args.seed)

    def progress(done: int, total: int, row) -> None:
        print(f"[{done}/{total}] {row.label}: {args.metric} {100 * row.metrics['final'][args.metric]:.2f} "
              f"({row.seconds:.1f}s, {row.timings['index']['embedded']} embedded)", file=sys.stderr)

    result = compare(
        args.config, dataset, grid, overrides=overrides, metric=args.metric, search=args.search,
        show_progress=False if args.quiet else None, on_result=progress,
    )
    print(result.to_markdown(), end="")
    if args.out:
        for path in result.write(args.out).values():
            print(f"wrote {path}")
    if args.split == "test":
        print("note: a setting chosen on the test split is tuned to it; choose on train or dev, then report test once",
              file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    config = load_config(args.config, overrides)
    if args.config_command == "validate":
        print(f"{args.config}: valid")
    else:
        print(config.to_yaml(), end="")
        _print_precisions(config)
    return 0


def _print_precisions(config) -> None:
    """What each ``precision`` becomes on this machine and why, as YAML comments."""
    from .models import describe_precision

    for section in ("embeddings", "reranker"):
        stage = getattr(config, section, None)
        if stage is not None and hasattr(stage, "precision") and hasattr(stage, "device"):
            print("# " + describe_precision(stage.device, stage.precision, section))


COMMANDS = {"ingest": cmd_ingest, "reindex": cmd_reindex, "query": cmd_query, "run": cmd_run, "eval": cmd_eval, "compare": cmd_compare,
            "config": cmd_config}


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
