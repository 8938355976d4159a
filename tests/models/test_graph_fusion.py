"""oneDNN Graph fusion: a fused model gives the eager model's outputs, on every shape, and anything
the graph was not traced for (small batches, gradients, hidden states) runs eagerly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from model_factory import SAMPLE_CORPUS, minilm_path
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.models import Transformer

from rag_pipeline.embeddings import BgeEmbeddings, BgeEmbeddingsConfig
from rag_pipeline.models import graph_fusion
from rag_pipeline.models.graph_fusion import FusedForward, fuse_for_cpu
from rag_pipeline.rerankers import BgeReranker


@pytest.fixture(autouse=True)
def warnings_reach_caplog(monkeypatch):
    monkeypatch.setattr(graph_fusion.logger, "disabled", False)


def passages(count: int = 40) -> list[str]:
    """Real prose of varied lengths (sentences of the sample corpus, joined in runs of 1-6)."""
    sentences = []
    for path in sorted(SAMPLE_CORPUS.glob("*.txt")):
        sentences += [s.strip() + "." for s in path.read_text(encoding="utf-8").replace("\n", " ").split(".") if len(s.strip()) > 20]
    texts, i = [], 0
    while len(texts) < count:
        run = 1 + len(texts) % 6
        texts.append(" ".join(sentences[(i + j) % len(sentences)] for j in range(run)))
        i += run
    return texts


def minilm(dtype: torch.dtype = torch.float32) -> SentenceTransformer:
    model = SentenceTransformer(str(minilm_path()), device="cpu", model_kwargs={"dtype": dtype})
    model.max_seq_length = 256
    return model.eval()


class Eager:
    """The unfused fp32 model, loaded once for the module, and its vectors of each list of texts,
    computed once: the references the fused copies (each test fuses its own) are checked against."""

    def __init__(self):
        self.model = minilm()
        self._vectors: dict[tuple[tuple[str, ...], int], np.ndarray] = {}

    def encode(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        key = (tuple(texts), batch_size)
        if key not in self._vectors:
            self._vectors[key] = self.model.encode(texts, batch_size=batch_size)
        return self._vectors[key].copy()


@pytest.fixture(scope="module")
def eager_model() -> Eager:
    return Eager()


def fused_forward(model) -> FusedForward:
    forward = model[0].model.forward
    assert isinstance(forward, FusedForward)
    return forward


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def test_fused_minilm_gives_the_eager_vectors_on_every_batch_shape(eager_model):
    texts = passages(40)
    eager = eager_model.encode(texts, batch_size=16)
    model = minilm()
    assert fuse_for_cpu(model, device="cpu", dtype="float32")
    forward = fused_forward(model)
    for batch_size in (16, 7, 40):  # a last batch smaller than the rest; one batch of everything
        fused = model.encode(texts, batch_size=batch_size)
        assert fused.shape == eager.shape
        assert min_cosine(fused, eager) > 0.99999
    assert forward.disabled_because is None
    assert forward.fused_calls >= 3  # the graph answered, not the fallback


def test_bf16_fused_vectors_stay_interchangeable_with_fp32_eager(eager_model):
    texts = passages(32)
    reference = eager_model.encode(texts, batch_size=16)  # fp32
    model = minilm(torch.bfloat16)
    assert fuse_for_cpu(model, device="cpu", dtype="bfloat16")
    fused = model.encode(texts, batch_size=16, convert_to_numpy=True).astype(np.float32)
    assert fused_forward(model).fused_calls >= 1
    assert min_cosine(fused, reference) >= 0.999


def test_small_batches_and_gradients_and_hidden_states_run_eagerly():
    model = minilm()
    fuse_for_cpu(model, device="cpu", dtype="float32")
    forward = fused_forward(model)
    model.encode(["one short query"])  # 1 x 4 tokens: far below MIN_TOKENS
    assert forward.fused_calls == 0 and not forward._graphs

    batch = dict(model.tokenizer(passages(16), padding=True, truncation=True, max_length=256, return_tensors="pt"))
    hf_model = model[0].model
    with torch.no_grad():
        plain = hf_model(**batch)
    assert forward.fused_calls == 1 and plain.last_hidden_state.shape == batch["input_ids"].shape + (384,)
    with torch.enable_grad():
        trained = hf_model(**batch)
    assert trained.last_hidden_state.requires_grad and forward.fused_calls == 1
    with torch.no_grad():
        layers = hf_model(**batch, output_hidden_states=True)
    assert len(layers.hidden_states) == 7 and forward.fused_calls == 1
    assert torch.allclose(layers.last_hidden_state, plain.last_hidden_state, atol=1e-4)


def test_a_graph_that_disagrees_with_eager_is_dropped_with_one_warning(monkeypatch, caplog, eager_model):
    texts = passages(32)
    eager = eager_model.encode(texts, batch_size=16)
    model = minilm()
    fuse_for_cpu(model, device="cpu", dtype="float32")
    monkeypatch.setattr(graph_fusion, "AGREEMENT", 1.5)  # no cosine passes: the check must fail
    with caplog.at_level(logging.WARNING):
        vectors = model.encode(texts, batch_size=16)
        model.encode(texts, batch_size=16)
    forward = fused_forward(model)
    assert forward.fused_calls == 0 and "differs from eager" in forward.disabled_because
    (record,) = [r for r in caplog.records if "fusion off" in r.getMessage()]
    assert "\n" not in record.getMessage()
    np.testing.assert_allclose(vectors, eager, atol=1e-6)  # answered eagerly, not from the graph


def test_a_graph_that_fails_at_run_time_falls_back_to_eager(monkeypatch, caplog, eager_model):
    texts = passages(32)
    model = minilm()
    fuse_for_cpu(model, device="cpu", dtype="float32")
    model.encode(texts, batch_size=16)
    forward = fused_forward(model)
    assert forward.fused_calls == 2

    def broken(self, graph, inputs):
        raise RuntimeError("shape not supported\nsecond line")

    monkeypatch.setattr(FusedForward, "_run", broken)
    with caplog.at_level(logging.WARNING):
        vectors = model.encode(texts, batch_size=16)
    assert min_cosine(vectors, eager_model.encode(texts, batch_size=16)) > 0.99999
    assert forward.disabled_because == "RuntimeError: shape not supported"


def test_not_installed_off_the_cpu_in_fp16_int8_or_when_switched_off(monkeypatch):
    model = minilm()
    assert not fuse_for_cpu(model, device="cuda", dtype="float16")
    assert not fuse_for_cpu(model, device="cpu", dtype="int8")
    monkeypatch.setenv(graph_fusion.GRAPH_FUSION_ENV, "0")
    assert not fuse_for_cpu(model, device="cpu", dtype="float32")
    assert not isinstance(model[0].model.forward, FusedForward)
    monkeypatch.delenv(graph_fusion.GRAPH_FUSION_ENV)
    assert fuse_for_cpu(model, device="cpu", dtype="float32")
    assert not fuse_for_cpu(model, device="cpu", dtype="float32")  # once is enough


def test_the_loader_fuses_the_embedder_and_the_reranker(tiny_bge_dir, tiny_reranker_dir):
    texts = passages(24)
    embeddings = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), batch_size=16, show_progress=False))
    vectors = embeddings.encode(texts)
    forward = fused_forward(embeddings.client)
    assert forward.fused_calls >= 1
    reference = SentenceTransformer(str(tiny_bge_dir), device="cpu").encode(texts, batch_size=16)
    assert min_cosine(vectors, reference) > 0.99999

    reranker = BgeReranker(model=str(tiny_reranker_dir), max_length=128, device="cpu")
    query = "how do I purify water when camping"
    first = reranker.score(query, texts)
    (cross_forward,) = [m.model.forward for m in reranker.cross_encoder.modules() if isinstance(m, Transformer)]
    assert isinstance(cross_forward, FusedForward)
    assert cross_forward.fused_calls == 0 and not cross_forward._graphs  # one rerank (a CLI query) stays eager
    scores = reranker.score(query, texts)
    assert cross_forward.fused_calls == 1
    np.testing.assert_allclose(scores, first, atol=1e-5)
    eager = CrossEncoder(str(tiny_reranker_dir), device="cpu", max_length=128).predict([(query, t) for t in texts])
    probabilities = 1 / (1 + np.exp(-np.asarray(scores)))  # ours are logits; predict() applies a sigmoid
    np.testing.assert_allclose(probabilities, eager, atol=1e-5)


def test_threads_sharing_a_fused_model_get_their_own_right_answers(eager_model):
    """The server and ``batch()`` call one loaded model from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    texts = passages(48)
    groups = [texts[0:16], texts[16:32], texts[32:48], texts[8:24]]
    eager = [eager_model.encode(group, batch_size=16) for group in groups]
    model = minilm()
    fuse_for_cpu(model, device="cpu", dtype="float32")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda group: model.encode(group, batch_size=16), groups * 2))
    for got, expected in zip(results, eager * 2):
        assert min_cosine(got, expected) > 0.99999
    assert fused_forward(model).fused_calls >= 1 and fused_forward(model).disabled_because is None


