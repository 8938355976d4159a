"""The evaluation engine on a tiny BEIR folder with tiny random BGE-shaped models (code paths).

Quality is proven by the SciFact tests; these prove that the run the metrics see is the right
one: exact first-stage order, best-chunk document scores, reranking, isolation and caching.
The ranking checks use the real all-MiniLM-L6-v2: the tiny random model gives every pair a
cosine of 0.99999x, so its order is decided by float noise.
"""

import json

import numpy as np
import pytest

from conftest import MINILM, pipeline_config
from eval_helpers import write_beir
from rag_pipeline.evaluation import METRICS, evaluate, load_beir


@pytest.fixture
def dataset(tmp_path):
    return load_beir(write_beir(tmp_path / "tiny"))


def _config(tmp_path, model, **sections):
    config = pipeline_config(tmp_path, tmp_path / "index", str(model), chunker={"type": "none"}, **sections)
    config["loader"]["show_progress"] = False
    return config


def _exact_doc_scores(pipe_embeddings, dataset, chunks):
    """Brute force: cosine of each query with each chunk, a document's score its best chunk's."""
    queries = pipe_embeddings.embed_queries(list(dataset.queries.values()))
    passages = pipe_embeddings.encode([c.page_content for c in chunks], show_progress=False)
    similarity = queries @ passages.T
    scores = []
    for row in similarity:
        best = {}
        for chunk, value in zip(chunks, row):
            doc = chunk.metadata["doc_id"]
            best[doc] = max(best.get(doc, -np.inf), float(value))
        scores.append(best)
    return dict(zip(dataset.queries, scores))


def test_first_stage_is_the_exact_ranking_and_json_has_the_agreed_shape(tmp_path, dataset):
    result = evaluate(_config(tmp_path, MINILM), dataset, show_progress=False)
    from rag_pipeline import Pipeline

    pipe = Pipeline.from_config(_config(tmp_path, MINILM))
    chunks = pipe.chunker.split_documents(dataset.documents())
    exact = _exact_doc_scores(pipe.embeddings, dataset, chunks)
    for query_id, scores in exact.items():
        run = result.runs["first_stage"][query_id]
        assert list(run) == sorted(scores, key=scores.get, reverse=True)  # all 8 documents, best first
        assert [run[d] for d in run] == pytest.approx([scores[d] for d in run], abs=1e-5)

    payload = json.loads(result.write_json(tmp_path / "out" / "eval.json").read_text())
    assert list(payload) == ["metrics", "config", "dataset", "timings", "versions"]
    assert list(payload["metrics"]) == ["first_stage", "final"]
    assert payload["metrics"]["first_stage"]["recall@10"] == 1.0  # 8 documents: all are in the top 10
    assert payload["metrics"]["first_stage"]["ndcg@10"] > 0.9  # MiniLM finds bees, tides, tea
    for stage in ("first_stage", "final"):
        assert list(payload["metrics"][stage]) == list(METRICS)
        assert all(0.0 <= v <= 1.0 for v in payload["metrics"][stage].values())
    assert payload["metrics"]["final"] == payload["metrics"]["first_stage"]  # no reranker
    assert payload["dataset"]["queries"] == 3 and payload["dataset"]["documents"] == 8
    assert payload["config"]["evaluation"]["collection"] == "test-eval-tiny"
    assert payload["timings"]["index"]["embedded"] == 8
    assert payload["versions"]["pytrec-eval-terrier"]
    assert "first stage" in result.table() and "ndcg@10" in result.table()


@pytest.mark.parametrize("search", ["exact", "ann"])
def test_a_documents_score_is_its_best_chunks(tmp_path, dataset, search):
    # ann: Chroma's HNSW, exact on 8 documents; it must fetch more chunks until 5 documents are seen
    config = _config(tmp_path, MINILM)
    config["chunker"] = {"type": "recursive", "chunk_size": 40, "chunk_overlap": 0}
    result = evaluate(config, dataset, depth=5, search=search, show_progress=False)
    assert result.config["evaluation"]["search"] == search
    from rag_pipeline import Pipeline

    pipe = Pipeline.from_config(config)
    chunks = pipe.chunker.split_documents(dataset.documents())
    assert len(chunks) >= 2 * len(dataset.corpus)  # several chunks per document
    assert result.timings["index"]["chunks"] == len(chunks)
    for query_id, scores in _exact_doc_scores(pipe.embeddings, dataset, chunks).items():
        run = result.runs["first_stage"][query_id]
        assert list(run) == sorted(scores, key=scores.get, reverse=True)[:5]  # depth documents, not chunks
        assert [run[d] for d in run] == pytest.approx([scores[d] for d in run], abs=1e-5)


@pytest.mark.parametrize("search", ["exact", "ann"])
def test_reranker_reorders_the_top_fetch_k_and_keeps_the_tail(tmp_path, dataset, tiny_reranker_dir, search):
    config = _config(
        tmp_path, MINILM,
        reranker={"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"},
        retriever={"type": "dense", "k": 3, "fetch_k": 5},
    )
    result = evaluate(config, dataset, search=search, show_progress=False)
    assert result.reranked and result.config["evaluation"]["rerank_depth"] == 5
    from rag_pipeline import Pipeline

    pipe = Pipeline.from_config(config)
    texts = {d.metadata["doc_id"]: d.page_content for d in dataset.documents()}
    for query_id, query in dataset.queries.items():
        first = list(result.runs["first_stage"][query_id])
        logits = pipe.reranker.score(query, [texts[d] for d in first[:5]])
        expected = [first[i] for i in np.argsort(-np.asarray(logits), kind="stable")] + first[5:]
        assert list(result.runs["final"][query_id]) == expected
    assert set(result.metrics) == {"first_stage", "final"}
    assert "final" in result.table()


