"""BGE-M3 hybrid on a tiny random bge-m3 (XLM-R with the colbert_linear / sparse_linear heads):
ingest stores all three outputs, a new Pipeline combines them, and every score agrees with
FlagEmbedding's own ``BGEM3FlagModel.compute_score``."""

from __future__ import annotations

import os
import sqlite3
import time

import numpy as np
import pytest

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.config import load_config
from rag_pipeline.contracts import Embedder, LexicalIndex
from rag_pipeline.errors import ConfigError
from rag_pipeline.lexical.bm25 import STORE_FILENAME

pytest.importorskip("FlagEmbedding")

DOCUMENTS = {
    "bees.txt": "Honey bees dance to tell the hive where flowers are.",
    "tides.txt": "Tides rise and fall twice a day, pulled by the moon.",
    "tea.txt": "Green tea is steeped at 80 degrees for two minutes.",
    "kites.txt": "Kites fly on windy beaches in the autumn.",
}
# Dense and ColBERT vectors are compared as stored: dense in float32 (Chroma), ColBERT in float16
# (the sparse index), so ColBERT scores (means of cosines) carry float16 rounding: < 2e-3.
DENSE_TOLERANCE = 1e-5
SPARSE_TOLERANCE = 1e-5
COLBERT_TOLERANCE = 2e-3


def write(root, name, text, age=3600):
    path = root / name
    path.write_text(text, encoding="utf-8")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def m3_config(corpus, index, model, **retriever):
    return pipeline_config(
        corpus, index, str(model),
        chunker={"type": "none"},
        embeddings={"type": "bge-m3", "model": str(model), "show_progress": False, "batch_size": 16},
        lexical={"type": "m3-sparse"},
        retriever={"type": "bge-m3", "k": 10, "fetch_k": 10, "search": "exact", "depth": 10, **retriever},
    )


@pytest.fixture(scope="module")
def reference(tiny_bge_m3_dir):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(tiny_bge_m3_dir), use_fp16=False, devices="cpu", query_max_length=512, passage_max_length=512)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for name, text in DOCUMENTS.items():
        write(root, name, text)
    return root


def m3_rows(index_dir):
    path = index_dir / "lexical" / "test" / STORE_FILENAME
    with sqlite3.connect(path) as connection:
        return {row[0]: row[1:] for row in connection.execute("SELECT id, tokens, weights, colbert, dimension FROM m3")}


def rare_word(tokenizer, texts):
    """A whole-word token of the tiny vocabulary that none of ``texts`` contains."""
    used = {token for text in texts for token in tokenizer(text)["input_ids"]}
    for piece, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: (-len(item[0]), item[0])):
        word = piece.removeprefix("\u2581")
        if piece.startswith("\u2581") and word.isalpha() and len(word) >= 4 and token_id not in used:
            if tokenizer(word, add_special_tokens=False)["input_ids"] == [token_id]:
                return word, token_id
    raise AssertionError("no unused whole-word token in the tiny vocabulary")


def test_ingest_stores_all_three_outputs_and_a_new_pipeline_combines_them(corpus, tmp_path, tiny_bge_m3_dir, reference):
    config = m3_config(corpus, tmp_path / "index", tiny_bge_m3_dir)
    Pipeline.from_config(config).ingest()

    fresh = Pipeline.from_config(config)  # another process: everything read back from disk
    ids = fresh.store.ids()
    assert len(ids) == 4 and fresh.lexical.ids() == ids
    assert isinstance(fresh.lexical, LexicalIndex) and isinstance(fresh.embeddings, Embedder)
    rows = m3_rows(tmp_path / "index")
    assert set(rows) == ids
    for chunk_id, (tokens, weights, colbert, dimension) in rows.items():
        text = fresh.store.documents([chunk_id])[0].page_content
        expected = reference.encode([text], return_dense=True, return_sparse=True, return_colbert_vecs=True)
        assert dict(zip(np.frombuffer(tokens, np.int32).tolist(), np.frombuffer(weights, np.float32))) == pytest.approx(
            {int(t): float(w) for t, w in expected["lexical_weights"][0].items()}, abs=SPARSE_TOLERANCE
        )
        stored = np.frombuffer(colbert, np.float16).reshape(-1, dimension)
        np.testing.assert_allclose(stored, expected["colbert_vecs"][0], atol=1e-3)
        np.testing.assert_allclose(fresh.store.vectors([chunk_id])[0], expected["dense_vecs"][0], atol=DENSE_TOLERANCE)

    found = fresh.as_retriever().invoke("when do the tides rise?")
    assert {d.id for d in found} == ids  # depth 10 covers all four: each is rescored
    for document in found:
        m = document.metadata
        assert m["score"] == pytest.approx(0.4 * m["dense_score"] + 0.2 * m["sparse_score"] + 0.4 * m["colbert_score"])
    assert [d.metadata["score"] for d in found] == sorted((d.metadata["score"] for d in found), reverse=True)


