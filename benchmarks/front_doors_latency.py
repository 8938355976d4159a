"""Latency of each front door: ``POST /v1/embeddings`` (1 and 32 inputs) and ``POST /query`` on
``rag-pipeline serve``, and an MCP ``search`` round trip over stdio on ``rag-pipeline mcp``.

    python benchmarks/front_doors_latency.py                 # quickstart config, 50 timed calls each

Ingests the config's corpus into a fresh index (a temporary folder), starts ``rag-pipeline serve``
on a free port, and times each kind of call on one keep-alive connection, the kinds interleaved
(so that all see the same machine load), after ``--warmup`` untimed rounds. The passages are the
index's own chunks (as an ingest embeds them: ``embeddings_1``, ``embeddings_32``); the config's
sample queries are embedded as queries (``embeddings_1_query``) and searched (``query``, and
``mcp_search`` through the MCP SDK's own client, which starts ``rag-pipeline mcp`` on stdio).
Records the p50, p95 and mean of each in ``results/front-doors.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import harness
from mcp import ClientSession, StdioServerParameters, stdio_client

from rag_pipeline.config import parse_override

REPO = harness.REPO


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values_ms), 2),
        "p95_ms": round(statistics.quantiles(values_ms, n=100, method="inclusive")[94], 2),
        "mean_ms": round(statistics.fmean(values_ms), 2),
        "n": len(values_ms),
    }


def timed_post(connection: http.client.HTTPConnection, path: str, body: dict) -> float:
    started = time.perf_counter()
    connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    reply = connection.getresponse()
    payload = reply.read()
    elapsed = 1000 * (time.perf_counter() - started)
    if reply.status != 200:
        raise SystemExit(f"POST {path}: {reply.status} {payload[:300]!r}")
    return elapsed


async def interleaved(connection, config_path: Path, kinds: dict, queries: list[str], timings: dict, args) -> None:
    """Every kind once per round, the MCP search among them, so that all see the same load."""
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "rag_pipeline.cli", "mcp", str(config_path), "-q"], env=dict(os.environ)
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for i in range(args.warmup + args.requests):
            for name, request in kinds.items():
                elapsed = timed_post(connection, *request(i))
                if i >= args.warmup:
                    timings[name].append(elapsed)
            started = time.perf_counter()
            answer = await session.call_tool("search", {"query": queries[i % len(queries)]})
            elapsed = 1000 * (time.perf_counter() - started)
            if answer.is_error:
                raise SystemExit(f"mcp search: {answer.content}")
            if i >= args.warmup:
                timings["mcp_search"].append(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--requests", type=int, default=50, help="timed calls of each kind")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--encoding-format", choices=("float", "base64"), default="float")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="compat-bench-") as folder:
        overrides = dict(parse_override(o) for o in args.overrides)
        pipe, config_path, report = harness.ingested_copy(args.config, Path(folder), overrides)
        queries = pipe.sample_queries()
        chunks = [row["content"] for row in pipe.export()]
        if len(chunks) < 32:
            raise SystemExit(f"the index has {len(chunks)} chunks; 32 are needed for the 32-input calls")

        kinds = {
            "embeddings_1": lambda i: ("/v1/embeddings", {"input": [chunks[i % len(chunks)]], "model": "m",
                                                          "encoding_format": args.encoding_format}),
            "embeddings_32": lambda i: ("/v1/embeddings", {"input": [chunks[(i + j) % len(chunks)] for j in range(32)],
                                                           "model": "m", "encoding_format": args.encoding_format}),
            # the text /query embeds, without the search: what the search adds, beside the row below
            "embeddings_1_query": lambda i: ("/v1/embeddings", {"input": queries[i % len(queries)], "model": "m",
                                                                "input_type": "query",
                                                                "encoding_format": args.encoding_format}),
            "query": lambda i: ("/query", {"query": queries[i % len(queries)]}),
        }
        timings: dict[str, list[float]] = {name: [] for name in [*kinds, "mcp_search"]}
        with harness.serving(config_path) as url:
            connection = http.client.HTTPConnection("127.0.0.1", urlparse(url).port, timeout=120)
            load_before = os.getloadavg()[0]
            asyncio.run(interleaved(connection, config_path, kinds, queries, timings, args))
            load_after = os.getloadavg()[0]
            connection.close()

    result = {
        "command": harness.command_line(__file__),
        "date": harness.utc_now(),
        "config": os.path.relpath(args.config, REPO),
        "model": str(pipe.config.embeddings.model),
        "chunks": report.collection_count,
        "encoding_format": args.encoding_format,
        **{name: summary(values) for name, values in timings.items()},
        "load_average": [round(load_before, 1), round(load_after, 1)],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    rows = [f"| `{name}` | {result[name]['p50_ms']} | {result[name]['p95_ms']} |" for name in timings]
    markdown = "\n".join([
        "# Front doors: latency of each way in",
        "",
        f"`{result['command']}`",
        "",
        f"{result['date']}, {harness.cpu_model()} ({os.cpu_count()} cores), {result['config']} ({result['chunks']} chunks), "
        f"{args.requests} calls of each kind interleaved after {args.warmup} untimed rounds, load average "
        f"{result['load_average'][0]} -> {result['load_average'][1]}. `embeddings_1`/`_32`: index chunks as passages; "
        "`embeddings_1_query`: a sample query with the query instruction; `query`: `POST /query`; "
        "`mcp_search`: the `search` tool over stdio through the MCP SDK's client.",
        "",
        "| call | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *rows,
    ])
    harness.record_run("front-doors", harness.run_label(), markdown=markdown, data=result)


if __name__ == "__main__":
    main()
