import pytest
from langchain_core.documents import Document

from rag_pipeline import ConfigError
from rag_pipeline.chunkers import (
    NoChunker,
    RecursiveChunker,
    RecursiveChunkerConfig,
    TokenChunker,
    TokenChunkerConfig,
    chunk_id,
)
from rag_pipeline.embeddings import BgeEmbeddings, BgeEmbeddingsConfig

LONG = " ".join(f"Sentence number {i} talks about tides, bees and sourdough starters." for i in range(200))


def _doc(text, doc_id="notes/a.md"):
    return Document(page_content=text, metadata={"source": doc_id, "doc_id": doc_id})


def test_recursive_chunks_respect_size_and_carry_position():
    chunker = RecursiveChunker(RecursiveChunkerConfig(chunk_size=300, chunk_overlap=30))
    chunks = chunker.split_documents([_doc(LONG)])
    assert len(chunks) > 10
    assert all(len(c.page_content) <= 300 for c in chunks)
    assert [c.metadata["chunk_index"] for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        start = chunk.metadata["start_index"]
        assert LONG[start : start + len(chunk.page_content)] == chunk.page_content
        assert chunk.metadata["source"] == "notes/a.md"


def test_chunk_ids_are_deterministic_and_content_sensitive():
    chunker = RecursiveChunker(RecursiveChunkerConfig(chunk_size=300, chunk_overlap=30))
    first = [c.id for c in chunker.split_documents([_doc(LONG)])]
    second = [c.id for c in chunker.split_documents([_doc(LONG)])]
    assert first == second
    assert len(set(first)) == len(first)
    other_source = [c.id for c in chunker.split_documents([_doc(LONG, "notes/b.md")])]
    assert not set(first) & set(other_source)
    assert chunk_id("a", 0, "x") != chunk_id("a", 0, "y") != chunk_id("a", 1, "y")


def test_none_keeps_one_chunk_per_document():
    docs = [_doc("short one", "a"), _doc(LONG, "b")]
    chunks = NoChunker().split_documents(docs)
    assert [c.page_content for c in chunks] == [d.page_content for d in docs]


@pytest.fixture(scope="module")
def tiny_embeddings(tiny_bge_dir):
    # The tiny model reads at most 128 positions, so long text must be split to fit.
    return BgeEmbeddings(BgeEmbeddingsConfig(model=str(tiny_bge_dir), show_progress=False))


def test_token_chunks_never_exceed_the_models_limit(tiny_embeddings):
    assert tiny_embeddings.max_seq_length == 128
    chunker = TokenChunker(TokenChunkerConfig(chunk_overlap=16), tiny_embeddings)
    # No separators to split on in the middle: the chunker must still cut it to size.
    unbroken = "x" * 3000 + " " + LONG
    chunks = chunker.split_documents([_doc(unbroken)])
    counts = tiny_embeddings.count_tokens([c.page_content for c in chunks])
    assert max(counts) <= 128
    assert max(counts) > 100  # and it uses the budget rather than making tiny chunks


def test_token_chunk_size_over_the_model_limit_is_refused(tiny_embeddings):
    chunker = TokenChunker(TokenChunkerConfig(chunk_size=512, chunk_overlap=16), tiny_embeddings)
    with pytest.raises(ConfigError, match=r"chunker.chunk_size: 512 tokens is over the model's max_seq_length \(128\)"):
        chunker.split_documents([_doc(LONG)])


def test_an_overlap_over_the_models_limit_is_worded_as_config_validation_words_it(tiny_embeddings):
    """The same check, the same type and wording, whether the size is written (validation) or the
    model's limit (``chunk_size: null``, checked once the tokenizer is known)."""
    chunker = TokenChunker(TokenChunkerConfig(chunk_overlap=200), tiny_embeddings)
    with pytest.raises(ConfigError) as caught:
        chunker.split_documents([_doc(LONG)])
    assert str(caught.value) == (
        "chunker.chunk_overlap: chunk_overlap (200) must be smaller than chunk_size (128)"
        " (chunk_size null: the model's max_seq_length)"
    )
