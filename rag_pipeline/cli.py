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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-pipeline",
        description="Load, chunk, embed (BGE), store (Chroma) and rerank: a LangChain retriever from a YAML config.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("config", help="pipeline config (YAML)")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value by dotted key, e.g. --set retriever.k=3 (repeatable)",
        )
        sub.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        return sub

    with_config(commands.add_parser("ingest", help="load, chunk, embed and index the configured sources"))
    query = with_config(commands.add_parser("query", help="retrieve the best passages for a query"))
    query.add_argument("text", help="the query")
    query.add_argument("--k", type=int, default=None, help="number of results")
    query.add_argument("--json", action="store_true", help="print a JSON array of {id, content, metadata}")
    run = with_config(commands.add_parser("run", help="ingest, then answer the config's sample queries"))
    run.add_argument("--k", type=int, default=None, help="number of results per query")

    config = commands.add_parser("config", help="validate or show a config")
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
    report = _pipeline(args).ingest()
    _print_ingest(report)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    documents = _pipeline(args).query(args.text, k=args.k)
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
    retriever = pipe.as_retriever(k=args.k)
    for query, documents in zip(queries, retriever.batch(queries)):
        _print_results(query, documents)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    config = load_config(args.config, overrides)
    if args.config_command == "validate":
        print(f"{args.config}: valid")
    else:
        print(config.to_yaml(), end="")
    return 0


COMMANDS = {"ingest": cmd_ingest, "query": cmd_query, "run": cmd_run, "config": cmd_config}


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


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, telemetry notices) is noise on a command line."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    for name in ("chromadb", "sentence_transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