def test_config_show_says_whether_fusion_is_on(repo_root, capsys, monkeypatch):
    from rag_pipeline.cli import main

    config = str(repo_root / "configs" / "bge-small.yaml")
    assert main(["config", "show", config, "--set", "embeddings.device=cpu"]) == 0
    assert "# embeddings and reranker: oneDNN Graph fusion on" in capsys.readouterr().out
    monkeypatch.setenv(graph_fusion.GRAPH_FUSION_ENV, "0")
    assert main(["config", "show", config, "--set", "embeddings.device=cpu"]) == 0
    assert "oneDNN Graph fusion off (RAG_PIPELINE_GRAPH_FUSION=0)" in capsys.readouterr().out


# -- padding: the checks must see the attention mask at work (issue 21, item 16) ------------------


def mask_blind(build, *, from_length: int = 0):
    """A stand-in for a library change that loses the attention mask in the traced graph: the
    graph built by ``build`` is fed an all-ones mask, at sequence lengths of ``from_length`` and up."""

    def build_ignoring_the_mask(self, names, example):
        graph = build(self, names, example)
        at = names.index("attention_mask")

        def run(*values):
            if values[at].shape[1] >= from_length:
                values = tuple(torch.ones_like(v) if i == at else v for i, v in enumerate(values))
            return graph(*values)

        return run

    return build_ignoring_the_mask


