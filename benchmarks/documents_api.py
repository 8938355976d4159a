"""What recording writes from code costs: the recorded vector store (``pipe.vectorstore``) against
LangChain's plain ``Chroma`` over the same kind of index (``pipe.store.vectorstore``), side by side.

Each round adds one short text through each store (alternating, so a neighbour's load slows both
alike), then searches each (k=3). Also timed: ``Pipeline.add_documents`` of one new document, and of
the same document again (nothing to write). The quickstart config and its model; each store gets a
fresh index folder. Writes to the plain store are not recorded (the next ingest would remove them):
what the extra time buys is that they are kept.

    python benchmarks/documents_api.py [--rounds 30] [--out benchmarks/results/documents-api.md]

Prints the table; with ``--out`` the run also goes on top of that page (the run it replaces moves to
the page's history).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from langchain_core.documents import Document

import harness
from rag_pipeline import Pipeline


def fresh_pipeline(folder: str) -> Pipeline:
    pipe = Pipeline.from_yaml(
        harness.REPO / "configs" / "quickstart.yaml",
        overrides={"vectorstore.persist_directory": folder, "loader.show_progress": False, "embeddings.show_progress": False},
    )
    pipe.ingest()
    pipe.embeddings.warm_up()
    return pipe


def p50_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="the results page to put this run on top of")
    parser.add_argument("--name", default=None, help="label of this run on that page (default: the date)")
    args = parser.parse_args()

    recorded_pipe = fresh_pipeline(tempfile.mkdtemp())
    plain_pipe = fresh_pipeline(tempfile.mkdtemp())
    recorded, plain = recorded_pipe.vectorstore, plain_pipe.store.vectorstore
    times: dict[str, list[float]] = {k: [] for k in ("rec_add", "plain_add", "rec_search", "plain_search", "api_new", "api_same")}
    for n in range(args.rounds):
        text = f"Ticket {n}: the printer on floor {n} jams on A3 paper."
        for key, store in (("rec", recorded), ("plain", plain)) if n % 2 else (("plain", plain), ("rec", recorded)):
            started = time.perf_counter()
            store.add_texts([text], ids=[f"t{n}"])
            times[f"{key}_add"].append(time.perf_counter() - started)
            started = time.perf_counter()
            store.similarity_search("printer jams", k=3)
            times[f"{key}_search"].append(time.perf_counter() - started)
        document = [Document(page_content=f"Note {n}: the boiler on floor {n} needs bleeding.")]
        started = time.perf_counter()
        recorded_pipe.add_documents(document, source=f"note-{n}")
        times["api_new"].append(time.perf_counter() - started)
        started = time.perf_counter()
        recorded_pipe.add_documents(document, source=f"note-{n}")
        times["api_same"].append(time.perf_counter() - started)

    add_ratio = p50_ms(times["rec_add"]) / p50_ms(times["plain_add"])
    search_ratio = p50_ms(times["rec_search"]) / p50_ms(times["plain_search"])
    command = harness.command_line(__file__)
    lines = [
        "# Documents from code: the recorded vector store against plain Chroma",
        "",
        f"Produced by `{command}` (from the repository root) on {harness.utc_now()}.",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared with other jobs), "
        f"load average {os.getloadavg()[0]:.2f}. Model: all-MiniLM-L6-v2 (quickstart), one short text per call, "
        f"{args.rounds} rounds, p50 of each.",
        "",
        "| operation | recorded (`pipe.vectorstore`) ms | plain `Chroma` ms | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| `add_texts` (1 text) | {p50_ms(times['rec_add']):.1f} | {p50_ms(times['plain_add']):.1f} | {add_ratio:.2f}x |",
        f"| `similarity_search` (k=3) | {p50_ms(times['rec_search']):.1f} | {p50_ms(times['plain_search']):.1f} | {search_ratio:.2f}x |",
        "",
        f"`Pipeline.add_documents` (1 document, new source): {p50_ms(times['api_new']):.1f} ms p50; "
        f"the same document again (nothing written): {p50_ms(times['api_same']):.1f} ms p50.",
        "",
        "A recorded write takes the write lock and commits the record with the collection marked dirty "
        "and then clean again (SQLite, synchronous=FULL: each commit waits for the disk), as an ingest does; "
        "that is what the extra write time buys: the entries survive the next ingest and a kill at any point.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        harness.record_run(args.out.stem, harness.run_label(args.name), markdown=text, results=args.out.parent)


if __name__ == "__main__":
    main()
