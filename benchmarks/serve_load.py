"""``rag-pipeline serve`` under load: closed-loop HTTP clients, the one-at-a-time server beside the
concurrent one in the same run, and queries during a stream of writes and deletes.

    python benchmarks/serve_load.py                                  # quickstart (dense) and SciFact hybrid
    python benchmarks/serve_load.py --configs quickstart --seconds 5 --write-docs 200   # a quick look

For each config the script builds its index in a temporary folder (SciFact's from the repository's
``.index/scifact-hybrid`` when an earlier ``eval`` left one there, else by ingesting it), starts two
servers on it, ``serve --serial`` (one request at a time, no batching: the server before issue 22)
and ``serve`` with its defaults, and drives them in turn, alternating which goes first:

* **Levels.** ``C`` clients (1, 4, 16, 64), each a keep-alive connection sending SciFact's test
  queries in a seeded random order, the next as soon as the last is answered, for ``--seconds``:
  queries/s, p50/p95/p99 latency at the client, errors (any answer but 200, any dropped connection).
* **Writes.** On the concurrent server, ``--readers`` clients query for ``--seconds`` with nothing
  else running (the idle figure), then again while one client posts ``--write-docs`` SciFact
  abstracts in batches of ``--batch`` and another deletes each batch once it is in. After each post
  answers, every document of its batch must be found (a query filtered to the batch); after each
  delete answers, none may be. The readers' p95 during the writes is reported beside the idle one.
* **Where the time goes.** In this process, the same queries through the config's retrieval path
  one stage at a time (query embedding, each arm's search, fusion), and the HTTP share: a lone
  client's latency less the server's own ``took_ms``.

The clients run in this process, as threads, on the same two cores as the server: the figures are
for a machine that also runs its clients, the same for both servers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import harness

REPO = harness.REPO
CONFIGS = {
    "quickstart": REPO / "configs" / "quickstart.yaml",
    "scifact-hybrid": REPO / "configs" / "scifact-hybrid.yaml",
}
# An index an earlier `rag-pipeline eval configs/scifact-hybrid.yaml` left (git-ignored): copied, not
# re-embedded. Without it the script ingests SciFact itself (minutes on two cores).
PREBUILT = {"scifact-hybrid": REPO / ".index" / "scifact-hybrid"}
LEVELS = (1, 4, 16, 64)
HEADERS = {"Content-Type": "application/json"}


# -- data ----------------------------------------------------------------------------------------------
def test_queries(seed: int) -> list[str]:
    """SciFact's test queries (those with test judgements), in a seeded random order."""
    with open(harness.SCIFACT / "qrels" / "test.tsv", encoding="utf-8") as qrels:
        wanted = {line.split("\t")[0] for line in list(qrels)[1:]}
    texts = []
    with open(harness.SCIFACT / "queries.jsonl", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if row["_id"] in wanted:
                texts.append(row["text"])
    random.Random(seed).shuffle(texts)
    return texts


def abstracts(count: int, seed: int) -> list[str]:
    """``count`` SciFact abstracts (title and text), drawn at random: the documents the writer posts."""
    with open(harness.SCIFACT / "corpus.jsonl", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    chosen = random.Random(seed).sample(rows, count)
    return [f"{row['title']}\n\n{row['text']}" for row in chosen]


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def latency_summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values_ms), 1) if values_ms else float("nan"),
        "p95_ms": round(percentile(values_ms, 95), 1),
        "p99_ms": round(percentile(values_ms, 99), 1),
    }


