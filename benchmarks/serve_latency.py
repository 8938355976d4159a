"""Query latency of ``rag-pipeline serve`` over HTTP, beside the same queries in process.

    python benchmarks/serve_latency.py                       # quickstart index -> benchmarks/results/serve-latency.md
    python benchmarks/serve_latency.py --set lexical.type=bm25 --set retriever.type=hybrid \
        --name hybrid --screenshot docs/search-page.png

Ingests the config's corpus into a fresh index (a temporary folder), starts ``rag-pipeline serve``
on a free port, and times ``--requests`` POST /query calls on one keep-alive connection (the
config's sample queries, cycled) after ``--warmup`` untimed ones. The baseline, in the same run:
``retriever.invoke`` on the same queries in this process (no HTTP, no JSON), and one cold
``rag-pipeline query`` process, which is what every query cost before ``serve``.

``serve-latency.json`` holds the latest run of each ``--name``; a run it replaces moves to
``serve-latency-history.json``, and the page lists both, latest first.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urlparse

import harness
from rag_pipeline.config import parse_override

REPO = harness.REPO


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values_ms), 2),
        "p95_ms": round(percentile(values_ms, 95), 2),
        "mean_ms": round(statistics.fmean(values_ms), 2),
        "n": len(values_ms),
    }


def time_interleaved(port: int, retriever, queries: list[str], warmup: int, requests: int) -> dict[str, list[float]]:
    """Each query once over HTTP and once in process, alternately: both see the same machine load
    (this machine's 2 cores are shared with other jobs, whose load comes and goes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    timings: dict[str, list[float]] = {"http": [], "server": [], "in_process": []}
    for i in range(warmup + requests):
        query = queries[i % len(queries)]
        started = time.perf_counter()
        connection.request("POST", "/query", body=json.dumps({"query": query}), headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        payload = reply.read()
        over_http = 1000 * (time.perf_counter() - started)
        assert reply.status == 200, payload[:300]
        started = time.perf_counter()
        retriever.invoke(query)
        in_process = 1000 * (time.perf_counter() - started)
        if i >= warmup:
            timings["http"].append(over_http)
            timings["server"].append(json.loads(payload)["took_ms"])  # the query inside the server
            timings["in_process"].append(in_process)
    connection.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--name", default="dense", help="label of this run in the results file")
    parser.add_argument("--out", default=str(harness.RESULTS / "serve-latency.md"))
    parser.add_argument("--screenshot", metavar="PNG", help="also save the search page, in headless chromium")
    args = parser.parse_args()
    command = harness.command_line(__file__)

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as folder:
        overrides = dict(parse_override(o) for o in args.overrides)
        pipe, config_path, report = harness.ingested_copy(args.config, Path(folder), overrides)
        queries = pipe.sample_queries()

        retriever = pipe.as_retriever()
        with harness.serving(config_path) as server_url:
            port = urlparse(server_url).port
            load_before = os.getloadavg()[0]
            timings = time_interleaved(port, retriever, queries, args.warmup, args.requests)
            load_after = os.getloadavg()[0]
            if args.screenshot:
                url = f"{server_url}/?{urlencode({'q': queries[0], 'k': 3})}"
                subprocess.run(
                    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     f"--user-data-dir={Path(folder) / 'chromium'}", "--virtual-time-budget=15000",
                     "--window-size=1100,1000", f"--screenshot={Path(args.screenshot).resolve()}", url],
                    check=True, capture_output=True,
                )
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "rag_pipeline.cli", "query", str(config_path), queries[0], "-q"],
            check=True, capture_output=True,
        )
        cold_cli_s = time.perf_counter() - started

    http_stats, local_stats = summary(timings["http"]), summary(timings["in_process"])
    result = {
        "name": args.name,
        "command": command,
        "date": harness.utc_now(),
        "config": os.path.relpath(args.config, REPO),
        "chunks": report.collection_count,
        "retriever": pipe.config.retriever.type,
        "http": http_stats,
        "in_process": local_stats,
        "inside_server": summary(timings["server"]),
        "load_average": [round(load_before, 1), round(load_after, 1)],
        "http_over_in_process_p50": round(http_stats["p50_ms"] / local_stats["p50_ms"], 2),
        "cold_cli_query_s": round(cold_cli_s, 2),
        "cli_over_http_p50": round(1000 * cold_cli_s / http_stats["p50_ms"]),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    runs_path, history_path = out.with_suffix(".json"), out.with_name(f"{out.stem}-history.json")
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    if args.name in runs:
        replaced = runs[args.name]
        harness.keep_in_history(history_path, f"{args.name}, {replaced.get('date', 'earlier')}", replaced)
    runs[args.name] = result
    runs_path.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    history = json.loads(history_path.read_text()) if history_path.exists() else {}
    lines = [
        "# `rag-pipeline serve`: query latency over HTTP",
        "",
        "POST /query on one keep-alive connection (sample queries, cycled; default k) against `rag-pipeline serve`,",
        "alternating with `retriever.invoke` in this process on the same query (so both see the same load),",
        "and one cold `rag-pipeline query` process. \"inside\" is the server's own `took_ms` (the query",
        "without HTTP and JSON). Target: p50 < 30 ms over HTTP. Machine: "
        f"{os.cpu_count()} CPU cores shared with other jobs; the load average (1 min) before and after is given.",
        "",
        *table(runs.values()),
    ]
    if history:
        lines += ["## History", "", "Runs replaced by a later run of the same name, newest first.", "", *table(history.values())]
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out} and {runs_path}")


def table(runs) -> list[str]:
    """One row per run, then the commands that produced them."""
    runs = list(runs)
    lines = [
        "| run | retriever | chunks | HTTP p50 | HTTP p95 | inside p50 | in-process p50 | in-process p95 | HTTP / in-process (p50) | cold CLI query | CLI / HTTP (p50) | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        lines.append(
            f"| {run['name']} | {run['retriever']} | {run['chunks']} | {run['http']['p50_ms']} ms | {run['http']['p95_ms']} ms "
            f"| {run['inside_server']['p50_ms']} ms | {run['in_process']['p50_ms']} ms | {run['in_process']['p95_ms']} ms | {run['http_over_in_process_p50']}x "
            f"| {run['cold_cli_query_s']} s | {run['cli_over_http_p50']}x | {run['load_average'][0]} -> {run['load_average'][1]} |"
        )
    return lines + ["", "Commands:", ""] + [f"    {run['command']}" for run in runs] + [""]


if __name__ == "__main__":
    main()
