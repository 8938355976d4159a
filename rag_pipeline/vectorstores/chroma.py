"""``vectorstore.type: chroma`` — a persistent Chroma collection that knows which model filled it.

The collection's metadata records the embedding fingerprint (model, dimension, normalisation,
query instruction). Opening it with a different one is refused: vectors of two models in one
index are not comparable, and search would go quietly wrong. ``rag-pipeline reindex`` is the fix.

``vectorstore.collection`` is a logical name. The index record beside the collection
(:mod:`rag_pipeline.indexing.record`) maps it to the physical Chroma collection that serves it,
which ``reindex`` swaps when a new one is complete; with no record the two names are the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
from langchain_core.documents import Document
from pydantic import Field

from ..config import ConfigPath, StageConfig
from ..errors import ConfigError, IndexMismatchError
from ..indexing.lock import LOCK_FILENAME
from ..indexing.record import RECORD_FILENAME, IndexRecord
from ..metadata import safe_metadata
from ..registry import register

FINGERPRINT_KEY = "rag_pipeline:embedding_fingerprint"


def build_chroma_store(config: "ChromaStoreConfig", embeddings) -> "ChromaStore":
    return ChromaStore(config, embeddings)


@register("vectorstore", "chroma", build_chroma_store)
class ChromaStoreConfig(StageConfig):
    """A Chroma collection in a local folder (or in memory when ``persist_directory`` is null)."""

    type: Literal["chroma"] = "chroma"
    persist_directory: ConfigPath | None = None
    collection: str = Field("rag_pipeline", min_length=3, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]$")
    distance: Literal["cosine", "ip", "l2"] = "cosine"
    write_batch_size: int = Field(256, gt=0, description="Chunks embedded and written per step.")


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fingerprint_text(fingerprint: dict[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True, ensure_ascii=False)


class ChromaStore:
    """A Chroma collection plus the LangChain ``Chroma`` vector store over it."""

    def __init__(self, config: ChromaStoreConfig, embeddings, collection_name: str | None = None):
        self.config = config
        self.embeddings = embeddings
        self._collection_name = collection_name
        self._client = None
        self._collection = None
        self._vectorstore = None

    @property
    def collection_name(self) -> str:
        """The physical collection: the one the record names active for ``vectorstore.collection``."""
        if self._collection_name is None:
            record = IndexRecord.open_existing(self.record_path)
            active = None
            if record is not None:
                with record:
                    active = record.active_collection(self.config.collection)
            self._collection_name = active or self.config.collection
        return self._collection_name

    def use_collection(self, name: str) -> None:
        """Serve another physical collection from now on (after a reindex switched to it)."""
        self._collection_name = name
        self._collection = None
        self._vectorstore = None

    # -- connection ------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            import chromadb
            from chromadb.config import Settings

            settings = Settings(anonymized_telemetry=False, allow_reset=False)
            if self.config.persist_directory is None:
                self._client = chromadb.EphemeralClient(settings=settings)
            else:
                self.config.persist_directory.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self.config.persist_directory), settings=settings)
        return self._client

    def collection_names(self) -> set[str]:
        """Every collection in the client (all logical names and their physical generations)."""
        return {c if isinstance(c, str) else c.name for c in self.client.list_collections()}

    def exists(self) -> bool:
        return self.exists_named(self.collection_name)

    def exists_named(self, name: str) -> bool:
        return name in self.collection_names()

    @property
    def collection(self):
        """The collection, created with this model's fingerprint or checked against it."""
        if self._collection is None:
            self._collection = self._open_collection()
        return self._collection

    def _open_collection(self):
        if not self.exists():
            expected = self.embeddings.fingerprint()
            # No embedding function on the Chroma side: we always pass our vectors, and Chroma
            # must never fall back to downloading its own default model.
            return self.client.create_collection(
                self.collection_name,
                metadata={"hnsw:space": self.config.distance, FINGERPRINT_KEY: _fingerprint_text(expected)},
                embedding_function=None,
            )
        collection = self.client.get_collection(self.collection_name, embedding_function=None)
        stored_text = (collection.metadata or {}).get(FINGERPRINT_KEY)
        if stored_text is None:
            expected = self.embeddings.fingerprint()
            if collection.count() > 0:
                raise IndexMismatchError(
                    f"collection {self.collection_name!r} in {self.config.persist_directory} was not built by "
                    "rag-pipeline (no embedding fingerprint); use another vectorstore.collection"
                )
            metadata = {**(collection.metadata or {}), FINGERPRINT_KEY: _fingerprint_text(expected)}
            metadata.pop("hnsw:space", None)  # the distance cannot be modified after creation
            collection.modify(metadata=metadata)
            return collection
        stored = json.loads(stored_text)
        # Checked without loading the model when it is not loaded yet: the dimension follows from
        # the model, so opening an index to find nothing changed costs no model load.
        expected = self.embeddings.fingerprint(load_model=False)
        if any(stored.get(key) != value for key, value in expected.items()):
            differences = ", ".join(
                f"{key}: index has {stored.get(key)!r}, config gives {expected.get(key)!r}"
                for key in sorted(expected)
                if stored.get(key) != expected.get(key)
            )
            raise IndexMismatchError(
                f"collection {self.config.collection!r} was built with another embedding setup ({differences}); "
                "vectors of different models cannot be mixed: run `rag-pipeline reindex CONFIG` to re-embed the "
                "corpus with the configured model (the current index serves until the new one is complete), "
                "or set vectorstore.collection to a new name"
            )
        return collection

    @property
    def vectorstore(self):
        """LangChain's ``Chroma`` over the same collection, for search and for LangChain users."""
        if self._vectorstore is None:
            from langchain_chroma import Chroma

            self.collection  # create or check first, so LangChain never creates it without a fingerprint
            self._vectorstore = Chroma(
                client=self.client,
                collection_name=self.collection_name,
                embedding_function=self.embeddings,
                create_collection_if_not_exists=False,
            )
        return self._vectorstore

    @property
    def record_path(self) -> Path | None:
        """The index record (what ingest wrote, and which collection is active) lives beside the index."""
        if self.config.persist_directory is None:
            return None
        return self.config.persist_directory / RECORD_FILENAME

    @property
    def lock_path(self) -> Path | None:
        if self.config.persist_directory is None:
            return None
        return self.config.persist_directory / LOCK_FILENAME

    @property
    def embedding_cache_path(self) -> Path | None:
        """The passage-vector cache lives beside a persistent index; an in-memory index has none."""
        if self.config.persist_directory is None:
            return None
        return self.config.persist_directory / "embedding_cache.sqlite"

    # -- writes ----------------------------------------------------------------------------------
    @property
    def max_batch_size(self) -> int:
        return min(self.config.write_batch_size, int(self.client.get_max_batch_size()))

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(list(ids), self.client.get_max_batch_size()):
            found.update(self.collection.get(ids=list(batch), include=[])["ids"])
        return found

    def upsert(self, chunks: Sequence[Document], vectors: np.ndarray) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        for start in range(0, len(chunks), self.max_batch_size):
            part = chunks[start : start + self.max_batch_size]
            self.collection.upsert(
                ids=[c.id for c in part],
                embeddings=np.asarray(vectors[start : start + self.max_batch_size], dtype=np.float32),
                documents=[c.page_content for c in part],
                metadatas=[_chroma_metadata(c.metadata) for c in part],
            )

    def delete(self, ids: Sequence[str]) -> None:
        for batch in _batches(list(ids), self.max_batch_size):
            self.collection.delete(ids=list(batch))

    def all_ids(self) -> set[str]:
        """Every chunk id in the collection (read in pages, ids only)."""
        found: set[str] = set()
        page = int(self.client.get_max_batch_size())
        offset = 0
        while True:
            ids = self.collection.get(include=[], limit=page, offset=offset)["ids"]
            found.update(ids)
            if len(ids) < page:
                return found
            offset += page

    def drop_collection(self, name: str) -> None:
        """Delete a physical collection (a retired or half-built one); no error when it is gone."""
        if self.exists_named(name):
            self.client.delete_collection(name)

    def count(self) -> int:
        return self.collection.count()

    # -- reads -----------------------------------------------------------------------------------
    def search(self, query: str, k: int, where: dict[str, Any] | None = None) -> list[Document]:
        """Top-k chunks for a query, ``metadata['score']`` = similarity (cosine for normalised vectors)."""
        if k <= 0:
            raise ConfigError("retriever.k must be positive")
        vector = self.embeddings.embed_query(query)
        result = self.collection.query(
            query_embeddings=[vector],
            n_results=k,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        documents = []
        for identifier, text, metadata, distance in zip(
            result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0]
        ):
            metadata = dict(metadata or {})
            metadata["score"] = self._similarity(float(distance))
            documents.append(Document(page_content=text or "", metadata=metadata, id=identifier))
        return documents

    def _similarity(self, distance: float) -> float:
        # Chroma returns distances: cosine and ip give 1 - similarity; l2 is squared Euclidean,
        # which for unit vectors is 2 - 2*cosine.
        if self.config.distance == "l2":
            return 1.0 - distance / 2.0
        return 1.0 - distance


def _chroma_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Chroma accepts str/int/float/bool values only and rejects None."""
    metadata = safe_metadata(metadata)[0]  # chunks not from the loader (index_chunks): a refused key must not abort
    clean = {}
    for key, value in metadata.items():
        if value is None:
            continue
        clean[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)
    return clean
