"""``rag-pipeline finetune``: the dev split, mining, training files, and a few training steps on tiny models."""

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from conftest import pipeline_config
from rag_pipeline.cli import main
from rag_pipeline.errors import ConfigError
from rag_pipeline.evaluation import evaluate, load_beir
from rag_pipeline.finetuning import (
    CARD_FILENAME,
    MiningWindow,
    TrainingExample,
    TrainingSettings,
    dev_split,
    mine_hard_negatives,
    read_card,
    read_training_file,
    refuse_test_split,
    train_embedder,
    train_reranker,
    write_training_file,
)
from rag_pipeline.finetuning.mining import logger as mining_logger
from rag_pipeline.models import model_identity, resolve_model

WORDS = "bees tides tea bread chess moon coffee bikes river glacier volcano desert forest cloud storm coral".split()


def write_toy_beir(folder: Path) -> Path:
    """16 documents, 12 queries (train and test), one relevant document each."""
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": w, "text": f"{w} " * (i % 3 + 1) + " ".join(WORDS[: i + 1])} for i, w in enumerate(WORDS)]
    queries = [{"_id": f"q{i}", "text": f"tell me about {w} and {WORDS[(i + 3) % 16]}"} for i, w in enumerate(WORDS[:12])]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    rows = "".join(f"q{i}\td{i}\t1\n" for i in range(12)) + "q0\td5\t0\n"  # and one judged non-relevant
    for split in ("train", "test"):
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return folder


def toy_config(tmp_path, model: Path) -> dict:
    config = pipeline_config(
        tmp_path, tmp_path / "index", str(model), chunker={"type": "none"}, lexical={"type": "bm25"},
        retriever={"type": "hybrid", "k": 10, "fetch_k": 10},
    )
    return config


def toy_examples(n: int = 8) -> list[TrainingExample]:
    return [
        TrainingExample(
            query=f"what about {WORDS[i]}",
            pos=[f"{WORDS[i]} is the answer about {WORDS[i]}"],
            neg=[f"{WORDS[(i + j) % 16]} is something else" for j in (1, 2, 3)],
        )
        for i in range(n)
    ]


# -- the dev split ---------------------------------------------------------------------------------


def test_dev_split_is_a_seeded_fifth_whatever_the_order():
    ids = [f"q{i}" for i in range(100)]
    train, dev = dev_split(ids)
    assert len(dev) == 20 and len(train) == 80 and not set(train) & set(dev)
    assert dev_split(list(reversed(ids))) == (train, dev)
    assert dev_split(ids, seed=1)[1] != dev


