"""One loader for sentence-transformers models, and one loaded copy of each per process.

The embedder, the reranker (and BGE-M3 after them) load through here. Handles are shared by a key
of everything that makes two loads differ — kind, source, commit, identity, device, dtype,
length limit, remote code, cache folder — so building a stage twice (a second ``Pipeline`` in a
notebook, ``eval`` after ``query``) does not load the model twice. The cache holds handles weakly:
a model nobody uses any more is freed, not kept for the life of the process.

``load_tokenizer`` loads the tokenizer alone, set up as sentence-transformers sets up the one inside
the model (same length limit, same lower-casing), so counting tokens and chunking by tokens do not
load the weights.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from ..errors import ModelNotAvailableError, first_line
from .graph_fusion import fuse_for_cpu, graph_fusion_enabled
from .precision import Precision
from .resolution import ResolvedModel, remedy_for

logger = logging.getLogger(__name__)

# sentence-transformers reads the first of these it finds beside a Transformer module.
_MODULE_CONFIG_FILES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)


@dataclass(frozen=True)
class HandleKey:
    kind: Literal["bi-encoder", "cross-encoder", "tokenizer"]
    source: str  # local folder or hub id
    revision: str | None
    identity: str
    device: str | None
    dtype: str | None
    max_length: int | None
    trust_remote_code: bool
    cache_folder: str | None
    graph_fusion: bool = False  # RAG_PIPELINE_GRAPH_FUSION at load time (graph_fusion.py)


_handles: "weakref.WeakValueDictionary[HandleKey, Any]" = weakref.WeakValueDictionary()
_handles_lock = threading.Lock()


def _shared(key: HandleKey, load: Callable[[], Any]) -> Any:
    # One lock for all loads: two threads asking for the same model must not load it twice, and
    # loads are rare enough that serialising different models costs nothing that matters.
    with _handles_lock:
        handle = _handles.get(key)
        if handle is None:
            handle = load()
            _handles[key] = handle
        return handle


def loaded_handle_count() -> int:
    """How many models and tokenizers this process holds (for tests and diagnostics)."""
    return len(_handles)


def _not_available(what: str, resolved: ResolvedModel, exc: Exception) -> ModelNotAvailableError:
    if resolved.path is not None and resolved.revision is None:
        remedy = f"{resolved.path} must hold a complete model (config.json, tokenizer and weights)"
    else:
        remedy = remedy_for(resolved.model_id)
    return ModelNotAvailableError(f"{what}: cannot load {resolved.reference!r} ({first_line(exc, limit=200)}); {remedy}")


def _source(resolved: ResolvedModel) -> tuple[str, str | None]:
    """What to hand the library: the local folder, or the hub id pinned to the resolved commit."""
    if resolved.path is not None:
        return resolved.path, None
    return resolved.model_id, resolved.revision


def load_bi_encoder(
    resolved: ResolvedModel, precision: Precision, *, max_seq_length: int | None = None, what: str = "embeddings.model",
    **common: Any,
):
    """A ``SentenceTransformer`` in eval mode, shared with every caller that asks for the same.

    ``show_progress=False`` also silences the hub's download bars (see :func:`library_progress`)."""

    def build(source: str, options: dict[str, Any]):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(source, **options)
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
        model.eval()
        return model

    return _load_shared("bi-encoder", build, resolved, precision, length=max_seq_length, what=what, **common)


def load_cross_encoder(
    resolved: ResolvedModel, precision: Precision, *, max_length: int, what: str = "reranker.model", **common: Any
):
    """A sentence-transformers ``CrossEncoder``, shared like :func:`load_bi_encoder`."""

    def build(source: str, options: dict[str, Any]):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(source, max_length=max_length, **options)

    return _load_shared("cross-encoder", build, resolved, precision, length=max_length, what=what, **common)


def load_bge_m3(
    resolved: ResolvedModel, precision: Precision, *, max_seq_length: int, batch_size: int,
    what: str = "embeddings.model", **common: Any,
):
    """FlagEmbedding's ``BGEM3FlagModel`` (dense, sparse and ColBERT outputs of one forward pass),
    shared like :func:`load_bi_encoder`. FlagEmbedding is imported here, on first use: it is the
    optional ``m3`` extra."""

    def build(source: str, options: dict[str, Any]):
        try:
            from FlagEmbedding import BGEM3FlagModel
        except ImportError as exc:
            raise ModelNotAvailableError(
                f"{what}: embeddings.type bge-m3 needs FlagEmbedding ({exc}); pip install 'rag-pipeline[m3]'"
            ) from None
        return BGEM3FlagModel(
            source,
            use_fp16=precision.dtype == "float16",
            use_bf16=precision.dtype == "bfloat16",
            devices=precision.device,
            trust_remote_code=options["trust_remote_code"],
            cache_dir=options["cache_folder"],
            batch_size=batch_size,
            query_max_length=max_seq_length,
            passage_max_length=max_seq_length,
        )

    return _load_shared("bge-m3", build, resolved, precision, length=max_seq_length, what=what, **common)