def test_eval_uses_its_own_collection_and_the_embedding_cache(tmp_path, dataset, tiny_bge_dir):
    config = _config(tmp_path, tiny_bge_dir)
    first = evaluate(config, dataset, show_progress=False)
    again = evaluate(config, dataset, show_progress=False)
    assert again.timings["index"]["already_indexed"] == 8 and again.timings["index"]["embedded"] == 0
    assert again.metrics == first.metrics

    from rag_pipeline import Pipeline

    store = Pipeline.from_config(config).store
    names = {c if isinstance(c, str) else c.name for c in store.client.list_collections()}
    assert names == {"test-eval-tiny"}  # the user's collection "test" was never created
    store.client.delete_collection("test-eval-tiny")
    rebuilt = evaluate(config, dataset, show_progress=False)
    assert rebuilt.timings["index"]["embedded"] == 0 and rebuilt.timings["index"]["from_cache"] == 8
    assert rebuilt.metrics == first.metrics


def test_subsets_share_one_collection_that_holds_exactly_the_subset(tmp_path, dataset, tiny_bge_dir):
    config = _config(tmp_path, tiny_bge_dir)
    from rag_pipeline import Pipeline

    for seed in (0, 1, 2):
        small = dataset.subset_of(max_queries=1, distractors=2, seed=seed)
        result = evaluate(config, small, show_progress=False)
        collection = Pipeline.from_config(config).store.client.get_collection("test-eval-tiny-subset")
        stored = {m["doc_id"] for m in collection.get(include=["metadatas"])["metadatas"]}
        assert stored == set(small.corpus)
        assert set(result.runs["first_stage"]["q2"]) == set(small.corpus)


def test_another_model_rebuilds_the_eval_collection(tmp_path, dataset, tiny_bge_dir, tiny_bge_other_dir):
    evaluate(_config(tmp_path, tiny_bge_dir), dataset, show_progress=False)
    other = evaluate(_config(tmp_path, tiny_bge_other_dir), dataset, show_progress=False)
    assert other.timings["index"]["embedded"] == 8  # not refused, and no vectors of the first model mixed in


def test_other_weights_in_a_folder_of_the_same_name_are_evaluated_on_their_own_vectors(
    tmp_path, dataset, tiny_bge_dir, tiny_bge_same_name_dir
):
    first = evaluate(_config(tmp_path, tiny_bge_dir), dataset, show_progress=False)
    other = evaluate(_config(tmp_path, tiny_bge_same_name_dir), dataset, show_progress=False)
    assert other.timings["index"]["embedded"] == 8  # neither the first model's collection nor its cache
    assert other.runs["first_stage"] != first.runs["first_stage"]


@pytest.fixture
def self_retrieving(tmp_path):
    """ArguAna-like: the query "bees" is the corpus document "bees" itself; "q3" is judged only grade 0."""
    folder = write_beir(tmp_path / "selfish")
    bees = "Bees Honey bees dance to tell the hive where the flowers are."
    (folder / "queries.jsonl").write_text(
        json.dumps({"_id": "bees", "text": bees}) + "\n" + json.dumps({"_id": "q3", "text": "green tea"}) + "\n"
    )
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nbees\tmoon\t1\nq3\tcoffee\t0\n")
    return load_beir(folder)


@pytest.mark.parametrize("reranked", [False, True])
def test_a_query_never_retrieves_its_own_id_and_keeps_depth_documents(tmp_path, self_retrieving, tiny_reranker_dir, reranked):
    sections = {"reranker": {"type": "bge-reranker", "model": str(tiny_reranker_dir), "device": "cpu"}} if reranked else {}
    config = _config(tmp_path, MINILM, **sections)
    kept = evaluate(config, self_retrieving, depth=4, ignore_identical_ids=False, show_progress=False)
    assert list(kept.runs["first_stage"]["bees"])[0] == "bees"  # its own text: rank 1
    assert kept.config["evaluation"]["ignore_identical_ids"] is False

    result = evaluate(config, self_retrieving, depth=3, show_progress=False)  # BEIR's default: dropped
    assert result.config["evaluation"]["ignore_identical_ids"] is True
    for stage in ("first_stage", "final"):
        run = result.runs[stage]["bees"]
        assert "bees" not in run and len(run) == 3  # searched one deeper, so 3 other documents remain
    assert list(result.runs["first_stage"]["bees"]) == list(kept.runs["first_stage"]["bees"])[1:]
    if reranked:
        assert "bees" in kept.runs["final"]["bees"]
    # "q3" has no relevant document: nDCG 0, averaged in as BEIR does, and reported
    assert result.per_query["first_stage"]["q3"]["ndcg@10"] == 0.0
    assert result.metrics["first_stage"]["ndcg@10"] == pytest.approx(result.per_query["first_stage"]["bees"]["ndcg@10"] / 2)
    assert result.dataset["queries_without_relevant"] == 1
    assert "2 queries (1 with no relevant document, scored 0 as in BEIR)" in result.table()
