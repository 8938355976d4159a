"""The base of every stage config, and the field types they share. A leaf: it imports nothing from
the package, so any stage (built in or third-party) can import it without dragging in the rest.

Relative paths in a config resolve against the config file's folder. Validation receives that
folder as ``context={"base_dir": ...}`` (``config.load_config`` passes it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo
from pydantic.fields import FieldInfo


class StageConfig(BaseModel):
    """Base of every stage config: strict about unknown keys, carries the ``type:`` name."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)
    type: str

    # -- hooks the config loader and the index ask every stage (override where they apply) --------
    def required_stages(self) -> dict[str, str]:
        """Optional stage kinds this stage cannot work without, each with the message to refuse with."""
        return {}

    def required_types(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """Stage kinds whose ``type`` must be one of a few, each with the message to refuse with."""
        return {}

    @property
    def state_directory_required(self) -> str | None:
        """Why ``ingest.state_directory`` must be set (an index with no folder here), or None."""
        return None

    def indexes_searched(self) -> frozenset[str]:
        """A retriever's: the index kinds it reads (``vectorstore``, ``lexical``); an index it does
        not read need not be built for it (evaluation)."""
        return frozenset({"vectorstore", "lexical"})


def _base_dir(info: ValidationInfo) -> Path | None:
    base_dir = (info.context or {}).get("base_dir")
    return Path(base_dir) if base_dir is not None else None


def _resolve_against_base_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    base_dir = _base_dir(info)
    if base_dir is None:
        return value
    if not value.is_absolute():
        value = base_dir / value
    return value.resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve_against_base_dir)]
"""A path field that resolves relative to the config file's folder."""

# ``org/name`` or ``name``: what a Hugging Face hub id looks like. A relative folder can look the
# same (``models/bge-small``), so the folder wins when it exists beside the config.
_HUB_ID = re.compile(r"[\w.\-]+(/[\w.\-]+)?")


def _resolve_relative_model_folder(value: str, info: ValidationInfo) -> str:
    base_dir = _base_dir(info)
    if base_dir is None or value.startswith("package:"):
        return value
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    beside_config = base_dir / candidate
    explicit_folder = value.startswith(("./", "../")) or not _HUB_ID.fullmatch(value)
    if explicit_folder or beside_config.is_dir():
        return str(beside_config.resolve())
    return value  # a hub id


ModelReference = Annotated[str, AfterValidator(_resolve_relative_model_folder)]
"""A model: hub id, ``package:<name>``, or a folder. A folder resolves against the config's folder,
with or without ``./``; ``org/name`` is a hub id unless that folder exists beside the config."""


def _is_model_reference(info: FieldInfo) -> bool:
    return any(getattr(m, "func", None) is _resolve_relative_model_folder for m in info.metadata)


def named_models(config: BaseModel) -> dict[str, str]:
    """The models a stage config names, by field (``{"model": "BAAI/bge-small-en-v1.5"}``): every
    field typed ``ModelReference``, so a new stage's models are found without a list to update."""
    return {
        name: value
        for name, info in type(config).model_fields.items()
        if _is_model_reference(info) and isinstance(value := getattr(config, name), str)
    }
