"""Configuration: YAML (``yaml.safe_load`` only) -> dotted overrides -> validated ``PipelineConfig``.

Each stage section (``loader``, ``chunker``, ...) is validated by the pydantic model that its
``type:`` names in the registry, so a misspelt key is reported with its dotted path
(``chunker.chunk_sise: unknown key``) before any model is loaded or file is read.
Relative paths resolve against the folder of the config file (or ``base_dir`` for a dict).

:func:`as_config` is the one door for callers that may hold a path, a mapping or an already
validated ``PipelineConfig`` (``Pipeline.from_config``, ``evaluate``, ``compare``): a validated
config without overrides passes through untouched, so nothing is validated twice.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, create_model

from . import catalog  # noqa: F401  (registers the built-in stage types before any lookup)
from .errors import ConfigError, first_line
from .jsonl import read_json_objects
from .registry import KINDS, STAGE_KINDS, load_entry_point_stages, lookup
from .stage_config import ConfigPath, StageConfig

REQUIRED_SECTIONS = tuple(kind.name for kind in STAGE_KINDS if kind.required)


class RayIngestConfig(BaseModel):
    """``ingest.ray:`` — where and how wide ``ingest.engine: ray`` runs (Ray is the extra ``ray``)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="A Ray cluster to join (`auto`, `ray://HOST:10001`, `HOST:6379`); null: RAY_ADDRESS if set, "
        "else a Ray started on this machine for the ingest and stopped after it.",
    )
    batch_size: int = Field(256, gt=0, description="Chunks per embedding call on an actor (map_batches batch_size).")
    concurrency: int = Field(1, gt=0, description="Embedding actors, each with its own copy of the model.")
    num_gpus: float = Field(0, ge=0, description="GPUs per embedding actor (0: the actors run on CPUs).")
    num_cpus: float = Field(1, gt=0, description="CPUs per embedding actor.")
    files_per_round: int = Field(
        5000, gt=0,
        description="Files read, chunked and embedded per round: the driver holds one round's chunks, and each "
        "round starts the actor pool anew (one model load per actor).",
    )


class IngestConfig(BaseModel):
    """``ingest:`` — how ``ingest`` keeps the index in step with the sources.

    ``cleanup`` (the modes of LangChain's indexing API):

    * ``full`` (default): the index mirrors the sources. New files are added, a changed file's
      chunks replace its old ones, a deleted (or no longer included) file's chunks are removed.
    * ``incremental``: as ``full``, except that files gone from the sources keep their chunks; for a
      loader that sees only part of the corpus (a folder of new arrivals).
    * ``none``: append only. A changed file's new chunks are added and its old ones kept.

    Unchanged files (same size and mtime, or same sha256) are skipped without being parsed.
    """

    model_config = ConfigDict(extra="forbid")

    cleanup: Literal["full", "incremental", "none"] = "full"
    lock_timeout: float = Field(
        60.0, ge=0, description="Seconds a second ingest on the same index waits for the first before giving up."
    )
    state_directory: ConfigPath | None = Field(
        None,
        description="Where the index record, write lock and embedding cache live; default: the persistent "
        "index's folder (required for an index with no folder on this machine).",
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="Who reads, chunks and embeds new and changed files: this process (local), or Ray tasks "
        "and an actor pool (ray: `ingest.ray`, extra `ray`). The record, cache and writes stay in this process.",
    )
    ray: RayIngestConfig = Field(default_factory=RayIngestConfig)


class _PipelineConfigBase(BaseModel):
    """The whole validated pipeline config. Build it with :func:`as_config` (or :func:`load_config`).

    One field per stage kind (``registry.STAGE_KINDS``), each holding the config model its
    ``type:`` names, plus the settings below.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = "rag-pipeline"
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    sample_queries: list[str] | ConfigPath | None = Field(
        default=None,
        description="Queries that `rag-pipeline run` answers: a list, or a path to a .txt/.jsonl file.",
    )
    base_dir: Path | None = Field(default=None, exclude=True)

    def stage_config(self, kind: str) -> StageConfig | None:
        return getattr(self, kind)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (paths as strings), suitable for YAML or JSON."""
        return self.model_dump(mode="json", exclude_none=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


PipelineConfig = create_model(
    "PipelineConfig",
    __base__=_PipelineConfigBase,
    __module__=__name__,
    **{
        kind.name: (SerializeAsAny[StageConfig] | None, None) if kind.optional else (SerializeAsAny[StageConfig], ...)
        for kind in STAGE_KINDS
    },
)


TOP_LEVEL_KEYS = tuple(k for k in PipelineConfig.model_fields if k != "base_dir")


def load_config(
    source: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    base_dir: str | Path | None = None,
) -> PipelineConfig:
    """Read, override and validate a pipeline config.

    ``source`` is a YAML file path or an already-parsed mapping. ``overrides`` maps dotted keys
    to values (``{"retriever.k": 3}``), taken as they are (the CLI parses ``--set`` text first).
    """
    load_entry_point_stages()  # installed third-party stage types, before anything is validated
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_syntax_message(path, exc)) from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
    for dotted, value in (overrides or {}).items():
        apply_override(raw, dotted, value)
    _latest_result_count_wins(raw, overrides or {})
    return validate_config(raw, base.resolve())