def _load_shared(
    kind: str,
    build: Callable[[str, dict[str, Any]], Any],
    resolved: ResolvedModel,
    precision: Precision,
    *,
    identity: str,
    length: int | None,
    what: str,
    trust_remote_code: bool = False,
    cache_folder: str | None = None,
    show_progress: bool | None = None,
):
    """One model per (kind, files, precision, length, options) in this process, loaded on first
    ask; a load that fails for want of files is one ``ModelNotAvailableError`` with the remedy."""
    source, revision = _source(resolved)
    key = HandleKey(
        kind, source, revision, identity, precision.device, precision.dtype, length, trust_remote_code, cache_folder,
        graph_fusion_enabled(),
    )

    def load():
        options = {
            "device": precision.device,
            "trust_remote_code": trust_remote_code,
            "local_files_only": resolved.local_files_only,
            "cache_folder": cache_folder,
            "revision": revision,
            "model_kwargs": {"dtype": precision.torch_dtype},
        }
        try:
            with library_progress(show_progress):
                model = build(source, options)
        except (OSError, ValueError) as exc:  # missing files; a folder that is not a model
            raise _not_available(what, resolved, exc) from None
        if precision.is_int8:
            from .onnx_int8 import to_int8

            model = to_int8(model, kind=kind, identity=identity, what=what)
        elif kind in ("bi-encoder", "cross-encoder"):
            fuse_for_cpu(model, device=precision.device, dtype=precision.dtype, eager_calls_first=1 if kind == "cross-encoder" else 0)
        return model

    return _shared(key, load)


def load_tokenizer(
    resolved: ResolvedModel,
    *,
    identity: str,
    max_seq_length: int | None = None,
    trust_remote_code: bool = False,
):
    """The tokenizer of a bi-encoder in a local folder, without its weights; None when that cannot
    be done faithfully (a hub model still to download, a model with no Transformer module), in
    which case the caller loads the model and takes its tokenizer."""
    if resolved.path is None:
        return None
    module_dir = _transformer_module_dir(Path(resolved.path))
    if module_dir is None:
        return None
    key = HandleKey("tokenizer", resolved.path, resolved.revision, identity, None, None, max_seq_length, trust_remote_code, None)
    try:
        return _shared(key, lambda: _build_tokenizer(module_dir, max_seq_length, trust_remote_code))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.debug("tokenizer of %s not loadable on its own (%s); loading the model", resolved.path, exc)
        return None


def _transformer_module_dir(folder: Path) -> Path | None:
    """Where the Transformer module of a sentence-transformers folder keeps its tokenizer."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        # A plain transformers folder: sentence-transformers wraps it in a Transformer at its root.
        return folder if (folder / "config.json").is_file() else None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for module in modules:
        if str(module.get("type", "")).rsplit(".", 1)[-1] == "Transformer":
            return folder / module.get("path", "")
    return None


def _module_settings(module_dir: Path) -> dict[str, Any]:
    for name in _MODULE_CONFIG_FILES:
        path = module_dir / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return {}


def _build_tokenizer(module_dir: Path, max_seq_length: int | None, trust_remote_code: bool):
    """Mirrors what ``sentence_transformers``' Transformer module does to its tokenizer on load
    (a test compares the two on every model shape the suite has)."""
    from transformers import AutoConfig, AutoTokenizer

    settings = _module_settings(module_dir)
    if settings.get("tokenizer_name_or_path"):
        raise ValueError("the tokenizer lives elsewhere")  # rare; the model's own load handles it
    tokenizer_kwargs = dict(settings.get("processor_kwargs") or settings.get("tokenizer_args") or {})
    tokenizer_kwargs.pop("trust_remote_code", None)  # a model's files never switch remote code on
    saved_limit = settings.get("max_seq_length")
    if saved_limit is not None and "model_max_length" not in tokenizer_kwargs:
        tokenizer_kwargs["model_max_length"] = saved_limit
    tokenizer = AutoTokenizer.from_pretrained(
        str(module_dir), trust_remote_code=trust_remote_code, local_files_only=True, **tokenizer_kwargs
    )
    if "model_max_length" not in tokenizer_kwargs:
        config = AutoConfig.from_pretrained(str(module_dir), trust_remote_code=trust_remote_code, local_files_only=True)
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and positions != -1:
            tokenizer.model_max_length = min(tokenizer.model_max_length, positions)
    if settings.get("do_lower_case"):
        _lower_case(tokenizer)
    if max_seq_length is not None:  # the config's limit, set on the loaded model the same way
        tokenizer.model_max_length = max_seq_length
    return tokenizer


def _lower_case(tokenizer) -> None:
    if not tokenizer.is_fast:
        try:
            tokenizer.do_lower_case = True
        except AttributeError:
            tokenizer.basic_tokenizer.do_lower_case = True
        return
    from tokenizers.normalizers import Lowercase, Sequence

    normalizer = tokenizer.backend_tokenizer.normalizer
    if isinstance(normalizer, Lowercase) or (
        isinstance(normalizer, Sequence) and any(isinstance(n, Lowercase) for n in normalizer)
    ):
        return
    steps = [Lowercase()]
    if isinstance(normalizer, Sequence):
        steps += list(normalizer)
    elif normalizer is not None:
        steps.append(normalizer)
    tokenizer.backend_tokenizer.normalizer = Sequence(steps)


@contextmanager
def library_progress(show_progress: bool | None) -> Iterator[None]:
    """The libraries' own bars while a model loads, governed by ours.

    transformers' "Loading weights" bar is never shown: it counts tensors read from local disk in
    milliseconds and tells nobody anything. huggingface_hub's download bars (a first use of a hub
    model) follow ``show_progress``: off when False, the library's own setting otherwise. Both
    switches are process-wide, so each is put back as it was.
    """
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    weights_bar_was_on = transformers_logging.is_progress_bar_enabled()
    hub_bars_were_off = hub_utils.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    if show_progress is False:
        hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if weights_bar_was_on:
            transformers_logging.enable_progress_bar()
        if show_progress is False and not hub_bars_were_off:
            hub_utils.enable_progress_bars()
