"""How long a write holds queries back: ``RetrievalService.add_documents`` of 100 SciFact abstracts
and the delete of them, split into the part that runs beside queries (chunking and embedding into
the cache) and the commit, during which queries wait.

    python benchmarks/serve_commit.py                      # SciFact hybrid (dense + BM25), 3 rounds
    python benchmarks/serve_commit.py --config quickstart
    python benchmarks/serve_commit.py --lexical tantivy    # the hybrid config with another lexical.type

Prints each round's seconds; writes nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import serve_load
from langchain_core.documents import Document

from rag_pipeline.service import RetrievalService, ServiceSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=list(serve_load.CONFIGS), default="scifact-hybrid")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--lexical", choices=["bm25", "tantivy"], default=None, help="lexical.type (default: the config file's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-commit-") as folder:
        pipe, _, _ = serve_load.prepare(args.config, Path(folder), args.lexical)
        texts = serve_load.abstracts(args.rounds * args.batch, seed=1)
        marks: dict[str, float] = {}
        settings = ServiceSettings(before_commit=lambda kind: marks.__setitem__("commit", time.perf_counter()))
        with RetrievalService(pipe, settings) as service:
            for number in range(args.rounds):
                batch = texts[number * args.batch : (number + 1) * args.batch]
                documents = [Document(page_content=text, metadata={"round": number}) for text in batch]
                started = time.perf_counter()
                service.add_documents(documents, source=f"api:commit-{number}")
                ended = time.perf_counter()
                print(f"add {len(batch)}: {ended - started:.2f} s, of which beside queries {marks['commit'] - started:.2f} s "
                      f"and the commit (queries wait) {ended - marks['commit']:.2f} s", flush=True)
                started = time.perf_counter()
                service.delete(source=f"api:commit-{number}")
                print(f"delete {len(batch)}: {time.perf_counter() - started:.2f} s (queries wait for its commit)", flush=True)


if __name__ == "__main__":
    main()
