"""``ingest.engine: ray`` — new and changed files read and chunked as Ray Data tasks, the vectors the
embedding cache lacks computed by an actor pool (``map_batches``); the record, the cache and every
write stay on the driver.

Per round of ``ingest.ray.files_per_round`` files (the ones ``plan_sync`` chose, as for the local engine):

1. Ray Data tasks stat, hash, read and chunk each file with the configured loader and chunker
   (built from the config on the worker), keeping what the local engine would meet: each
   document's chunks, the warnings raised before it, and the error that ended the file, if any;
2. the driver looks the round's chunk texts up in the embedding cache; the misses, longest first,
   go to an actor pool (one model load per actor: the configured embedder at the driver's resolved
   precision; passages only, no query instruction) and their vectors go into the cache as each
   batch comes back;
3. the Indexer takes the round's files one by one as if it had read them itself
   (:class:`ReplayedFile`): its dense sink finds every vector in the cache, and it writes, records
   and deletes in the local engine's order.

So chunk ids, incremental sync and crash safety are the local engine's: a SIGKILL of the driver is
repaired by the next ingest, and vectors already back from the actors are not computed again.
Workers need the files at the same path as the driver (a shared filesystem) and this package installed.
"""

from __future__ import annotations

import logging
import pickle
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from langchain_core.documents import Document

from ..errors import ConfigError
from ..registry import lookup
from .cache import EmbeddingCache
from .faults import crash_point
from .report import FileChange, IngestReport
from .sync import LocalChunkSource

logger = logging.getLogger(__name__)

RAY_MISSING = (
    "ingest.engine: ray needs Ray, which is not installed; pip install 'rag-pipeline[ray]' "
    "(or choose ingest.engine: local)"
)


