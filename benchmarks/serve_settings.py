"""Servers with different ``serve`` flags side by side on one index, driven in alternating rounds:
how the settings compare under the same load (what chose the default ``--workers``).

    python benchmarks/serve_settings.py quickstart 16 -- "--serial" "--workers 4" "--workers 16" "--workers 32"

Arguments: a config of ``serve_load.py`` (``quickstart`` or ``scifact-hybrid``), the number of
closed-loop clients, then ``--`` and one quoted string of flags per server ("" for the defaults). Prints q/s, p50 and p95 ms and
errors for each server in each of ``--rounds`` rounds of ``--seconds``; writes nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlparse

import harness
import serve_load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", choices=list(serve_load.CONFIGS))
    parser.add_argument("clients", type=int)
    parser.add_argument("variants", nargs="+", help="one quoted string of serve flags per server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    variants = [v.split() for v in args.variants]
    with tempfile.TemporaryDirectory(prefix="serve-settings-") as folder:
        _, config_path, _ = serve_load.prepare(args.config, Path(folder))
        stream = serve_load.QueryStream(serve_load.test_queries(0))
        with ExitStack() as stack:
            ports = [urlparse(stack.enter_context(harness.serving(config_path, *flags))).port for flags in variants]
            for port in ports:
                serve_load.warm_up(port, stream)
            for number in range(args.rounds):
                for flags, port in zip(variants, ports):
                    result = serve_load.closed_loop(port, args.clients, args.seconds, stream)
                    print(f"round {number + 1} {' '.join(flags) or '(defaults)':28} {result['qps']:7.1f} q/s  "
                          f"p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms  errors {result['errors']}", flush=True)


if __name__ == "__main__":
    main()