def read_sample_queries(source: list[str] | Path | None) -> list[str]:
    """``sample_queries``: a list as it is, or the lines of a ``.txt`` / the ``query`` of each line
    of a ``.jsonl`` file."""
    if source is None:
        return []
    if isinstance(source, list):
        return source
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"sample_queries: file not found: {path}")
    if path.suffix == ".jsonl":
        return [str(record["query"]) for record in read_json_objects(path, ("query",), label="sample_queries: ")]
    return [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def as_config(
    source: str | Path | Mapping[str, Any] | PipelineConfig,
    overrides: Mapping[str, Any] | None = None,
    base_dir: str | Path | None = None,
) -> PipelineConfig:
    """The one way to a validated config, from whatever a caller holds.

    ``source`` is a YAML file path, a parsed mapping, or a ``PipelineConfig``. A ``PipelineConfig``
    with no overrides is already valid and is returned as it is, validated no further; with
    overrides it is validated anew from its resolved settings, relative paths against ``base_dir``
    or else its own folder. A path or a mapping goes through :func:`load_config`.
    """
    if isinstance(source, PipelineConfig):
        if not overrides:
            return source
        return load_config(source.to_dict(), overrides, base_dir if base_dir is not None else source.base_dir)
    return load_config(source, overrides, base_dir)


def _latest_result_count_wins(raw: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """``reranker.top_n`` in a file takes precedence over ``retriever.k`` (it is the reranker's own
    cut). An override of ``retriever.k`` is the user's later word, so it clears that ``top_n``."""
    reranker = raw.get("reranker")
    if "retriever.k" in overrides and "reranker.top_n" not in overrides and isinstance(reranker, dict):
        reranker.pop("top_n", None)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a CLI ``--set dotted.key=value``; the value is read as a YAML scalar or list."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    return key.strip(), _parse_scalar(value)


def _parse_scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return value


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if parts[0] not in TOP_LEVEL_KEYS:
        raise ConfigError(f"{dotted}: unknown key {parts[0]!r}; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, cannot set {dotted}")
        node = child
    # a copy: a later dotted override goes inside this value, and must not reach the caller's dict
    node[parts[-1]] = copy.deepcopy(value)


def validate_config(raw: Mapping[str, Any], base_dir: Path) -> PipelineConfig:
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    for section in REQUIRED_SECTIONS:
        if raw.get(section) is None:
            raise ConfigError(f"{section}: missing section (required: {', '.join(REQUIRED_SECTIONS)})")
    context = {"base_dir": base_dir}
    sections: dict[str, Any] = {}
    for kind in STAGE_KINDS:
        section = kind.name
        data = raw.get(section)
        if data is None:
            if kind.optional:
                continue
            data = {}  # every other section has usable defaults
        if not isinstance(data, Mapping):
            raise ConfigError(f"{section}: must be a mapping of settings, got {type(data).__name__}")
        data = dict(data)
        data.setdefault("type", kind.default_type)
        registration = lookup(section, str(data["type"]))
        try:
            sections[section] = registration.config_model.model_validate(data, context=context)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, prefix=section, model=registration.config_model)) from None
    retriever = sections.get("retriever")
    for kind, message in retriever.required_stages().items():
        if sections.get(kind) is None:
            raise ConfigError(message)
    # A stage that works only beside certain types of another stage says so (BGE-M3's sparse index
    # and retriever need its embedder): refused here, before anything is built or loaded.
    for stage in sections.values():
        for kind, (types, message) in stage.required_types().items():
            if sections.get(kind) is None or sections[kind].type not in types:
                raise ConfigError(message)
    # An index with no folder on this machine (a Chroma server) cannot hold the record, lock and cache.
    needs_state = sections["vectorstore"].state_directory_required
    if needs_state and (raw.get("ingest") or {}).get("state_directory") is None:
        raise ConfigError(needs_state)
    rest = {k: v for k, v in raw.items() if k not in KINDS}
    try:
        return PipelineConfig.model_validate({**rest, **sections, "base_dir": base_dir}, context=context)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, prefix="", model=PipelineConfig)) from None


def _format_validation_error(exc: ValidationError, prefix: str, model: type[BaseModel]) -> str:
    """All problems on one line, each led by its dotted key: ``chunker.chunk_size: ...``."""
    lines = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if error["type"] == "extra_forbidden":
            message = "unknown key"
            if len(error["loc"]) == 1:
                valid = [name for name in model.model_fields if name != "base_dir"]
                message += f"; valid keys: {', '.join(valid)}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] not in ("missing", "value_error") and not isinstance(error.get("input"), (dict, list)):
                message += f" (got {error['input']!r})"
        lines.append(f"{key}: {message}")
    return "; ".join(lines)


def _yaml_syntax_message(path: Path, exc: yaml.YAMLError) -> str:
    """``file:line:column: not valid YAML: <problem>`` (1-based, as editors count), on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return f"{path}: not valid YAML: {first_line(exc, limit=None)}"
    message = f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        message += f" ({context} that starts at line {context_mark.line + 1})"
    return message