@pytest.mark.parametrize("weights", [None, {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}])  # the second sums to 2.3
def test_scores_agree_with_flagembedding_compute_score(corpus, tmp_path, tiny_bge_m3_dir, reference, weights):
    config = m3_config(corpus, tmp_path / "index", tiny_bge_m3_dir, **({"weights": weights} if weights else {}))
    Pipeline.from_config(config).ingest()
    query = "green tea and honey bees"
    found = Pipeline.from_config(config).as_retriever().invoke(query)
    assert len(found) == 4
    modes = [0.4, 0.2, 0.4] if weights is None else [weights["dense"], weights["sparse"], weights["colbert"]]
    expected = reference.compute_score([(query, d.page_content) for d in found], weights_for_different_modes=modes)
    ours = {name: [d.metadata[f"{name}_score"] for d in found] for name in ("dense", "sparse", "colbert")}
    np.testing.assert_allclose(ours["dense"], expected["dense"], atol=DENSE_TOLERANCE)
    np.testing.assert_allclose(ours["sparse"], expected["sparse"], atol=SPARSE_TOLERANCE)
    np.testing.assert_allclose(ours["colbert"], expected["colbert"], atol=COLBERT_TOLERANCE)
    np.testing.assert_allclose([d.metadata["score"] for d in found], expected["colbert+sparse+dense"], atol=COLBERT_TOLERANCE)


def test_an_exact_match_query_finds_its_document_through_the_sparse_arm(corpus, tmp_path, tiny_bge_m3_dir, reference):
    word, token_id = rare_word(reference.tokenizer, DOCUMENTS.values())
    write(corpus, "rare.txt", f"The field notes mention {word} once.")
    config = m3_config(corpus, tmp_path / "index", tiny_bge_m3_dir)
    Pipeline.from_config(config).ingest()
    retriever = Pipeline.from_config(config).as_retriever()
    hits = retriever.path.arm_path(1).first_stage([word], 5)[0]  # the sparse arm alone
    assert [d.metadata["source"].endswith("rare.txt") for d in hits] == [True]  # the only chunk sharing the token
    assert hits[0].metadata["score"] > 0
    assert token_id in np.frombuffer(m3_rows(tmp_path / "index")[hits[0].id][0], np.int32)

    # Combined, the random dense and ColBERT scores decide the order; the sparse score still
    # singles the document out, and weighted alone it puts it first.
    combined = {d.metadata["source"].rsplit("/", 1)[-1]: d.metadata for d in retriever.invoke(word)}
    assert combined["rare.txt"]["sparse_rank"] == 1 and combined["rare.txt"]["sparse_score"] > 0
    assert all(m["sparse_score"] == 0 for name, m in combined.items() if name != "rare.txt")
    sparse_only = m3_config(corpus, tmp_path / "index", tiny_bge_m3_dir, k=1, weights={"dense": 0, "sparse": 1, "colbert": 0})
    assert Pipeline.from_config(sparse_only).as_retriever().invoke(word)[0].metadata["source"].endswith("rare.txt")


def test_ingest_twice_adds_nothing(corpus, tmp_path, tiny_bge_m3_dir):
    config = m3_config(corpus, tmp_path / "index", tiny_bge_m3_dir)
    Pipeline.from_config(config).ingest()
    before = m3_rows(tmp_path / "index")
    pipe = Pipeline.from_config(config)
    version = pipe.lexical._store().version()
    report = pipe.ingest()
    assert (report.added, report.files_unchanged) == (0, 4)
    assert pipe.lexical._store().version() == version  # not one write to the sparse store
    assert m3_rows(tmp_path / "index") == before


