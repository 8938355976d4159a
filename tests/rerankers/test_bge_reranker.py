import numpy as np
import pytest
import torch
from langchain_core.documents import Document

from rag_pipeline.rerankers import BgeReranker

PASSAGES = [
    "Honey bees dance to tell the hive where flowers are.",
    "Tides rise and fall twice a day.",
    "Green tea is steeped at 80 degrees for two minutes.",
    "A sourdough starter needs feeding with flour and water.",
    "Bees collect nectar and pollen from flowers.",
]


def _raw_logits(folder, query, passages):
    """The cross-encoder scored directly with transformers: no sentence-transformers, no our code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer([query] * len(passages), passages, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.view(-1).numpy()


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    return BgeReranker(model=str(tiny_reranker_dir), top_n=3, device="cpu")


def test_scores_are_the_cross_encoders_logits(reranker, tiny_reranker_dir):
    expected = _raw_logits(str(tiny_reranker_dir), "where do bees go", PASSAGES)
    np.testing.assert_allclose(reranker.score("where do bees go", PASSAGES), expected, atol=1e-5)


def test_normalize_applies_a_sigmoid(reranker, tiny_reranker_dir):
    normalised = reranker.model_copy(update={"normalize": True})
    logits = _raw_logits(str(tiny_reranker_dir), "tea", PASSAGES)
    np.testing.assert_allclose(normalised.score("tea", PASSAGES), 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_compress_orders_by_score_keeps_top_n_and_writes_rerank_score(reranker, tiny_reranker_dir):
    documents = [Document(page_content=p, metadata={"score": 0.5 - i / 10}, id=str(i)) for i, p in enumerate(PASSAGES)]
    kept = reranker.compress_documents(documents, "where do bees go")
    logits = _raw_logits(str(tiny_reranker_dir), "where do bees go", PASSAGES)
    assert [d.id for d in kept] == [str(i) for i in np.argsort(-logits)[:3]]
    assert [d.metadata["rerank_score"] for d in kept] == pytest.approx(sorted(logits, reverse=True)[:3], abs=1e-5)
    assert all("score" in d.metadata for d in kept)  # the dense score is kept beside it


def test_same_scores_as_flagembedding(reranker, tiny_reranker_dir):
    """FlagEmbedding's FlagReranker, BGE's reference implementation, agrees with ours."""
    from FlagEmbedding import FlagReranker

    flag = FlagReranker(str(tiny_reranker_dir), use_fp16=False, devices="cpu")
    pairs = [["where do bees go", p] for p in PASSAGES]
    np.testing.assert_allclose(reranker.score("where do bees go", PASSAGES), flag.compute_score(pairs), atol=1e-4)


def test_fp16_is_never_used_on_cpu(tiny_reranker_dir):
    reranker = BgeReranker(model=str(tiny_reranker_dir), device="cpu", dtype="float16")
    assert {p.dtype for p in reranker.cross_encoder.model.parameters()} == {torch.float32}


def test_copies_share_one_loaded_model(reranker):
    copy = reranker.model_copy(update={"top_n": 1})
    assert copy.cross_encoder is reranker.cross_encoder


def test_blend_weighs_the_normalised_first_stage_score_against_the_cross_encoder(reranker, tiny_reranker_dir):
    first_stage = [0.9, 0.1, 0.5, 0.3, 0.7]  # the first stage's own order: 0, 4, 2, 3, 1
    documents = [Document(page_content=p, metadata={"score": s}, id=str(i)) for i, (p, s) in enumerate(zip(PASSAGES, first_stage))]
    logits = _raw_logits(str(tiny_reranker_dir), "bees", PASSAGES)
    pure = [d.id for d in reranker.rank("bees", documents)]
    assert pure == [str(i) for i in np.argsort(-logits, kind="stable")]
    only_first = reranker.model_copy(update={"blend": 1.0}).rank("bees", documents)
    assert [d.id for d in only_first] == ["0", "4", "2", "3", "1"]
    half = reranker.model_copy(update={"blend": 0.5}).rank("bees", documents)
    f = (np.array(first_stage) - 0.1) / 0.8
    r = (logits - logits.min()) / (logits.max() - logits.min())
    expected = 0.5 * f + 0.5 * r
    assert [d.id for d in half] == [str(i) for i in np.argsort(-expected, kind="stable")]
    np.testing.assert_allclose([d.metadata["rerank_score"] for d in half], np.sort(expected)[::-1], atol=1e-4)


def test_blend_is_a_config_key_between_0_and_1():
    from rag_pipeline.errors import ConfigError
    from rag_pipeline.rerankers.bge_reranker import BgeRerankerConfig

    assert BgeRerankerConfig().blend == 0.0
    with pytest.raises(Exception, match="blend"):
        BgeRerankerConfig(blend=1.5)


def test_the_reranker_keeps_its_config_and_its_defaults(tiny_reranker_dir, tmp_path):
    """Each setting is declared once, on the config: the stage a pipeline builds holds the section
    itself, and one made from settings has the config's defaults (``top_n`` null: every document)."""
    from conftest import pipeline_config
    from rag_pipeline import Pipeline
    from rag_pipeline.rerankers import BgeRerankerConfig

    config = pipeline_config(tmp_path, None, "unused", reranker={"type": "bge-reranker", "model": str(tiny_reranker_dir)})
    pipe = Pipeline.from_config(config)
    assert pipe.reranker.config is pipe.config.reranker
    from_settings = BgeReranker(model=str(tiny_reranker_dir))
    assert from_settings.config == BgeRerankerConfig(model=str(tiny_reranker_dir))
    assert from_settings.top_n is None


def test_a_copys_settings_are_validated_and_top_n_null_keeps_every_document(reranker):
    from pydantic import ValidationError

    documents = [Document(page_content=p, id=str(i)) for i, p in enumerate(PASSAGES)]
    assert len(reranker.compress_documents(documents, "bees")) == 3
    assert len(reranker.model_copy(update={"top_n": None}).compress_documents(documents, "bees")) == len(PASSAGES)
    with pytest.raises(ValidationError, match="blend"):
        reranker.model_copy(update={"blend": 1.5})