def test_test_split_is_refused_unless_forced(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--split test"):
        refuse_test_split("test", force=False)
    refuse_test_split("test", force=True)
    code = main(["finetune", "mine", "unused.yaml", "--dataset", str(tmp_path), "--split", "test", "--out", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "--split test" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()


# -- training files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        ({"query": "q", "pos": ["a"]}, "missing key 'neg'"),
        ({"pos": ["a"], "neg": []}, "missing key 'query'"),
        ({"query": "q", "pos": [], "neg": ["b"]}, "'pos' is empty"),
        ({"query": "q", "pos": ["a", "b"], "neg": ["c", "b"]}, "a negative equals a positive"),
        ({"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [1.0], "neg_scores": []}, "'neg_scores' must be a list of 1"),
        ("not json", "invalid JSON"),
    ],
)
def test_a_bad_training_line_is_one_error_naming_the_line(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"query": "fine", "pos": ["x"], "neg": ["y"]})
    bad = line if isinstance(line, str) else json.dumps(line)
    path.write_text(f"{good}\n\n{bad}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_training_file(path)
    text = str(caught.value)
    assert f"{path}: line 3: " in text and message in text and "\n" not in text


def test_training_files_round_trip_in_flag_embedding_format(tmp_path):
    examples = toy_examples(3)
    examples[0].pos_scores, examples[0].neg_scores = [0.9], [0.5, 0.4, 0.3]
    path = write_training_file(examples, tmp_path / "t.jsonl")
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"query", "pos", "neg", "pos_scores", "neg_scores"}
    assert read_training_file(path) == examples


# -- mining ----------------------------------------------------------------------------------------


def test_mining_takes_the_rank_window_of_the_served_first_stage_and_never_a_positive(tmp_path, tiny_bge_dir):
    dataset = load_beir(write_toy_beir(tmp_path / "toy"), split="train")
    config = toy_config(tmp_path, tiny_bge_dir)
    examples = mine_hard_negatives(config, dataset, window=MiningWindow(2, 9), show_progress=False)
    run = evaluate(config, dataset, depth=9, show_progress=False).runs["first_stage"]
    text = {doc: dataset.document_text(d) for doc, d in dataset.corpus.items()}
    assert [e.query_id for e in examples] == list(dataset.queries)
    for example in examples:
        relevant = {doc for doc, grade in dataset.qrels[example.query_id].items() if grade > 0}
        ranked = sorted(run[example.query_id].items(), key=lambda item: (item[1], item[0]), reverse=True)
        window = [text[doc] for doc, _ in ranked[2:9] if doc not in relevant]
        assert example.neg == window
        assert example.pos == [text[doc] for doc in sorted(relevant)]
        assert not set(example.neg) & set(example.pos)


def test_the_margin_guard_drops_candidates_close_to_the_positive(tmp_path, tiny_bge_dir):
    dataset = load_beir(write_toy_beir(tmp_path / "toy"), split="train")
    config = toy_config(tmp_path, tiny_bge_dir)
    plain = mine_hard_negatives(config, dataset, window=MiningWindow(0, 16), show_progress=False)
    guarded = mine_hard_negatives(config, dataset, window=MiningWindow(0, 16), margin=0.0, show_progress=False)
    for loose, strict in zip(plain, guarded):
        assert set(strict.neg) <= set(loose.neg)
        if strict.pos_scores is not None:
            assert all(score < min(strict.pos_scores) for score in strict.neg_scores)
    assert sum(len(e.neg) for e in guarded) < sum(len(e.neg) for e in plain)


def blank_document(folder: Path, doc_id: str) -> None:
    """Give one document of a BEIR folder an empty title and text (as some corpora have)."""
    corpus = folder / "corpus.jsonl"
    records = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    for record in records:
        if record["_id"] == doc_id:
            record["title"], record["text"] = "", ""
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_a_judged_document_with_no_text_is_never_mined_as_a_positive(tmp_path, tiny_bge_dir, caplog, monkeypatch):
    """Issue 21, item 15: mining wrote "" as a positive, and training then refused the whole file."""
    folder = write_toy_beir(tmp_path / "toy")
    blank_document(folder, "d3")  # q3's only relevant document
    with (folder / "qrels" / "train.tsv").open("a", encoding="utf-8") as qrels:
        qrels.write("q4\td3\t1\n")  # q4: d4 and the empty d3
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(toy_config(tmp_path, tiny_bge_dir)), encoding="utf-8")
    out = tmp_path / "train.jsonl"
    monkeypatch.setattr(mining_logger, "disabled", False)  # another test may have configured logging
    with caplog.at_level(logging.WARNING, logger=mining_logger.name):
        code = main(["finetune", "mine", str(config), "--dataset", str(folder), "--out", str(out), "--no-dev",
                     "--ranks", "2..9", "-q"])
    assert code == 0
    examples = {e.query_id: e for e in read_training_file(out)}  # training reads what mining wrote
    assert all(text.strip() for e in examples.values() for text in e.pos)
    assert "q3" not in examples and set(examples) == {f"q{i}" for i in range(12)} - {"q3"}
    text = {d.metadata["doc_id"]: d.page_content for d in load_beir(folder, split="train").documents()}
    assert examples["q4"].pos == [text["d4"]]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == mining_logger.name]
    assert "1 judged-relevant document with no text" in warning and "'d3'" in warning
    assert "1 query had no other positive" in warning and "'q3'" in warning


