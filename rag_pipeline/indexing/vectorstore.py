"""The index as a LangChain ``VectorStore`` whose writes go through the index record.

``pipe.vectorstore`` (``Pipeline.as_vectorstore()``): ``add_documents``/``add_texts`` store each
document as one entry under its id (LangChain's contract: the caller splits; the same id again
overwrites), ``delete(ids)`` removes entries, ``get_by_ids`` reads them back, and the searches ask
the configured vector index. Every write takes the index's write lock and is recorded as a source
added from code, so the next ``ingest`` keeps it. The async methods are LangChain's defaults (the
sync ones in a worker thread).
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, ContextManager, Iterable, Sequence

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.indexing.base import DeleteResponse, DocumentIndex, UpsertResponse
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from pydantic import ConfigDict

from ..contracts import Filter, VectorIndex
from .documents import DocumentWriter


def _holds_anything(index: VectorIndex) -> bool:
    """Whether the index exists, asked without creating it (a read never creates an index folder)."""
    return index.index_exists() and index.exists()


def _without_score(hit: Document) -> tuple[Document, float]:
    metadata = dict(hit.metadata)
    score = float(metadata.pop("score"))
    return Document(page_content=hit.page_content, metadata=metadata, id=hit.id), score


class IndexedVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over a pipeline's index; build it with ``Pipeline.as_vectorstore()``.

    ``index`` returns the vector index serving now, ``writes`` opens a locked write session.
    Scores are the index's similarities (cosine for ``distance: cosine``), higher is better.
    """

    def __init__(
        self,
        embeddings: Embeddings,
        index: Callable[[], VectorIndex],
        writes: Callable[[], ContextManager[DocumentWriter]],
    ):
        self._embeddings = embeddings
        self._index = index
        self._writes = writes
        self._seen_index = False  # once it exists it stays (a reindex switches to a complete one)

    @property
    def embeddings(self) -> Embeddings:
        return self._embeddings

    # -- writes --------------------------------------------------------------------------------------
    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None)
        if ids is not None and len(ids) != len(documents):
            raise ValueError(f"{len(ids)} ids for {len(documents)} documents")
        ids = [
            str(ids[n] if ids is not None and ids[n] is not None else document.id or uuid.uuid4())
            for n, document in enumerate(documents)
        ]
        # Copies: the caller's documents are not given ids behind their back.
        entries = [
            Document(page_content=d.page_content, metadata=dict(d.metadata), id=i) for d, i in zip(documents, ids)
        ]
        if entries:
            with self._writes() as writer:
                writer.upsert_entries(entries)
        return ids

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None, **kwargs: Any
    ) -> list[str]:
        texts = list(texts)
        metadatas = metadatas or [{} for _ in texts]
        return self.add_documents(
            [Document(page_content=t, metadata=dict(m)) for t, m in zip(texts, metadatas)], ids=ids, **kwargs
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if ids is None:
            raise ValueError("delete needs the ids to delete (Pipeline.delete(source=...) removes a whole source)")
        if ids:
            with self._writes() as writer:
                writer.delete_ids([str(i) for i in ids])
        return True

    # -- reads ---------------------------------------------------------------------------------------
    def _holds_anything(self, index: VectorIndex) -> bool:
        # Asked once per store, not per query: listing Chroma's collections costs as much as a search.
        if not self._seen_index:
            self._seen_index = _holds_anything(index)
        return self._seen_index

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        index = self._index()
        if not ids or not self._holds_anything(index):
            return []
        held = index.existing_ids(list(ids))
        return index.documents([i for i in dict.fromkeys(ids) if i in held])

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        index = self._index()
        if not self._holds_anything(index):
            return []
        hits = index.search_batch(np.asarray([embedding], dtype=np.float32), k, filter)[0]
        return [_without_score(hit) for hit in hits]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(self._embeddings.embed_query(query), k, filter)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    def similarity_search(self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, filter)]

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: Filter | None = None, **kwargs: Any,
    ) -> list[Document]:
        index = self._index()
        if not self._holds_anything(index):
            return []
        hits = [hit for hit, _ in self.similarity_search_with_score_by_vector(embedding, fetch_k, filter)]
        if not hits:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32), index.vectors([hit.id for hit in hits]), lambda_mult=lambda_mult, k=k
        )
        return [hits[i] for i in chosen]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: Filter | None = None, **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self._embeddings.embed_query(query), k, fetch_k, lambda_mult, filter
        )

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # The scores are similarities already (1 - Chroma's cosine distance), as LangChain's own
        # cosine relevance function would make them.
        return lambda score: score

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, **kwargs: Any):
        raise TypeError(
            "IndexedVectorStore is the index of a configured pipeline: use Pipeline.from_yaml(...).as_vectorstore(), "
            "then add_texts(...)"
        )


class IndexedDocumentIndex(DocumentIndex):
    """The same recorded index as LangChain's (beta) ``DocumentIndex``: ``upsert``/``delete``/``get``
    by document id, and a retriever of the ``k`` nearest entries. Build it with
    ``Pipeline.as_document_index()``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: IndexedVectorStore
    k: int = 4

    def upsert(self, items: Sequence[Document], /, **kwargs: Any) -> UpsertResponse:
        return {"succeeded": self.store.add_documents(list(items)), "failed": []}

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> DeleteResponse:
        if ids is None:
            raise ValueError("delete needs the ids to delete")
        held = [document.id for document in self.store.get_by_ids(ids)]
        self.store.delete(ids)
        return {"num_deleted": len(held), "succeeded": held, "num_failed": 0, "failed": []}

    def get(self, ids: Sequence[str], /, **kwargs: Any) -> list[Document]:
        return self.store.get_by_ids(ids)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.store.similarity_search(query, self.k)
