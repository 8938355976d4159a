"""``precision: int8``: the model's transformer exported to ONNX, dynamically quantised, run by ONNX Runtime.

Only the transformer is swapped: tokenisation, pooling, normalisation (bi-encoder) and the score
activation (cross-encoder) stay sentence-transformers' own, so int8 differs from fp32 in the
matrix products alone. ``optimum`` would do the export, but it pins transformers below the
version this project needs, so ``torch.onnx.export`` (the dynamo exporter; the TorchScript one
mis-traces transformers 5's attention masks) and ``onnxruntime.quantization.quantize_dynamic``
are called directly.

Quantisation is per output channel and MatMul only: per-tensor scales, or quantising the embedding
Gather too, cost MiniLM about 0.04 cosine against fp32; this costs under 0.01.

The quantised file is cached under ``<model cache>/onnx/<key>/`` (the folder that holds the model
file-hash cache, see ``identity.py``), keyed by the model's identity, its kind and this module's
export format, and reused by every later process. Beside it, ``tolerance.json`` records how far
its vectors are from fp32 on a fixed probe set, measured once at export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .identity import hash_cache_directory

logger = logging.getLogger(__name__)

# Bump when the export or quantisation settings change: old files are then not reused.
EXPORT_FORMAT = "dynamo-opset18-qint8-perchannel-matmul-v1"
# Cosine to the fp32 vector below which int8 vectors are not treated as interchangeable.
INT8_MIN_COSINE = 0.99

# Varied English text for the tolerance probe: short and long, scientific and everyday.
PROBE_TEXTS = (
    "Glucose metabolism in tumour cells shifts towards aerobic glycolysis under hypoxia.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "BRCA1 mutations increase the lifetime risk of breast and ovarian cancer.",
    "How do I reset my password if I no longer have access to my email account?",
    "Vitamin D supplementation did not reduce the incidence of fractures in older adults living in the community, "
    "according to a randomised controlled trial that followed participants for five years.",
    "Chroma stores vectors; the reranker reorders the top twenty candidates.",
    "Antibiotic resistance spreads between bacteria through plasmids carrying resistance genes.",
    "What is the capital of France?",
)


def onnx_cache_directory() -> Path:
    return hash_cache_directory() / "onnx"


def int8_folder(identity: str, kind: str) -> Path:
    key = hashlib.sha256(f"{kind}\0{identity}\0{EXPORT_FORMAT}".encode("utf-8")).hexdigest()[:24]
    return onnx_cache_directory() / key


def _transformer_module(model):
    from sentence_transformers.base.modules.transformer import Transformer

    for module in model:
        if isinstance(module, Transformer):
            return module
    raise ValueError("int8 needs a model with a transformers Transformer module")


def _output_name(module) -> str:
    name = module.modality_config["text"]["method_output_name"]
    return name if isinstance(name, str) else name[0]


def _export_view(model, output_name: str, input_names: list[str]):
    """The transformer called with positional tensors and returning one tensor, as the exporter wants."""
    import torch

    class ExportView(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        # Named parameters, not *args: the exporter maps dynamic axes onto parameter names.
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            inputs = {name: features[name] for name in input_names}
            return getattr(self.model(**inputs, return_dict=True), output_name)

    return ExportView()


@contextmanager
def _quiet_exporter():
    """The exporter's and quantiser's chatter (missing torchvision ops, a pre-processing tip logged
    on the root logger) says nothing a user can act on."""
    exporter = logging.getLogger("torch.onnx")
    previous = exporter.level
    exporter.setLevel(logging.ERROR)
    tip = _DropQuantisationTip()
    logging.getLogger().addFilter(tip)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter.setLevel(previous)
        logging.getLogger().removeFilter(tip)


class _DropQuantisationTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _export(module, target: Path) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tokenizer = module.tokenizer
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    sample = tokenizer(["an example", "a second, longer example sentence"], padding=True, return_tensors="pt")
    output_name = _output_name(module)
    view = _export_view(module.model, output_name, input_names).eval()
    dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, _quiet_exporter():
        plain = Path(scratch) / "model.onnx"
        quantised = Path(scratch) / "model.int8.onnx"
        with torch.no_grad():
            torch.onnx.export(
                view, tuple(sample[n] for n in input_names), str(plain), input_names=input_names,
                output_names=[output_name], dynamic_axes={**dynamic, output_name: {0: "batch"}}, dynamo=True,
                verbose=False,
            )
        quantize_dynamic(
            str(plain), str(quantised), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
        )
        # A rename within one folder is atomic: a concurrent process sees no file or a whole one.
        os.replace(quantised, target)


def onnx_runtime_transformer(session, config, output_name: str):
    """Stands in for the transformers model inside sentence-transformers' Transformer module."""
    import numpy as np
    import torch

    input_names = [i.name for i in session.get_inputs()]

    class OnnxRuntimeTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = config
            self.session = session

        def forward(self, **features):
            feeds = {name: np.asarray(features[name].cpu().numpy(), dtype=np.int64) for name in input_names}
            (output,) = self.session.run([output_name], feeds)
            return {output_name: torch.from_numpy(output)}

    return OnnxRuntimeTransformer()