# -- HTTP ----------------------------------------------------------------------------------------------
class Client:
    """One keep-alive connection, as an HTTP client library keeps one: a request on a connection
    the server closed while it sat idle (past the server's keep-alive timeout) is sent once more
    on a new one; any other failure is the caller's (an error, counted)."""

    def __init__(self, port: int):
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        reused = self.connection is not None
        try:
            return self._call(method, path, body)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            if not reused:
                raise
            return self._call(method, path, body)

    def _call(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            self.connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
            reply = self.connection.getresponse()
            raw = reply.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = None
            raise
        return reply.status, json.loads(raw) if raw else {}

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class QueryStream:
    """The queries, handed out in order and round again, to any number of client threads."""

    def __init__(self, queries: list[str]):
        self.queries, self.next, self.lock = queries, 0, threading.Lock()

    def take(self) -> str:
        with self.lock:
            query = self.queries[self.next % len(self.queries)]
            self.next += 1
            return query


def closed_loop(port: int, clients: int, seconds: float, stream: QueryStream, stop: threading.Event | None = None) -> dict:
    """``clients`` threads, each sending a query as soon as its last one is answered, for
    ``seconds`` (or until ``stop`` is set): every answer's latency, errors, the server's own time."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    took: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    deadline = time.perf_counter() + seconds
    stop = stop or threading.Event()

    def run(number: int) -> None:
        client = Client(port)
        while time.perf_counter() < deadline and not stop.is_set():
            started = time.perf_counter()
            try:
                status, body = client.call("POST", "/query", {"query": stream.take()})
            except (OSError, http.client.HTTPException) as error:
                errors[number].append(type(error).__name__)
                continue
            if status != 200:
                errors[number].append(f"{status}: {body.get('detail', body)}"[:200])
                continue
            latencies[number].append(1000 * (time.perf_counter() - started))
            took[number].append(body["took_ms"])
        client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = [v for values in latencies for v in values]
    failures = [e for values in errors for e in values]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "queries": len(flat),
        "qps": round(len(flat) / elapsed, 1),
        **latency_summary(flat),
        "server_p50_ms": round(statistics.median([v for values in took for v in values]), 1) if flat else None,
        "errors": len(failures),
        "error_examples": sorted(set(failures))[:3],
    }


def warm_up(port: int, stream: QueryStream, count: int = 20) -> None:
    client = Client(port)
    for _ in range(count):
        status, body = client.call("POST", "/query", {"query": stream.take()})
        assert status == 200, body
    client.close()


# -- writes beside queries -------------------------------------------------------------------------------
def batch_found(client: Client, batch: int, size: int) -> set[int]:
    """Which documents of ``batch`` a query filtered to it finds (every one has a chunk in reach:
    k covers the batch's chunks)."""
    status, body = client.call(
        "POST", "/query", {"query": "scientific claim evidence", "k": 4 * size, "filter": {"load_batch": batch}}
    )
    if status != 200:
        raise RuntimeError(f"the visibility check's query answered {status}: {body}")
    return {result["metadata"]["load_doc"] for result in body["results"]}


def write_load(port: int, texts: list[str], batch_size: int, readers: int, stream: QueryStream) -> dict:
    """Readers query while one client posts ``texts`` in batches and another deletes each batch
    once it is in; every post and delete is checked for visibility when it answers."""
    posted: queue.Queue[int | None] = queue.Queue()
    outcome = {"post_s": [], "delete_s": [], "errors": [], "not_found_after_post": 0, "served_after_delete": 0}
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]

    def writer() -> None:
        client = Client(port)
        for number, batch in enumerate(batches):
            documents = [
                {"content": text, "metadata": {"load_batch": number, "load_doc": i}} for i, text in enumerate(batch)
            ]
            started = time.perf_counter()
            try:
                status, body = client.call("POST", "/documents", {"source": f"api:load-{number}", "documents": documents})
            except (OSError, http.client.HTTPException) as error:
                outcome["errors"].append(f"POST: {type(error).__name__}")
                continue
            outcome["post_s"].append(time.perf_counter() - started)
            if status != 200:
                outcome["errors"].append(f"POST {status}: {body}"[:200])
                continue
            missing = len(batch) - len(batch_found(client, number, len(batch)))
            outcome["not_found_after_post"] += missing
            posted.put(number)
        posted.put(None)
        client.close()

    def deleter() -> None:
        client = Client(port)
        while (number := posted.get()) is not None:
            started = time.perf_counter()
            try:
                status, body = client.call("DELETE", "/documents", {"source": f"api:load-{number}"})
            except (OSError, http.client.HTTPException) as error:
                outcome["errors"].append(f"DELETE: {type(error).__name__}")
                continue
            outcome["delete_s"].append(time.perf_counter() - started)
            if status != 200:
                outcome["errors"].append(f"DELETE {status}: {body}"[:200])
                continue
            outcome["served_after_delete"] += len(batch_found(client, number, batch_size))
        client.close()

    stop = threading.Event()
    reads: dict = {}
    reading = threading.Thread(target=lambda: reads.update(closed_loop(port, readers, 24 * 3600, stream, stop)))
    started = time.perf_counter()
    reading.start()
    workers = [threading.Thread(target=writer), threading.Thread(target=deleter)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    reading.join()
    return {
        "documents": len(texts),
        "batch": batch_size,
        "seconds": round(time.perf_counter() - started, 1),
        "readers": reads,
        "post_s_p50": round(statistics.median(outcome["post_s"]), 2) if outcome["post_s"] else None,
        "post_s_max": round(max(outcome["post_s"]), 2) if outcome["post_s"] else None,
        "delete_s_p50": round(statistics.median(outcome["delete_s"]), 2) if outcome["delete_s"] else None,
        "write_errors": outcome["errors"][:5],
        "write_error_count": len(outcome["errors"]),
        "not_found_after_post": outcome["not_found_after_post"],
        "served_after_delete": outcome["served_after_delete"],
    }


# -- where the time goes ---------------------------------------------------------------------------------
def stage_times(pipe, queries: list[str]) -> dict[str, float]:
    """p50 ms of each stage of one query alone, through the config's retrieval path in this process."""
    path = pipe.as_retriever().path
    timings: dict[str, list[float]] = {}

    def timed(name: str, run):
        started = time.perf_counter()
        result = run()
        timings.setdefault(name, []).append(1000 * (time.perf_counter() - started))
        return result

    for query in queries:
        encoded = [timed(f"encode ({arm.name})" if len(path.arms) > 1 else "encode", lambda arm=arm: arm.encode([query]))
                   for arm in path.arms]
        depths = path.depths if path.depths is not None and len(path.arms) > 1 else [pipe.config.retriever.k] * len(path.arms)
        lists = [
            timed(f"search ({arm.name})", lambda arm=arm, vectors=vectors, depth=depth: arm.search_batch([query], depth, encoded=vectors))
            for arm, vectors, depth in zip(path.arms, encoded, depths)
        ]
        if len(path.arms) > 1:
            timed("fusion", lambda: path.fuse([found[0] for found in lists], pipe.config.retriever.k))
    return {name: round(statistics.median(values), 2) for name, values in timings.items()}


# -- one config ------------------------------------------------------------------------------------------
def prepare(name: str, folder: Path, lexical: str | None = None):
    """The config's index ready in ``folder``; ``lexical``: another ``lexical.type`` for a config
    that has the section (the prebuilt index's chunk table is kept; the ingest brings it up to date)."""
    started = time.perf_counter()
    overrides = {"lexical.type": lexical} if lexical and name != "quickstart" else None
    pipe, config_path, report = harness.ingested_copy(CONFIGS[name], folder, overrides, start_from=PREBUILT.get(name))
    print(f"[{name}] index ready: {report.collection_count} chunks ({time.perf_counter() - started:.0f} s)", flush=True)
    return pipe, config_path, report.collection_count


def run_config(name: str, args, queries: list[str], texts: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"serve-load-{name}-") as folder:
        pipe, config_path, chunks = prepare(name, Path(folder), args.lexical)
        stages = stage_times(pipe, queries[:100])
        print(f"[{name}] stages (ms, p50 of 100 lone queries): {stages}", flush=True)
        limits = ["--max-k", str(4 * args.batch)]
        with harness.serving(config_path, "--serial", *limits) as serial_url, harness.serving(config_path, *limits) as concurrent_url:
            ports = {"serial": urlparse(serial_url).port, "concurrent": urlparse(concurrent_url).port}
            stream = QueryStream(queries)
            for port in ports.values():
                warm_up(port, stream)
            levels: dict[str, dict[str, dict]] = {"serial": {}, "concurrent": {}}
            for number, clients in enumerate(args.levels):
                order = ["serial", "concurrent"] if number % 2 == 0 else ["concurrent", "serial"]
                for mode in order:
                    result = closed_loop(ports[mode], clients, args.seconds, stream)
                    result["load_average"] = round(os.getloadavg()[0], 1)
                    levels[mode][str(clients)] = result
                    print(f"[{name}] {mode:10} {clients:3} clients: {result}", flush=True)
            idle = closed_loop(ports["concurrent"], args.readers, args.seconds, stream)
            print(f"[{name}] {args.readers} readers, idle: {idle}", flush=True)
            writes = write_load(ports["concurrent"], texts, args.batch, args.readers, stream)
            print(f"[{name}] {args.readers} readers during writes: {writes}", flush=True)
    lone = levels["concurrent"].get("1")
    http_share = round(lone["p50_ms"] - lone["server_p50_ms"], 1) if lone else None
    return {
        "config": os.path.relpath(CONFIGS[name], REPO),
        "lexical": pipe.config.lexical.type if pipe.config.lexical is not None else None,
        "chunks": chunks,
        "levels": levels,
        "idle_readers": idle,
        "writes": writes,
        "stages_p50_ms": stages,
        "http_p50_ms": http_share,
    }


# -- the page --------------------------------------------------------------------------------------------
def render(results: dict, args, command: str, env: dict) -> str:
    lines = [
        "# `rag-pipeline serve` under load",
        "",
        f"`{command}`",
        "",
        f"{env['date']}, {env['cpu_model']} ({os.cpu_count()} cores; flags {', '.join(env['cpu_flags']) or 'none of note'}), "
        f"{args.seconds:g} s per level, clients in the same process as the load generator. "
        "`serial`: `serve --serial` (one request at a time, no batching); `concurrent`: `serve` with its defaults.",
    ]
    for name, result in results.items():
        levels = result["levels"]
        lines += [
            "",
            f"## {name} ({result['config']}{', lexical.type ' + result['lexical'] if result.get('lexical') else ''}, {result['chunks']} chunks)",
            "",
            "| clients | serial q/s | concurrent q/s | ratio | serial p50 / p95 / p99 ms | concurrent p50 / p95 / p99 ms | errors (serial, concurrent) |",
            "|---:|---:|---:|---:|---|---|---|",
        ]
        for clients in map(str, args.levels):
            s, c = levels["serial"][clients], levels["concurrent"][clients]
            lines.append(
                f"| {clients} | {s['qps']} | {c['qps']} | {c['qps'] / s['qps']:.2f}x | "
                f"{s['p50_ms']} / {s['p95_ms']} / {s['p99_ms']} | {c['p50_ms']} / {c['p95_ms']} / {c['p99_ms']} | "
                f"{s['errors']}, {c['errors']} |"
            )
        idle, writes = result["idle_readers"], result["writes"]
        during = writes["readers"]
        lines += [
            "",
            f"Writes: {writes['documents']} abstracts posted in batches of {writes['batch']} by one client while another "
            f"deleted each batch once it was in, beside {args.readers} querying clients ({writes['seconds']} s):",
            "",
            "| readers | q/s | p50 ms | p95 ms | errors |",
            "|---|---:|---:|---:|---:|",
            f"| idle | {idle['qps']} | {idle['p50_ms']} | {idle['p95_ms']} | {idle['errors']} |",
            f"| during writes | {during['qps']} | {during['p50_ms']} | {during['p95_ms']} | {during['errors']} |",
            "",
            f"p95 during writes / idle: **{during['p95_ms'] / idle['p95_ms']:.2f}x**. A post of {writes['batch']} took "
            f"{writes['post_s_p50']} s (p50; at most {writes['post_s_max']} s), a delete {writes['delete_s_p50']} s. "
            f"Write errors: {writes['write_error_count']}. Documents not found right after their post answered: "
            f"{writes['not_found_after_post']}; found right after their delete answered: {writes['served_after_delete']}.",
            "",
            "Where a lone query's time goes (ms, p50 of 100 queries in process; HTTP = a lone client's latency less the "
            f"server's own time): {', '.join(f'{k} {v}' for k, v in result['stages_p50_ms'].items())}, HTTP {result['http_p50_ms']}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS), metavar="C")
    parser.add_argument("--seconds", type=float, default=15.0, help="per level and mode (default 15)")
    parser.add_argument("--readers", type=int, default=4, help="querying clients beside the writes (default 4)")
    parser.add_argument("--write-docs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="label of this run in the results page")
    parser.add_argument("--lexical", choices=["bm25", "tantivy"], default=None,
                        help="lexical.type for the hybrid config (default: the config file's)")
    args = parser.parse_args()
    command = harness.command_line(__file__)
    env = harness.environment()
    queries = test_queries(args.seed)
    texts = abstracts(args.write_docs, args.seed)
    results = {name: run_config(name, args, queries, texts) for name in args.configs}
    data = {"command": command, "environment": env, "seconds_per_level": args.seconds, "results": results}
    harness.record_run("serve-load", harness.run_label(args.name), markdown=render(results, args, command, env), data=data)
    print(f"wrote {harness.RESULTS / 'serve-load.md'}")


if __name__ == "__main__":
    main()
