"""The built-in stages satisfy the contracts that sync, retrieval and evaluation are written
against (``rag_pipeline.contracts``), so those layers never need a concrete class."""

from conftest import pipeline_config
from rag_pipeline import Pipeline
from rag_pipeline.contracts import Chunker, Embedder, LexicalIndex, Loader, Reranker, VectorIndex


def test_built_in_stages_satisfy_their_contracts(small_corpus, tmp_path, tiny_bge_dir, tiny_reranker_dir):
    config = pipeline_config(small_corpus, tmp_path / "index", str(tiny_bge_dir))
    config["reranker"] = {"model": str(tiny_reranker_dir)}
    config["lexical"] = {"type": "bm25"}
    pipe = Pipeline.from_config(config)
    for stage, contract in (
        (pipe.loader, Loader),
        (pipe.chunker, Chunker),
        (pipe.embeddings, Embedder),
        (pipe.store, VectorIndex),
        (pipe.reranker, Reranker),
        (pipe.lexical, LexicalIndex),
    ):
        assert isinstance(stage, contract), f"{type(stage).__name__} does not satisfy {contract.__name__}"
    # ...and for the token chunker, which the quickstart uses
    tokens = Pipeline.from_config(config, overrides={"chunker": {"type": "tokens", "chunk_size": 64}})
    assert isinstance(tokens.chunker, Chunker)


def test_the_retriever_reaches_stages_only_through_the_path(small_corpus, tmp_path, tiny_bge_dir):
    pipe = Pipeline.from_config(pipeline_config(small_corpus, None, str(tiny_bge_dir)))
    pipe.ingest()
    retriever = pipe.as_retriever(k=2)
    arm = retriever.path.arms[0]
    assert arm.index is pipe.store and arm.embedder is pipe.embeddings
    assert [d.id for d in retriever.invoke("tides")] == [d.id for d in pipe.store.search("tides", k=2)]