def test_mining_refuses_a_corpus_whose_duplicate_ids_carry_different_texts(tmp_path, capsys):
    folder = write_toy_beir(tmp_path / "toy")
    with (folder / "corpus.jsonl").open("a", encoding="utf-8") as corpus:
        corpus.write(json.dumps({"_id": "d2", "title": "tea", "text": "another tea altogether"}) + "\n")
    out = tmp_path / "train.jsonl"
    code = main(["finetune", "mine", "unused.yaml", "--dataset", str(folder), "--out", str(out), "--no-dev", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "corpus.jsonl: 1 _id is given to more than one document with different text: 'd2' (2 times)" in err
    assert not out.exists()


# -- training --------------------------------------------------------------------------------------


def quick(**extra) -> TrainingSettings:
    return TrainingSettings(**{"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "save_steps": 1,
                               "show_progress": False, "bf16": False, "negatives": 2, **extra})


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("model.safetensors"))))


def test_a_few_embedder_steps_change_the_weights_and_load_with_a_new_identity(tmp_path, tiny_bge_dir):
    from rag_pipeline.embeddings.bge import BgeEmbeddings, BgeEmbeddingsConfig

    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    result = train_embedder(data, str(tiny_bge_dir), tmp_path / "tuned", quick())
    assert result.steps == 2
    before, after = _weights(tiny_bge_dir), _weights(tmp_path / "tuned")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    base = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), show_progress=False))
    tuned = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tmp_path / "tuned"), show_progress=False))
    assert tuned.identity.startswith("sha256:") and tuned.identity != base.identity
    assert tuned.embed_query("bees") != base.embed_query("bees")
    card = read_card(tmp_path / "tuned")
    assert card["base_model"] == str(tiny_bge_dir) and card["steps"] == 2 and card["loss"] == "mnrl"
    assert card["data_sha256"] and card["query_instruction"].startswith("Represent this sentence")


def test_a_shorter_training_length_is_not_saved_as_the_tuned_models_length(tmp_path, tiny_bge_dir):
    from sentence_transformers import SentenceTransformer

    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    base_length = SentenceTransformer(str(tiny_bge_dir), device="cpu").max_seq_length
    train_embedder(data, str(tiny_bge_dir), tmp_path / "tuned", quick(max_length=16))
    assert base_length > 16
    assert SentenceTransformer(str(tmp_path / "tuned"), device="cpu").max_seq_length == base_length
    assert read_card(tmp_path / "tuned")["settings"]["max_length"] == 16  # the card still says how it was trained


def test_resume_continues_where_the_checkpoint_left_off(tmp_path, tiny_bge_dir):
    import shutil

    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    settings = quick(max_steps=4, save_steps=2)
    straight = train_embedder(data, str(tiny_bge_dir), tmp_path / "straight", settings)
    # a run stopped after its first checkpoint: only checkpoints/checkpoint-2 is left
    train_embedder(data, str(tiny_bge_dir), tmp_path / "resumed", settings)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "checkpoint-4")
    (tmp_path / "resumed" / "model.safetensors").unlink()
    resumed = train_embedder(data, str(tiny_bge_dir), tmp_path / "resumed", quick(max_steps=4, save_steps=2, resume=True))
    assert straight.steps == resumed.steps == 4
    assert resumed.card["resumed_from"].endswith("checkpoint-2") and straight.card["resumed_from"] is None
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)
    # the identity is the weights': checkpoints beside them are not part of it
    identity = model_identity(resolve_model(str(tmp_path / "resumed"), what="x"))
    assert identity == model_identity(resolve_model(str(tmp_path / "straight"), what="x"))
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_embedder(data, str(tiny_bge_dir), tmp_path / "never", quick(resume=True))


@pytest.mark.parametrize("loss", ["listwise", "bce"])
def test_a_reranker_trained_from_encoder_weights_loads_as_reranker_model(tmp_path, tiny_bge_dir, loss):
    from rag_pipeline.rerankers.bge_reranker import BgeReranker

    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    result = train_reranker(data, str(tiny_bge_dir), tmp_path / "reranker", quick(), loss=loss)
    assert result.steps == 2
    reranker = BgeReranker(model=str(tmp_path / "reranker"))
    scores = reranker.score("what about bees", ["bees is the answer about bees", "tides is something else"])
    assert len(scores) == 2 and scores[0] != scores[1]
    assert reranker.identity != model_identity(resolve_model(str(tiny_bge_dir), what="x"))
    assert (tmp_path / "reranker" / CARD_FILENAME).is_file()