def test_a_changed_file_updates_all_three_stores(corpus, tmp_path, tiny_bge_m3_dir, reference):
    config = m3_config(corpus, tmp_path / "index", tiny_bge_m3_dir)
    Pipeline.from_config(config).ingest()
    old_ids = Pipeline.from_config(config).store.ids()

    write(corpus, "tea.txt", "Black tea is brewed with boiling water for four minutes.")
    report = Pipeline.from_config(config).ingest()
    assert report.files_updated == 1

    fresh = Pipeline.from_config(config)
    ids = fresh.store.ids()
    rows = m3_rows(tmp_path / "index")
    assert fresh.lexical.ids() == ids == set(rows) and len(ids) == 4
    (new_id,) = ids - old_ids
    assert len(old_ids - ids) == 1
    text = fresh.lexical.documents([new_id])[0].page_content
    assert text.startswith("Black tea")
    expected = reference.encode([text], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    tokens, weights, colbert, dimension = rows[new_id]
    assert set(np.frombuffer(tokens, np.int32).tolist()) == {int(t) for t in expected["lexical_weights"][0]}
    np.testing.assert_allclose(np.frombuffer(colbert, np.float16).reshape(-1, dimension), expected["colbert_vecs"][0], atol=1e-3)
    np.testing.assert_allclose(fresh.store.vectors([new_id])[0], expected["dense_vecs"][0], atol=DENSE_TOLERANCE)
    assert fresh.as_retriever().invoke("black tea")[0].id in ids


def test_bge_m3_refuses_a_query_instruction(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(
            {"loader": {"path": "."}, "embeddings": {"type": "bge-m3", "query_instruction": "Represent: "}},
            base_dir=tmp_path,
        )
    message = str(error.value)
    assert "\n" not in message and "embeddings.query_instruction" in message and "no query instruction" in message


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"lexical": {"type": "m3-sparse"}}, "lexical.type: m3-sparse holds BGE-M3's own outputs; set embeddings.type: bge-m3"),
        (
            {"lexical": {"type": "m3-sparse"}, "retriever": {"type": "bge-m3"}},
            "lexical.type: m3-sparse holds BGE-M3's own outputs; set embeddings.type: bge-m3",
        ),
        (
            {"embeddings": {"type": "bge-m3"}, "lexical": {"type": "bm25"}, "retriever": {"type": "bge-m3"}},
            "retriever.type: bge-m3 needs BGE-M3's sparse index; set lexical: {type: m3-sparse}",
        ),
        ({"embeddings": {"type": "bge-m3"}, "retriever": {"type": "bge-m3"}}, "retriever.type: bge-m3 needs BGE-M3's sparse index"),
    ],
)
def test_bge_m3_stages_refuse_other_stage_types_when_the_config_is_validated(tmp_path, sections, message):
    with pytest.raises(ConfigError) as error:
        load_config({"loader": {"path": "."}, "embeddings": {"type": "bge"}, **sections}, base_dir=tmp_path)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_dense_only_encode_of_a_whole_corpus_keeps_no_colbert_vectors(tiny_bge_m3_dir, reference, monkeypatch):
    from rag_pipeline.embeddings.bge_m3 import KEEP_OUTPUTS_UP_TO, BgeM3Embeddings, BgeM3EmbeddingsConfig

    embedder = BgeM3Embeddings(BgeM3EmbeddingsConfig(model=str(tiny_bge_m3_dir), show_progress=False))
    asked = []
    encode_corpus = embedder.client.encode_corpus
    monkeypatch.setattr(
        embedder.client, "encode_corpus", lambda texts, **kw: asked.append(kw["return_colbert_vecs"]) or encode_corpus(texts, **kw)
    )
    texts = [f"passage {i} about tides and bees" for i in range(KEEP_OUTPUTS_UP_TO + 1)]
    dense = embedder.encode(texts)
    assert asked == [False]  # a whole corpus: dense vectors only
    np.testing.assert_allclose(dense, reference.encode(texts)["dense_vecs"], atol=DENSE_TOLERANCE)
    embedder.encode(texts[:3])
    assert asked == [False, True]  # an ingest batch: all three outputs, kept for the sparse index


def test_the_shipped_config_validates_offline(repo_root):
    config = load_config(repo_root / "configs" / "bge-m3-hybrid.yaml")
    assert (config.embeddings.type, config.lexical.type, config.retriever.type) == ("bge-m3", "m3-sparse", "bge-m3")
    assert (config.retriever.weights.dense, config.retriever.weights.sparse, config.retriever.weights.colbert) == (0.4, 0.2, 0.4)


def test_reindex_gives_all_three_stores_a_new_generation(corpus, tmp_path, tiny_bge_m3_dir):
    config = m3_config(corpus, tmp_path / "index", tiny_bge_m3_dir)
    pipe = Pipeline.from_config(config)
    pipe.ingest()
    before = pipe.as_retriever().invoke("honey bees")
    old = pipe.store.collection_name
    Pipeline.from_config(config).reindex()
    fresh = Pipeline.from_config(config)
    assert fresh.store.collection_name != old == "test"
    assert fresh.lexical.collection_name == fresh.store.collection_name
    assert fresh.lexical.ids() == fresh.store.ids() and len(fresh.store.ids()) == 4
    after = fresh.as_retriever().invoke("honey bees")
    assert [(d.id, round(d.metadata["score"], 4)) for d in after] == [(d.id, round(d.metadata["score"], 4)) for d in before]


def test_int8_is_refused_for_bge_m3_in_one_line():
    from pathlib import Path

    from rag_pipeline.config import validate_config

    with pytest.raises(ConfigError, match=r"embeddings.precision.*int8 is offered for the bge type only"):
        validate_config({"loader": {"path": "."}, "embeddings": {"type": "bge-m3", "precision": "int8"}}, Path("."))
