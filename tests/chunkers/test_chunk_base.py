"""What every chunker shares (chunkers/base.py): chunk ids, chunk metadata, start positions."""

import hashlib

from langchain_core.documents import Document

from rag_pipeline.chunkers import Chunker, chunk_id
from rag_pipeline.chunkers.base import _start_indices


class FixedPieces(Chunker):
    """Splits every text into the same given pieces, at the given positions."""

    def __init__(self, pieces):
        self.pieces = pieces

    def split_text(self, text):
        return self.pieces


def test_chunk_id_format_is_stable():
    # Every existing index stores these ids: changing the formula re-embeds every user's corpus.
    expected = hashlib.sha256("notes/a.md\x1f3\x1fsome text".encode("utf-8")).hexdigest()[:32]
    assert chunk_id("notes/a.md", 3, "some text") == expected
    assert chunk_id("é", 0, "ü") == hashlib.sha256("é\x1f0\x1fü".encode("utf-8")).hexdigest()[:32]


def test_chunks_carry_the_documents_metadata_their_position_and_id():
    document = Document(page_content="ignored", metadata={"source": "a.md", "doc_id": "a.md", "title": "T"})
    chunks = FixedPieces([("first", 0), ("second", 7)]).split_documents([document])
    assert [c.page_content for c in chunks] == ["first", "second"]
    assert [c.id for c in chunks] == [chunk_id("a.md", 0, "first"), chunk_id("a.md", 1, "second")]
    assert chunks[1].metadata == {
        "source": "a.md", "doc_id": "a.md", "title": "T", "chunk_index": 1, "start_index": 7, "chunk_id": chunks[1].id,
    }
    assert "chunk_index" not in document.metadata  # the document itself is not changed


def test_doc_id_names_the_chunks_and_source_stands_in_when_there_is_none():
    pieces = FixedPieces([("same text", 0)])
    with_doc_id = pieces.split_documents([Document(page_content="x", metadata={"doc_id": "D", "source": "S"})])
    only_source = pieces.split_documents([Document(page_content="x", metadata={"source": "S"})])
    empty_doc_id = pieces.split_documents([Document(page_content="x", metadata={"doc_id": "", "source": "S"})])
    nothing = pieces.split_documents([Document(page_content="x", metadata={})])
    assert with_doc_id[0].id == chunk_id("D", 0, "same text")
    assert only_source[0].id == empty_doc_id[0].id == chunk_id("S", 0, "same text")
    assert nothing[0].id == chunk_id("", 0, "same text")


def test_blank_pieces_are_skipped_without_losing_the_rest_or_renumbering():
    chunks = FixedPieces([("a", 0), ("  \n", 1), ("b", 4)]).split_documents([Document(page_content="x", metadata={"source": "s"})])
    assert [(c.page_content, c.metadata["chunk_index"]) for c in chunks] == [("a", 0), ("b", 2)]


def test_identical_pieces_of_one_document_get_different_ids():
    chunks = FixedPieces([("same", 0), ("same", 5)]).split_documents([Document(page_content="x", metadata={"source": "s"})])
    assert chunks[0].id != chunks[1].id


def test_start_indices_search_forward_from_the_previous_piece():
    assert _start_indices("abab", ["ab", "ab"]) == [("ab", 0), ("ab", 2)]
    assert _start_indices("aaa", ["aa", "aa"]) == [("aa", 0), ("aa", 1)]  # overlapping pieces
    assert _start_indices("xaxa", ["xa", "xa", "a"]) == [("xa", 0), ("xa", 2), ("a", 3)]


def test_start_indices_fall_back_to_the_first_occurrence_then_to_minus_one():
    # "ab" is not after "cd": the piece is still located, at its first occurrence
    assert _start_indices("ab ab cd", ["cd", "ab"]) == [("cd", 6), ("ab", 0)]
    assert _start_indices("abc", ["zz", "bc"]) == [("zz", -1), ("bc", 1)]  # a missing piece does not move the cursor
