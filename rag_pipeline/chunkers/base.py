"""What every chunker shares: deterministic chunk ids and chunk metadata."""

from __future__ import annotations

import hashlib
from typing import Iterable

from langchain_core.documents import Document


def chunk_id(doc_id: str, index: int, content: str) -> str:
    """Same source, position and text -> same id, on every machine and every run.

    This is what makes re-ingesting idempotent (an upsert by id) and lets a changed chunk
    get a new id while its unchanged neighbours keep theirs.
    """
    digest = hashlib.sha256(f"{doc_id}\x1f{index}\x1f{content}".encode("utf-8")).hexdigest()
    return digest[:32]


class Chunker:
    """Base class: subclasses implement ``split_text`` (text -> [(text, start_index)])."""

    def split_text(self, text: str) -> list[tuple[str, int]]:
        raise NotImplementedError

    def split_documents(self, documents: Iterable[Document]) -> list[Document]:
        chunks = []
        for document in documents:
            doc_id = document.metadata.get("doc_id") or document.metadata.get("source", "")
            for index, (text, start) in enumerate(self.split_text(document.page_content)):
                if not text.strip():
                    continue
                identifier = chunk_id(doc_id, index, text)
                metadata = {**document.metadata, "chunk_index": index, "start_index": start, "chunk_id": identifier}
                chunks.append(Document(page_content=text, metadata=metadata, id=identifier))
        return chunks


def _start_indices(text: str, pieces: list[str]) -> list[tuple[str, int]]:
    """Locate each piece in the text, searching forward from the previous one (pieces overlap)."""
    located, cursor = [], 0
    for piece in pieces:
        start = text.find(piece, cursor)
        if start < 0:
            start = text.find(piece)
        located.append((piece, start))
        if start >= 0:
            cursor = start + 1
    return located
