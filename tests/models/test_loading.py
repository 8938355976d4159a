"""One loader: a model loads once per process, the tokenizer loads without the weights, and load
failures are one error with a remedy."""

import gc
import json
import shutil

import pytest
import sentence_transformers

from conftest import MINILM, pipeline_config
from rag_pipeline import ModelNotAvailableError, Pipeline
from rag_pipeline.embeddings import BgeEmbeddings, BgeEmbeddingsConfig
from rag_pipeline.models import loading
from rag_pipeline.rerankers import BgeReranker

TEXTS = [
    "Honey bees dance to tell the hive where flowers are.",
    "TIDES Rise And Fall — twice a day, pulled by the Moon. Café naïve résumé.",
    "word " * 300,
    "",
]


def _embeddings(model, **settings) -> BgeEmbeddings:
    return BgeEmbeddings(BgeEmbeddingsConfig(model=str(model), device="cpu", show_progress=False, **settings))


def test_embedder_built_twice_shares_one_model(tiny_bge_dir):
    first, second = _embeddings(tiny_bge_dir), _embeddings(tiny_bge_dir)
    assert first.client is second.client
    assert _embeddings(tiny_bge_dir, max_seq_length=16).client is not first.client


def test_two_pipelines_share_one_model(small_corpus, tmp_path, tiny_bge_dir):
    config = pipeline_config(small_corpus, None, str(tiny_bge_dir))
    assert Pipeline.from_config(config).embeddings.client is Pipeline.from_config(config).embeddings.client


def test_reranker_built_twice_shares_one_model(tiny_reranker_dir):
    first = BgeReranker(model=str(tiny_reranker_dir), device="cpu")
    assert BgeReranker(model=str(tiny_reranker_dir), device="cpu", top_n=1).cross_encoder is first.cross_encoder
    # A copy with another length limit is another model handle, not the original's.
    shorter = first.model_copy(update={"max_length": 64})
    assert shorter.cross_encoder is not first.cross_encoder and shorter.cross_encoder.max_length == 64


def test_a_model_nobody_holds_is_freed(tiny_bge_dir):
    _embeddings(tiny_bge_dir, max_seq_length=24).warm_up()
    gc.collect()
    key_lengths = {key.max_length for key in loading._handles.keys()}
    assert 24 not in key_lengths


def test_warm_up_loads_and_everything_else_waits(tiny_bge_dir, tiny_reranker_dir):
    embeddings = _embeddings(tiny_bge_dir)
    embeddings.fingerprint(load_model=False)
    embeddings.count_tokens(["hello"])
    assert embeddings._model is None
    assert embeddings.warm_up() is embeddings and embeddings._model is not None
    reranker = BgeReranker(model=str(tiny_reranker_dir), device="cpu")
    assert not any(key[0] == "model" for key in reranker._loaded)
    reranker.warm_up()
    assert any(key[0] == "model" for key in reranker._loaded)


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model's weights were loaded")

    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", refuse)


def test_tokenizer_and_limit_without_the_weights(tiny_bge_dir, no_model_loads):
    embeddings = _embeddings(tiny_bge_dir)
    assert embeddings.count_tokens(["hello world"]) == [4]
    assert embeddings.max_seq_length == 128
    assert embeddings._model is None


def test_token_chunker_needs_no_weights(small_corpus, tiny_bge_dir, no_model_loads):
    config = pipeline_config(small_corpus, None, str(tiny_bge_dir), chunker={"type": "tokens", "chunk_size": 64})
    pipe = Pipeline.from_config(config)
    chunks = pipe.chunker.split_documents(pipe.loader.load().documents)
    assert chunks and all(n <= 64 for n in pipe.embeddings.count_tokens([c.page_content for c in chunks]))


def _lower_casing_model(tmp_path, tiny_bge_dir):
    """A cased tokenizer in a model whose sentence_bert_config asks for lower-casing (as BGE's do)."""
    folder = shutil.copytree(tiny_bge_dir, tmp_path / "cased")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["do_lower_case"] = False
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    settings = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**settings, "do_lower_case": True}))
    return folder


@pytest.mark.parametrize(
    "model, settings",
    [("tiny_bge", {}), ("tiny_bge", {"max_seq_length": 8}), ("tiny_m3", {}), ("minilm", {}), ("lower_casing", {})],
)
def test_tokenizer_alone_matches_the_models_own(model, settings, tmp_path, tiny_bge_dir, tiny_bge_m3_dir):
    folder = {
        "tiny_bge": tiny_bge_dir,
        "tiny_m3": tiny_bge_m3_dir,
        "minilm": MINILM,
        "lower_casing": _lower_casing_model(tmp_path, tiny_bge_dir) if model == "lower_casing" else None,
    }[model]
    alone = _embeddings(folder, **settings)
    tokenizer, limit, counts = alone.tokenizer, alone.max_seq_length, alone.count_tokens(TEXTS)
    assert alone._model is None
    loaded = _embeddings(folder, **settings).client
    assert type(tokenizer) is type(loaded.tokenizer)
    assert limit == loaded.max_seq_length and tokenizer.model_max_length == loaded.tokenizer.model_max_length
    expected = loaded.tokenizer(TEXTS, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    assert tokenizer(TEXTS, add_special_tokens=True, truncation=False, verbose=False)["input_ids"] == expected
    assert counts == [len(ids) for ids in expected]
    if model == "lower_casing":
        assert tokenizer("Hello WORLD")["input_ids"] == tokenizer("hello world")["input_ids"]


@pytest.mark.parametrize("stage", ["embeddings", "reranker"])
def test_a_folder_that_is_not_a_model_is_one_error_with_a_remedy(tmp_path, stage):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    model = _embeddings(empty) if stage == "embeddings" else BgeReranker(model=str(empty), device="cpu")
    with pytest.raises(ModelNotAvailableError) as error:
        model.warm_up()
    message = str(error.value)
    assert message.startswith(f"{stage}.model: cannot load") and "must hold a complete model" in message
    assert "\n" not in message