def require_ray() -> Any:
    """Import Ray (and Ray Data) now, or say in one line how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


# -- on a worker: read and chunk one file --------------------------------------------------------


@dataclass
class ReadFile:
    """What a worker saw of one file, for the driver to replay."""

    stat: Any  # the os.stat_result taken before hashing and parsing, or None
    sha256: str
    # per document: how many warnings had been raised when it was read, and its chunks (or the
    # exception chunking it raised)
    documents: list[tuple[int, list[Document] | BaseException]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: BaseException | None = None  # what ended the reading early (raised where it was met)

    def texts(self) -> Iterator[str]:
        for _, chunks in self.documents:
            if not isinstance(chunks, BaseException):
                yield from (chunk.page_content for chunk in chunks)


_worker_stages: dict[str, tuple[Any, Any]] = {}


def _stages_on_worker(key: str, build: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """One loader and chunker per worker process and ingest (a tokens chunker loads a tokenizer)."""
    if key not in _worker_stages:
        _worker_stages.clear()
        _worker_stages[key] = build()
    return _worker_stages[key]


def _portable(exc: BaseException) -> BaseException:
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # an exception that does not pickle still reaches the driver, by its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def read_file(path: Path, source: str, loader: Any, chunker: Any) -> ReadFile:
    """Read and chunk one file as the local engine does (its very code), keeping every outcome."""
    (reading,) = LocalChunkSource(loader, lambda: chunker).read([FileChange(path, source)], IngestReport())
    result = ReadFile(reading.stat, reading.sha256, warnings=reading.warnings)
    documents = reading.documents()
    while True:
        try:
            document = next(documents)
        except StopIteration:
            break
        except Exception as exc:  # raised on the driver where the local engine would meet it
            result.error = _portable(exc)
            break
        warned = len(reading.warnings)
        try:
            result.documents.append((warned, reading.chunk(document)))
        except Exception as exc:
            result.documents.append((warned, _portable(exc)))
            break
    return result


def _read_row(row: dict[str, Any], *, stages: Callable[[], tuple[Any, Any]], key: str) -> dict[str, Any]:
    loader, chunker = _stages_on_worker(key, stages)
    result = read_file(Path(row["path"]), row["source"], loader, chunker)
    return {"position": row["position"], "result": pickle.dumps(result)}


class _EmbeddingActor:
    """One model load per actor: the configured embedder, at the precision the driver resolved."""

    def __init__(self, embeddings_config: Any, precision: str, dtype: str, device: str):
        fields = type(embeddings_config).model_fields
        updates = {key: value for key, value in (("device", device), ("precision", precision)) if key in fields}
        config = embeddings_config.model_copy(update={**updates, "show_progress": False} if "show_progress" in fields else updates)
        self.embedder = lookup("embeddings", config.type).builder(config)
        # The driver's cache key names its precision: vectors of another would be filed under it.
        resolved = getattr(getattr(self.embedder, "precision", None), "dtype", dtype)
        if resolved != dtype:
            raise RuntimeError(
                f"embeddings.precision: the driver embeds in {dtype} but a Ray actor on {device} can only run {resolved}; "
                "set embeddings.precision to one both can run"
            )
        self.embedder.warm_up()  # the one model load of this actor, before its first batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Passages as they are: the query instruction is for queries only (encode adds none).
        vectors = self.embedder.encode([str(text) for text in batch["text"]], show_progress=False)
        return {"position": batch["position"], "vector": np.asarray(vectors, dtype=np.float32)}


# -- on the driver ---------------------------------------------------------------------------------


class ReplayedFile:
    """A file a worker read, handed to the Indexer as the local engine hands it one: its documents
    in order, its warnings as they were raised, its error where it was met."""

    def __init__(self, change: FileChange, result: ReadFile):
        self.change, self._result = change, result
        self.stat, self.sha256 = result.stat, result.sha256
        self.warnings: list[str] = []

    def documents(self) -> Iterator[list[Document] | BaseException]:
        result = self._result
        for warned, chunks in result.documents:
            self.warnings.extend(result.warnings[len(self.warnings) : warned])
            yield chunks
        self.warnings.extend(result.warnings[len(self.warnings) :])
        if result.error is not None:
            raise result.error

    def chunk(self, chunks: list[Document] | BaseException) -> list[Document]:
        if isinstance(chunks, BaseException):
            raise chunks
        return chunks


class CachedVectorsOnly:
    """The driver's embedder as the dense sink sees it under Ray: tokens are counted here, and every
    vector is already in the embedding cache (the actors' output); computing one here is a bug."""

    def __init__(self, embedder: Any):
        self._embedder = embedder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        raise RuntimeError(
            f"{len(texts)} chunk vectors are missing from the embedding cache the Ray actors fill "
            "(a chunk the round did not announce); run the ingest again"
        )


class RayChunkSource:
    """The Ray engine behind the ``ChunkSource`` seam (see the module docstring).

    ``stages`` builds the loader and chunker from the config on a worker (pickled to it);
    ``embeddings`` is the driver's embedder (its config and resolved precision go to the actors);
    ``cache`` opens the driver's embedding cache, the only way vectors reach the sinks.
    """

    def __init__(
        self,
        settings: Any,
        *,
        stages: Callable[[], tuple[Any, Any]],
        embeddings: Any,
        cache: Callable[[], EmbeddingCache | None],
        show_progress: bool = False,
    ):
        self.ray = require_ray()
        self.settings = settings
        self.stages = stages
        self.embeddings = embeddings
        self.cache = cache
        self.show_progress = show_progress
        self._key = uuid.uuid4().hex

    def read(self, todo: Sequence[FileChange], report: IngestReport) -> Iterator[ReplayedFile]:
        started = self._start_ray()
        try:
            per_round = self.settings.files_per_round
            for start in range(0, len(todo), per_round):
                changes = list(todo[start : start + per_round])
                results = self._read_round(changes)
                self._embed_missing(results, report)
                for change, result in zip(changes, results):
                    yield ReplayedFile(change, result)
        finally:
            if started:
                self.ray.shutdown()

    # -- steps -------------------------------------------------------------------------------------
    def _start_ray(self) -> bool:
        """Join ``ingest.ray.address`` (or RAY_ADDRESS, or start Ray here); True when this call
        started the connection and so ends it. A Ray already initialised in this process is used as it is."""
        ray = self.ray
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.show_progress
        context.verbose_stats_logs = False
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if ray.is_initialized():
            return False
        ray.init(
            address=self.settings.address, include_dashboard=False, log_to_driver=False,
            logging_level=logging.WARNING,
        )
        return True

    def _read_round(self, changes: list[FileChange]) -> list[ReadFile]:
        rows = [{"position": i, "path": str(c.path), "source": c.source} for i, c in enumerate(changes)]
        dataset = self.ray.data.from_items(rows, override_num_blocks=min(len(rows), 200)).map(
            _read_row, fn_kwargs={"stages": self.stages, "key": self._key}
        )
        results: list[ReadFile | None] = [None] * len(rows)
        for row in dataset.iter_rows():
            results[int(row["position"])] = pickle.loads(row["result"])
        return results  # type: ignore[return-value]

    def _embed_missing(self, results: list[ReadFile], report: IngestReport) -> None:
        texts = list(dict.fromkeys(text for result in results for text in result.texts()))
        if not texts:
            return
        cache = self.cache()
        if cache is None:
            raise ConfigError(CACHE_REQUIRED)
        missing = [text for text, vector in zip(texts, cache.get(texts)) if vector is None]
        if not missing:
            return
        # Longest first: each actor batch then holds texts of similar length (the model pads a batch
        # to its longest).
        missing.sort(key=len, reverse=True)
        settings = self.settings
        precision = self.embeddings.precision
        device = "cuda" if settings.num_gpus > 0 else "cpu"
        if device == "cpu" and precision.dtype == "float16":
            raise ConfigError(
                "embeddings.precision: this driver embeds in fp16 (a GPU) but ingest.ray.num_gpus is 0 (CPU actors); "
                "set ingest.ray.num_gpus or embeddings.precision: fp32"
            )
        rows = [{"position": i, "text": text} for i, text in enumerate(missing)]
        blocks = max(1, min(-(-len(rows) // settings.batch_size), settings.concurrency * 4))
        dataset = self.ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            _EmbeddingActor,
            fn_constructor_args=(self.embeddings.config, precision.name, precision.dtype, device),
            batch_size=settings.batch_size,
            batch_format="numpy",
            compute=self.ray.data.ActorPoolStrategy(size=settings.concurrency),
            num_cpus=settings.num_cpus,
            num_gpus=settings.num_gpus or None,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            positions = [int(p) for p in batch["position"]]
            # In the cache as they arrive: a driver killed after this keeps them.
            cache.put([missing[p] for p in positions], np.asarray(batch["vector"], dtype=np.float32))
            report.embedded += len(positions)
            crash_point("ray_embedding")


CACHE_REQUIRED = (
    "ingest.engine: ray needs the embedding cache (the actors' vectors reach the index through it): "
    "use a persistent index or set ingest.state_directory, and keep embeddings.embedding_cache: true"
)
