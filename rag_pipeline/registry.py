"""The stage kinds, declared once, and the ``type:`` names registered for each.

``STAGE_KINDS`` is the one table of kinds: the config's sections, their default types, which are
optional, and which built stages each builder receives all derive from it. Adding a kind (a
lexical index, a fusion step) is one row here plus its modules.

This is the only place names from a config are resolved: nothing a config says is imported or
executed unless code of this package (``catalog.py``) or a plugin registered it with
:func:`register`.

    >>> from rag_pipeline.registry import register                               # doctest: +SKIP
    >>> @register("chunker", "sentences", build_sentence_chunker)
    ... class SentenceChunkerConfig(StageConfig):
    ...     type: Literal["sentences"] = "sentences"
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from pydantic import BaseModel

from .errors import ConfigError, first_line


@dataclass(frozen=True)
class StageKind:
    """One kind of stage: a config section of that name, built by the builder its ``type:`` names.

    ``needs``: the kinds whose built stages the builder receives after its config, in order
    (``build(config, *stages)``); an absent optional stage is passed as None.
    """

    name: str
    default_type: str
    optional: bool = False  # the section may be left out (no stage of this kind)
    required: bool = False  # the section must be written (it has no usable defaults)
    needs: tuple[str, ...] = ()
    indexes: bool = False  # an index of chunks: it serves the collection the index record names active


STAGE_KINDS: tuple[StageKind, ...] = (
    StageKind("loader", "directory", required=True),
    StageKind("embeddings", "bge", required=True),
    StageKind("chunker", "recursive", needs=("embeddings",)),
    StageKind("vectorstore", "chroma", needs=("embeddings",), indexes=True),
    StageKind("reranker", "bge-reranker", optional=True),
    # a lexical index beside the dense one (hybrid retrieval); BGE-M3's sparse index encodes with the embedder.
    # tantivy by default: the same BM25 scores as bm25 (bm25s), and a change costs what it changes
    # instead of a rebuild (benchmarks/results/lexical-scale.md); bm25 suits a collection that never changes.
    StageKind("lexical", "tantivy", optional=True, needs=("embeddings",), indexes=True),
    StageKind("retriever", "dense", needs=("embeddings", "vectorstore", "reranker", "lexical")),
)
KINDS: dict[str, StageKind] = {kind.name: kind for kind in STAGE_KINDS}

ConfigT = TypeVar("ConfigT", bound=type[BaseModel])


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    config_model: type[BaseModel]
    builder: Callable[..., Any]


_REGISTRY: dict[str, dict[str, Registration]] = {kind.name: {} for kind in STAGE_KINDS}


def register(kind: str, name: str, builder: Callable[..., Any]) -> Callable[[ConfigT], ConfigT]:
    """Class decorator for a stage config model: ``@register("chunker", "recursive", build)``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown stage kind {kind!r}; expected one of {', '.join(KINDS)}")

    def decorate(config_model: ConfigT) -> ConfigT:
        _REGISTRY[kind][name] = Registration(kind, name, config_model, builder)
        return config_model

    return decorate


def lookup(kind: str, name: str) -> Registration:
    """The registration of ``type: name`` for a kind; a one-line ConfigError listing the choices."""
    load_entry_point_stages()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        choices = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise ConfigError(f"{kind}.type: unknown {kind} type {name!r}; choose one of: {choices}") from None


ENTRY_POINT_GROUP = "rag_pipeline.stages"
_entry_points_loaded = False


def load_entry_point_stages() -> list[str]:
    """Import the third-party stage modules installed under the ``rag_pipeline.stages`` entry-point
    group (each registers its types with :func:`register` when imported); returns their names.

    Only installed distributions are consulted, once per process: a config names a ``type:``, never
    a module, so no config can make this package import anything.

        # the plugin's pyproject.toml
        [project.entry-points."rag_pipeline.stages"]
        sentences = "my_stages.sentences"
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True  # first: a plugin that asks the registry while it imports must not loop
    loaded = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as exc:  # noqa: BLE001 - any failure of someone else's code: name it, one line
            _entry_points_loaded = False
            dist = entry_point.dist
            where = f" (from {dist.name} {dist.version})" if dist is not None else ""
            raise ConfigError(
                f"stage plugin {entry_point.name!r} = {entry_point.value}{where} in entry-point group "
                f"{ENTRY_POINT_GROUP} failed to import ({type(exc).__name__}: {first_line(exc)}); "
                "fix or uninstall that package"
            ) from exc
        loaded.append(entry_point.name)
    return loaded