@pytest.mark.parametrize("head", ["auto", "mean"])
def test_a_reranker_from_a_mean_pooling_encoder_scores_the_mean_token_state(tmp_path, head):
    """all-MiniLM-L6-v2's [CLS] state barely varies, so from a mean-pooling bi-encoder the new
    logit reads the mean of the token states (``auto`` picks it from the base's own pooling)."""
    from rag_pipeline.rerankers.bge_reranker import BgeReranker
    from sentence_transformers import CrossEncoder
    from tests.model_factory import build_tiny_bge

    base = build_tiny_bge(tmp_path / "minilm-shaped", pooling_mode="mean")
    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    result = train_reranker(data, str(base), tmp_path / "reranker", quick(), head=head)
    assert result.card["head"] == "mean"
    modules = [type(m).__name__ for m in CrossEncoder(str(tmp_path / "reranker"), device="cpu")]
    assert modules == ["Transformer", "Pooling", "Dense"]
    reranker = BgeReranker(model=str(tmp_path / "reranker"))
    scores = reranker.score("what about bees", ["bees is the answer about bees", "tides is something else"])
    assert len(scores) == 2 and scores[0] != scores[1]


def test_a_listwise_reranker_can_train_on_each_querys_own_list_only(tmp_path, tiny_bge_dir):
    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    result = train_reranker(data, str(tiny_bge_dir), tmp_path / "own-lists", quick(), in_batch_negatives=0)
    assert result.steps == 2 and result.card["in_batch_negatives"] == 0
    before = _weights(tiny_bge_dir)
    after = {name.removeprefix("bert."): tensor for name, tensor in _weights(tmp_path / "own-lists").items()}
    shared = [name for name in before if name in after]
    assert shared and any(not torch.equal(before[name], after[name]) for name in shared)
    with pytest.raises(ConfigError, match="--in-batch-negatives"):  # before a model is loaded
        train_reranker(data, "no/such-model", tmp_path / "never", quick(), in_batch_negatives=-1)


def test_a_reranker_from_a_cls_pooling_encoder_keeps_the_classification_head(tmp_path, tiny_bge_dir):
    from sentence_transformers import CrossEncoder

    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    result = train_reranker(data, str(tiny_bge_dir), tmp_path / "reranker", quick())
    assert result.card["head"] == "cls"
    assert [type(m).__name__ for m in CrossEncoder(str(tmp_path / "reranker"), device="cpu")] == ["Transformer"]


def test_the_cli_reports_a_bad_training_file_in_one_line_before_loading_a_model(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["same"], "neg": ["same"]}) + "\n", encoding="utf-8")
    for kind in ("embedder", "reranker"):
        code = main(["finetune", kind, "--data", str(data), "--base", "no/such-model", "--out", str(tmp_path / kind)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == f"error: {data}: line 1: a negative equals a positive ('same'); drop it from 'neg'"
        assert not (tmp_path / kind).exists()


def test_lora_adapters_are_merged_into_a_plain_folder(tmp_path, tiny_bge_dir):
    from rag_pipeline.embeddings.bge import BgeEmbeddings, BgeEmbeddingsConfig

    data = write_training_file(toy_examples(), tmp_path / "train.jsonl")
    train_embedder(data, str(tiny_bge_dir), tmp_path / "lora", quick(), lora_rank=4)
    assert not list((tmp_path / "lora").glob("adapter_*"))
    before, after = _weights(tiny_bge_dir), _weights(tmp_path / "lora")
    assert set(before) == set(after)  # no lora_A / lora_B tensors left: merged
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all(any(p in name for p in ("query", "key", "value")) for name in changed)
    tuned = BgeEmbeddings(BgeEmbeddingsConfig(model=str(tmp_path / "lora"), show_progress=False))
    assert len(tuned.embed_query("bees")) == 32