def fusion_off_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fusion off" in r.getMessage()]


def test_a_graph_that_ignores_the_attention_mask_is_caught_when_traced(monkeypatch, caplog, eager_model):
    """The trace's own check used the first rows of a sorted batch, which have no padding: a graph
    without a mask passed it and served wrong vectors for every padded row."""
    texts = passages(32)
    eager = eager_model.encode(texts, batch_size=16)
    model = minilm()
    fuse_for_cpu(model, device="cpu", dtype="float32")
    monkeypatch.setattr(FusedForward, "_build", mask_blind(FusedForward._build))
    with caplog.at_level(logging.WARNING):
        vectors = model.encode(texts, batch_size=16)
        again = model.encode(texts, batch_size=16)
    forward = fused_forward(model)
    assert forward.fused_calls == 0 and "differs from eager" in forward.disabled_because
    (warning,) = fusion_off_warnings(caplog)
    assert "\n" not in warning
    assert min_cosine(vectors, eager) > 0.99999 and min_cosine(again, eager) > 0.99999


def test_a_graph_that_loses_the_mask_at_a_later_shape_is_caught_on_that_shapes_first_call(monkeypatch, caplog, eager_model):
    """The trace is checked at short lengths only; a graph that goes wrong at a longer shape (a
    kernel compiled for it) is caught by the check of that shape's first call, before it serves."""
    texts = passages(40)
    eager = eager_model.encode(texts, batch_size=16)
    model = minilm()
    fuse_for_cpu(model, device="cpu", dtype="float32")
    longer_than_the_checks = 4 * graph_fusion.TRACE_LENGTH
    monkeypatch.setattr(FusedForward, "_build", mask_blind(FusedForward._build, from_length=longer_than_the_checks))
    with caplog.at_level(logging.WARNING):
        vectors = model.encode(texts, batch_size=16)
    forward = fused_forward(model)
    assert forward.disabled_because is not None and "differs from eager at" in forward.disabled_because
    (warning,) = fusion_off_warnings(caplog)
    assert "tokens" in warning
    assert min_cosine(vectors, eager) > 0.99999  # the batch that showed it was answered eagerly


def test_fused_states_equal_eager_on_heavily_padded_batches(eager_model):
    """Rows of very different lengths in one batch: every token the mask keeps gets eager's state."""
    texts = [t if i % 3 else t[:30] for i, t in enumerate(passages(16))]  # every third row mostly padding
    model = minilm()
    fuse_for_cpu(model, device="cpu", dtype="float32")
    forward = fused_forward(model)
    reference = eager_model.model[0].model
    batch = dict(model.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any(dim=1).sum() > len(texts) // 2
    for _ in range(3):  # the trace, the profiling run, the compiled kernels
        with torch.no_grad():
            fused = model[0].model(**batch).last_hidden_state
            eager = reference(**batch).last_hidden_state
        kept = batch["attention_mask"].bool()
        states_fused, states_eager = fused[kept], eager[kept]
        cosine = torch.nn.functional.cosine_similarity(states_fused, states_eager, dim=1)
        assert cosine.min().item() > 0.9999
    assert forward.fused_calls == 3 and forward.disabled_because is None


def test_a_cross_encoder_graph_that_ignores_the_mask_is_caught_by_its_scores(monkeypatch, caplog):
    """A cross-encoder's graph answers one score a row; a cosine of one number compares only its
    sign, so scores are compared as numbers. (MiniLM's encoder under a seeded random score head:
    the tiny test reranker's scores hardly depend on the text.)"""
    torch.manual_seed(0)
    cross_encoder = CrossEncoder(str(minilm_path()), num_labels=1, device="cpu", max_length=128)
    pairs = [("how do I purify water when camping", text) for text in passages(24)]
    eager_scores = cross_encoder.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity())
    assert fuse_for_cpu(cross_encoder, device="cpu", dtype="float32")
    monkeypatch.setattr(FusedForward, "_build", mask_blind(FusedForward._build))
    with caplog.at_level(logging.WARNING):
        scores = cross_encoder.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity())
    (forward,) = [m.model.forward for m in cross_encoder.modules() if isinstance(m, Transformer)]
    assert forward.fused_calls == 0 and "logits differs from eager" in forward.disabled_because
    assert len(fusion_off_warnings(caplog)) == 1
    np.testing.assert_allclose(scores, eager_scores, atol=1e-6)
