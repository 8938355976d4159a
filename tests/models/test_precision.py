"""Device and precision come from the config and the hardware, not from the loaded weights."""

import logging

import numpy as np
import pytest
import torch

from rag_pipeline.embeddings import BgeEmbeddings, BgeEmbeddingsConfig
from rag_pipeline.errors import ConfigError
from rag_pipeline.models import Precision, resolve_precision
from rag_pipeline.models import precision as precision_module
from rag_pipeline.rerankers import BgeReranker, BgeRerankerConfig


@pytest.fixture(autouse=True)
def warnings_reach_caplog(monkeypatch):
    # Another test module may import a library that calls logging.config.dictConfig, which
    # disables loggers created before it; these tests read the warnings.
    monkeypatch.setattr(precision_module.logger, "disabled", False)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: (True, "CPU has avx512_bf16"))


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: (False, "CPU lacks amx_bf16/avx512_bf16"))


def test_auto_is_fp16_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision("auto", "auto", "embeddings") == Precision("cuda", "float16")
    assert resolve_precision("cuda:1", "bfloat16", "embeddings") == Precision("cuda:1", "bfloat16")


def test_auto_is_bf16_on_a_cpu_with_bf16_matrix_instructions(cpu_with_bf16):
    chosen = resolve_precision("cpu", "auto", "embeddings")
    assert chosen == Precision("cpu", "bfloat16") and chosen.name == "bf16"
    assert "avx512_bf16" in chosen.reason


def test_auto_is_fp32_on_a_cpu_without_them(cpu_without_bf16):
    assert resolve_precision("cpu", "auto", "embeddings") == Precision("cpu", "float32")


def test_bf16_where_unsupported_falls_back_to_fp32_with_one_line_notice(cpu_without_bf16, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("cpu", "bf16", "reranker") == Precision("cpu", "float32")
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "\n" not in record.getMessage()
    assert record.getMessage().startswith("reranker.precision is bf16 but") and "using fp32" in record.getMessage()


def test_fp16_on_cpu_becomes_fp32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("cpu", "float16", "reranker") == Precision("cpu", "float32")
    assert "reranker.precision is fp16" in caplog.text


def test_bf16_is_kept_on_a_cpu_that_has_it(cpu_with_bf16):
    assert resolve_precision("cpu", "bfloat16", "embeddings").torch_dtype is torch.bfloat16


def test_int8_needs_the_onnx_extra(monkeypatch):
    monkeypatch.setattr(precision_module, "onnx_runtime_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"embeddings.precision is int8 .*rag-pipeline\[onnx\]"):
        resolve_precision("cpu", "int8", "embeddings")


def test_int8_on_a_gpu_falls_back_to_fp16(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("cuda", "int8", "embeddings") == Precision("cuda", "float16")
    assert "embeddings.precision is int8" in caplog.text


@pytest.mark.parametrize(
    "flags, expected",
    [("fpu avx512f avx512_bf16 avx512_vnni", True), ("fpu amx_tile amx_bf16", True), ("fpu avx2 avx512f", False)],
)
def test_cpu_bf16_support_reads_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    supported, evidence = precision_module.cpu_flags_bf16_support(str(cpuinfo))
    assert supported is expected and ("bf16" in evidence)


def test_the_environment_overrides_the_detection(monkeypatch):
    monkeypatch.setenv("RAG_PIPELINE_CPU_BF16", "1")
    assert resolve_precision("cpu", "auto", "embeddings").dtype == "bfloat16"
    monkeypatch.setenv("RAG_PIPELINE_CPU_BF16", "0")
    assert resolve_precision("cpu", "auto", "embeddings").dtype == "float32"


def test_dtype_is_read_as_the_old_name_of_precision():
    assert BgeEmbeddingsConfig(dtype="bfloat16").precision == "bf16"
    assert BgeRerankerConfig(dtype="float32").precision == "fp32"
    assert BgeReranker(model="x", dtype="float16").precision == "fp16"
    assert BgeEmbeddingsConfig(precision="float32").precision == "fp32"
    assert BgeEmbeddingsConfig(dtype="bfloat16", precision="bf16").precision == "bf16"


def test_dtype_and_precision_that_disagree_are_one_config_error():
    with pytest.raises(ConfigError, match=r"^embeddings.dtype \(fp32\) and embeddings.precision \(bf16\) disagree"):
        BgeEmbeddingsConfig(dtype="float32", precision="bf16")


def test_config_show_says_what_auto_became_and_why(repo_root, capsys, cpu_with_bf16):
    from rag_pipeline.cli import main

    assert main(["config", "show", str(repo_root / "configs" / "bge-small.yaml"), "--set", "embeddings.device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "# embeddings.precision: auto -> bf16 on cpu (auto: CPU has avx512_bf16)" in out


class _WeightlessBackend:
    """Stands in for an ONNX or int8 model: it encodes, but has no torch parameters to read."""

    max_seq_length = 128
    tokenizer = None

    def get_embedding_dimension(self):
        return 32

    def encode(self, texts, **_):
        return np.ones((len(texts), 32), dtype=np.float32)


@pytest.mark.parametrize("precision, expected", [("auto", "float32"), ("fp32", "float32"), ("bf16", "bfloat16"), ("int8", "int8")])
def test_cache_identity_takes_the_precision_from_the_config(tiny_bge_dir, precision, expected, cpu_without_bf16, monkeypatch):
    monkeypatch.setattr(precision_module, "onnx_runtime_installed", lambda: True)
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: (precision == "bf16", "test"))
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), device="cpu", precision=precision))
    embeddings._model = _WeightlessBackend()
    identity = embeddings.cache_identity()
    assert identity["dtype"] == expected
    assert identity["identity"] == embeddings.identity and identity["max_seq_length"] == 128


def test_config_show_warns_once_for_a_fallback(repo_root, capsys, caplog, cpu_without_bf16):
    from rag_pipeline.cli import main

    with caplog.at_level(logging.WARNING):
        assert main(["config", "show", str(repo_root / "configs" / "bge-small.yaml"), "--set", "embeddings.device=cpu",
                     "--set", "embeddings.precision=bf16"]) == 0
    assert "# embeddings.precision: bf16 -> fp32 on cpu" in capsys.readouterr().out
    assert len([r for r in caplog.records if r.getMessage().startswith("embeddings.precision is bf16 but")]) == 1


@pytest.mark.parametrize(
    "cap, bf16",
    [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("ALL", True)],
)
def test_a_onednn_isa_cap_below_bf16_makes_auto_fp32(monkeypatch, cap, bf16):
    # ONEDNN_MAX_CPU_ISA=AVX2 is how a bf16 CPU is made to run as an AVX2-only one: oneDNN then
    # has no bf16 kernels, and auto must not pick an emulated bf16 because /proc/cpuinfo still has it
    monkeypatch.delenv(precision_module.CPU_BF16_ENV, raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(precision_module, "cpu_flags_bf16_support", lambda cpuinfo: (True, "CPU has avx512_bf16"))
    supported, why = precision_module.cpu_bf16_support()
    assert supported is bf16
    if not bf16:
        assert "ONEDNN_MAX_CPU_ISA" in why
        assert precision_module.resolve_precision("cpu", "auto", "embeddings").dtype == "float32"


def test_the_bf16_override_wins_over_a_onednn_cap(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv(precision_module.CPU_BF16_ENV, "1")
    assert precision_module.cpu_bf16_support() == (True, f"{precision_module.CPU_BF16_ENV}=1")
