"""Maps a stage kind and the YAML ``type:`` name to its config model and builder.

This is the only place names from a config are resolved: nothing a config says is imported
or executed unless it was registered here by code of this package (or a plugin that calls
:func:`register` itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from pydantic import BaseModel

from .errors import ConfigError

STAGE_KINDS = ("loader", "chunker", "embeddings", "vectorstore", "reranker", "retriever")

ConfigT = TypeVar("ConfigT", bound=type[BaseModel])


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    config_model: type[BaseModel]
    builder: Callable[..., Any]


_REGISTRY: dict[str, dict[str, Registration]] = {kind: {} for kind in STAGE_KINDS}


def register(kind: str, name: str, builder: Callable[..., Any]) -> Callable[[ConfigT], ConfigT]:
    """Class decorator for a stage config model: ``@register("chunker", "recursive", build)``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown stage kind {kind!r}; expected one of {', '.join(STAGE_KINDS)}")

    def decorate(config_model: ConfigT) -> ConfigT:
        _REGISTRY[kind][name] = Registration(kind, name, config_model, builder)
        return config_model

    return decorate


def lookup(kind: str, name: str) -> Registration:
    _ensure_builtin_stages_registered()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        choices = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise ConfigError(f"{kind}.type: unknown {kind} type {name!r}; choose one of: {choices}") from None


def registered_types(kind: str) -> list[str]:
    _ensure_builtin_stages_registered()
    return sorted(_REGISTRY[kind])


def _ensure_builtin_stages_registered() -> None:
    # Importing the stage packages runs their @register decorators. Done lazily so that
    # importing rag_pipeline stays cheap and free of import cycles.
    from . import chunkers, embeddings, loaders, rerankers, retrievers, vectorstores  # noqa: F401