def _session(path: Path):
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    # The same thread budget as torch (OMP_NUM_THREADS / torch.set_num_threads), so int8 and
    # bf16 are compared on equal terms and a shared machine is not oversubscribed.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _probe(model, kind: str):
    import numpy as np

    if kind == "bi-encoder":
        return np.asarray(model.encode(list(PROBE_TEXTS), normalize_embeddings=True, show_progress_bar=False))
    pairs = [(PROBE_TEXTS[i], PROBE_TEXTS[(i + 1) % len(PROBE_TEXTS)]) for i in range(len(PROBE_TEXTS))]
    return np.asarray(model.predict(pairs, show_progress_bar=False, activation_fn=None))


def _tolerance(reference, quantised, kind: str) -> dict[str, Any]:
    import numpy as np

    if kind == "bi-encoder":
        cosines = (reference * quantised).sum(axis=1)
        return {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean()), "probe_texts": len(cosines)}
    return {"max_abs_logit_difference": float(np.abs(reference - quantised).max()), "probe_pairs": len(reference)}


def to_int8(model, *, kind: str, identity: str, what: str):
    """``model`` (a SentenceTransformer or CrossEncoder, fp32) with its transformer run by ONNX
    Runtime in int8; the quantised file is exported on the first call and reused afterwards."""
    module = _transformer_module(model)
    folder = int8_folder(identity, kind)
    target = folder / "model.int8.onnx"
    tolerance_file = folder / "tolerance.json"
    reference = None
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        logger.warning("%s: exporting the model to int8 ONNX in %s (once per model)", what, folder)
        reference = _probe(model, kind)
        _export(module, target)
    module.model = onnx_runtime_transformer(_session(target), module.model.config, _output_name(module))
    if reference is not None:
        tolerance = {"identity": identity, "kind": kind, "format": EXPORT_FORMAT, **_tolerance(reference, _probe(model, kind), kind)}
        tolerance_file.write_text(json.dumps(tolerance, indent=2) + "\n", encoding="utf-8")
    check_tolerance(tolerance_file, what)
    return model


def check_tolerance(tolerance_file: Path, what: str) -> dict[str, Any] | None:
    """Warn when the int8 vectors are further from fp32 than the collection fingerprint assumes."""
    try:
        tolerance = json.loads(tolerance_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cosine = tolerance.get("min_cosine")
    if cosine is not None and cosine < INT8_MIN_COSINE:
        logger.warning(
            "%s: int8 vectors are only %.4f cosine to fp32 (tolerance %.2f); an index built in another precision "
            "will rank differently, reindex or use precision bf16",
            what, cosine, INT8_MIN_COSINE,
        )
    return tolerance
