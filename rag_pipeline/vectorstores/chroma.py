"""``vectorstore.type: chroma`` — a persistent Chroma collection that knows which model filled it.

The collection's metadata records the embedding fingerprint (model, dimension, normalisation,
query instruction). Opening it with a different one is refused: vectors of two models in one
index are not comparable, and search would go quietly wrong. ``rag-pipeline reindex`` is the fix.

``vectorstore.collection`` is a logical name; the store serves the physical collection it is
told to (``collection_name``), which ``reindex`` swaps when a new one is complete. Which one is
active is index state, kept by :mod:`rag_pipeline.indexing`; the store never reads it, it only
asks ``resolve_collection`` again when its collection disappears under it.

``client: http`` serves the same collections from a Chroma server (``chroma run``) instead of a
local folder: many readers see one index, and every reader sees a writer's chunks as soon as they
are written (the server holds the only view). Credentials are read from environment variables the
config names, never from the config itself. The index record, write lock and embedding cache stay
on the writer's machine (``ingest.state_directory``), so there is one writer at a time.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from typing import Any, Callable, Literal, Sequence

import numpy as np
from langchain_core.documents import Document
from pydantic import Field, PrivateAttr, model_validator

from ..contracts import Filter
from ..errors import ConfigError, IndexMismatchError, IndexUnavailableError, first_line
from ..index_storage import GenerationsBase, batches
from ..metadata import chroma_where, stored_metadata
from ..stage_config import ConfigPath, StageConfig
from ..registry import register
from .shared import VectorStoreBase, distance_mismatch, fingerprint_mismatch, fingerprint_text

FINGERPRINT_KEY = "rag_pipeline:embedding_fingerprint"
logger = logging.getLogger(__name__)


def build_chroma_store(config: "ChromaStoreConfig", embeddings) -> "ChromaStore":
    return ChromaStore(config, embeddings)


@register("vectorstore", "chroma", build_chroma_store)
class ChromaStoreConfig(StageConfig):
    """A Chroma collection in a local folder (or in memory when ``persist_directory`` is null), or on
    a Chroma server (``client: http``)."""

    type: Literal["chroma"] = "chroma"
    persist_directory: ConfigPath | None = None
    # In memory, Chroma keeps every client of a process in one store: each in-memory index gets a
    # database of its own, named on first use and shared by the stores built from this config
    # (a reindex's new generation), so two pipelines in one process never see each other's chunks.
    _memory_database: str | None = PrivateAttr(default=None)
    collection: str = Field("rag_pipeline", min_length=3, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]$")
    distance: Literal["cosine", "ip", "l2"] = "cosine"
    write_batch_size: int = Field(256, gt=0, description="Chunks embedded and written per step.")
    client: Literal["embedded", "http"] = Field(
        "embedded", description="embedded: Chroma in this process; http: a Chroma server at host:port."
    )
    host: str = Field("localhost", min_length=1, description="The Chroma server (client: http).")
    port: int = Field(8000, gt=0, lt=65536, description="The Chroma server's port (client: http).")
    ssl: bool = Field(False, description="Connect over HTTPS (client: http).")
    token_env: str | None = Field(
        None, description="Name of the environment variable holding the server's auth token (client: http)."
    )
    token_header: Literal["Authorization", "X-Chroma-Token"] = Field(
        "Authorization", description="How the token is sent: 'Authorization: Bearer <token>' or 'X-Chroma-Token'."
    )
    headers_env: dict[str, str] = Field(
        default_factory=dict,
        description="Further request headers, each read from the environment variable named (client: http).",
    )

    @model_validator(mode="after")
    def _server_settings_need_a_server(self) -> "ChromaStoreConfig":
        if self.client == "http" and self.persist_directory is not None:
            raise ValueError(
                "persist_directory is not used with client: http (a Chroma server keeps its own folder); "
                "remove persist_directory, or set client: embedded"
            )
        if self.client == "embedded" and (self.token_env or self.headers_env):
            raise ValueError("token_env/headers_env are for a Chroma server; set client: http or remove them")
        return self

    @property
    def state_directory_required(self) -> str | None:
        """Why ``ingest.state_directory`` must be set (None: the index folder can hold the state)."""
        if self.client == "http":
            return (
                "ingest.state_directory: required with vectorstore.client: http (the index record, write lock "
                "and embedding cache live on the writer's machine, not on the server); set it to a local folder"
            )
        return None

    @property
    def server_url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    def server_headers(self) -> dict[str, str]:
        """The request headers, read from the environment now (never stored in the config)."""
        headers = {}
        sources = dict(self.headers_env)
        if self.token_env:
            sources[self.token_header] = self.token_env
        for header, variable in sources.items():
            value = os.environ.get(variable)
            if not value:
                key = "vectorstore.token_env" if variable == self.token_env else f"vectorstore.headers_env.{header}"
                raise ConfigError(f"{key}: environment variable {variable} is not set; export it before running")
            if header == "Authorization" and variable == self.token_env:
                value = f"Bearer {value}"
            headers[header] = value
        return headers


class ChromaStore(VectorStoreBase, GenerationsBase):
    """A Chroma collection plus the LangChain ``Chroma`` vector store over it (a ``VectorIndex``).

    ``collection_name`` is the physical collection to serve (default: ``vectorstore.collection``).
    ``resolve_collection``, when given, names the collection that serves now; it is asked again
    when the served one has disappeared (another process reindexed and dropped it).

    ``change_token``, when given, returns something that changes whenever another process may have
    written the index (the index record's stat). Chroma keeps one in-memory view of a persistent
    folder per process and never sees another process's writes in it; a read that finds the token
    changed opens a fresh view (and asks ``resolve_collection`` again) before it answers
    (:class:`~rag_pipeline.index_storage.GenerationsBase`, with :meth:`_reopen`).
    """

    def __init__(
        self,
        config: ChromaStoreConfig,
        embeddings,
        collection_name: str | None = None,
        resolve_collection: Callable[[], str] | None = None,
    ):
        self.config = config
        self.embeddings = embeddings
        super().__init__(collection_name)
        self.resolve_collection = resolve_collection
        self._client = None
        self._raw_client = None
        self._collection = None
        self._vectorstore = None

    @property
    def on_server(self) -> bool:
        return self.config.client == "http"

    @property
    def location(self) -> str | None:
        """Where the index lives, for messages (None: in memory)."""
        return self.config.server_url if self.on_server else super().location

    def _served_changed(self) -> None:
        super()._served_changed()
        self._collection = None
        self._vectorstore = None

    # -- connection ------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            import chromadb
            from chromadb.config import Settings

            settings = Settings(anonymized_telemetry=False, allow_reset=False)
            self._token = self.change_token() if self.change_token is not None else None
            if self.on_server:
                self._raw_client = self._connect(chromadb, settings)
                self._client = _ServerCalls(self._raw_client, self.config.server_url)
            elif self.config.persist_directory is None:
                self._client = chromadb.EphemeralClient(settings=settings, database=self._memory_database(chromadb, settings))
            else:
                self.config.persist_directory.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self.config.persist_directory), settings=settings)
            if not self.on_server:
                self._raw_client = self._client
        return self._client

    def _memory_database(self, chromadb, settings) -> str:
        if self.config._memory_database is None:
            name = f"memory-{uuid.uuid4().hex}"
            chromadb.AdminClient(settings).create_database(name)
            self.config._memory_database = name
        return self.config._memory_database

    def _connect(self, chromadb, settings):
        from chromadb.errors import ChromaAuthError

        config = self.config
        headers = config.server_headers()
        try:
            return chromadb.HttpClient(
                host=config.host, port=config.port, ssl=config.ssl, headers=headers or None, settings=settings
            )
        except ChromaAuthError as exc:
            raise _refused(config.server_url, exc) from None
        except ValueError as exc:  # chromadb's "Could not connect to a Chroma server"
            raise _unreachable(config.server_url, exc) from None

    def index_exists(self) -> bool:
        """Whether anything was ever stored here, checked without creating anything."""
        if self.on_server:
            return bool(self.collection_names())
        if self.config.persist_directory is None:
            return self._client is not None and bool(self.collection_names())
        return (self.config.persist_directory / "chroma.sqlite3").is_file()

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
                metadata={"hnsw:space": self.config.distance, FINGERPRINT_KEY: fingerprint_text(expected)},
                embedding_function=None,
            )
        collection = self.client.get_collection(self.collection_name, embedding_function=None)
        self._check_distance(collection)
        stored_text = (collection.metadata or {}).get(FINGERPRINT_KEY)
        if stored_text is None:
            expected = self.embeddings.fingerprint()
            if collection.count() > 0:
                raise IndexMismatchError(
                    f"collection {self.collection_name!r} in {self.location} was not built by "
                    "rag-pipeline (no embedding fingerprint); use another vectorstore.collection"
                )
            metadata = {**(collection.metadata or {}), FINGERPRINT_KEY: fingerprint_text(expected)}
            metadata.pop("hnsw:space", None)  # the distance cannot be modified after creation
            collection.modify(metadata=metadata)
            return collection
        stored = json.loads(stored_text)
        # Checked without loading the model when it is not loaded yet: the dimension follows from
        # the model, so opening an index to find nothing changed costs no model load.
        expected = self.embeddings.fingerprint(load_model=False)
        if "identity" not in stored and "identity" in expected:
            stored = self._adopt_legacy_fingerprint(collection, stored, expected)
        mismatch = fingerprint_mismatch(self.config.collection, stored, expected)
        if mismatch is not None:
            raise mismatch
        return collection

    def _adopt_legacy_fingerprint(self, collection, stored: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
        """An index from before model identities were recorded names its model but not the hash of
        its weights. When everything it does record matches, the configured model's identity is
        written in (with a warning: it cannot be checked); anything else is refused as usual."""
        if any(stored.get(key) != value for key, value in expected.items() if key != "identity"):
            return stored
        logger.warning(
            "collection %r records no model identity (built by an older rag-pipeline); assuming it was built "
            "with the configured %r and recording its identity. If the weights changed since, run "
            "`rag-pipeline reindex CONFIG`", self.collection_name, stored.get("model"),
        )
        adopted = {**stored, "identity": expected["identity"]}
        metadata = {**(collection.metadata or {}), FINGERPRINT_KEY: fingerprint_text(adopted)}
        metadata.pop("hnsw:space", None)  # fixed at creation; Chroma refuses to modify it
        collection.modify(metadata=metadata)
        return adopted

    def _check_distance(self, collection) -> None:
        """A collection's distance is fixed when it is created; a config that says another one would
        get scores computed for the wrong space, so it is refused."""
        mismatch = distance_mismatch(self.config.collection, _collection_space(collection), self.config.distance)
        if mismatch is not None:
            raise mismatch

    def stored_fingerprint(self) -> dict[str, Any] | None:
        """The embedding fingerprint the served collection records (``rag-pipeline stats``)."""
        stored = (self.collection.metadata or {}).get(FINGERPRINT_KEY)
        return json.loads(stored) if stored else None

    def check(self) -> None:
        """Open the served collection now, so a model or distance mismatch is reported up front."""
        self.collection

    def clear(self) -> None:
        """Drop the served collection; the next write creates it afresh."""
        self.drop_collection(self.collection_name)

    @property
    def vectorstore(self):
        """LangChain's ``Chroma`` over the same collection, for search and for LangChain users."""
        if self._vectorstore is None:
            from langchain_chroma import Chroma

            self.collection  # create or check first, so LangChain never creates it without a fingerprint
            self._vectorstore = Chroma(
                client=self._raw_client,
                collection_name=self.collection_name,
                embedding_function=self.embeddings,
                create_collection_if_not_exists=False,
            )
        return self._vectorstore

    # -- writes ----------------------------------------------------------------------------------
    @property
    def max_batch_size(self) -> int:
        return min(self.config.write_batch_size, int(self.client.get_max_batch_size()))

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for batch in batches(list(ids), self.client.get_max_batch_size()):
            found.update(self.collection.get(ids=list(batch), include=[])["ids"])
        return found

    def upsert(self, chunks: Sequence[Document], vectors: np.ndarray) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        for start in range(0, len(chunks), self.max_batch_size):
            part = chunks[start : start + self.max_batch_size]
            part_vectors = np.asarray(vectors[start : start + self.max_batch_size], dtype=np.float32)
            metadatas = [stored_metadata(c.metadata) for c in part]
            held_by_id = self._held_records([c.id for c in part])
            # A chunk held already with the same text, metadata and vector is not written again:
            # re-ingesting a changed file rewrites all its chunks, and rewriting an unchanged one
            # costs an HNSW update for nothing (most of a one-line edit's time in a large file).
            changed = [
                n for n, (chunk, metadata) in enumerate(zip(part, metadatas))
                if not _holds_the_same(held_by_id.get(chunk.id), chunk.page_content, metadata, part_vectors[n])
            ]
            if not changed:
                continue
            for n in changed:
                # Chroma's upsert merges into a held record's metadata, so a key the chunk no longer
                # has (an HTML title removed) would survive; None tells Chroma to remove it.
                old_keys = held_by_id.get(part[n].id, ({}, None, None))[0].keys()
                metadatas[n].update({key: None for key in old_keys if key not in metadatas[n]})
            self.collection.upsert(
                ids=[part[n].id for n in changed],
                embeddings=part_vectors[changed],
                documents=[part[n].page_content for n in changed],
                metadatas=[metadatas[n] or None for n in changed],  # Chroma refuses {} (a document from code may have none)
            )
            self._writes += 1

    def _held_records(self, ids: list[str]) -> dict[str, tuple[dict, str | None, Any]]:
        """(metadata, document, embedding) of each of ``ids`` the collection holds. After a killed
        write, Chroma may list an id whose vector its index lacks and refuse to read the vectors:
        then only the metadata is read, and every chunk counts as changed."""
        from chromadb.errors import ChromaError

        try:
            held = self.collection.get(ids=ids, include=["metadatas", "documents", "embeddings"])
            return {i: (m or {}, d, e) for i, m, d, e in zip(held["ids"], held["metadatas"], held["documents"], held["embeddings"])}
        except ChromaError:
            held = self.collection.get(ids=ids, include=["metadatas"])
            return {i: (m or {}, None, None) for i, m in zip(held["ids"], held["metadatas"])}

    def delete(self, ids: Sequence[str]) -> None:
        for batch in batches(list(ids), self.max_batch_size):
            self.collection.delete(ids=list(batch))
        self._writes += 1

    def ids(self, where: dict[str, Any] | None = None) -> set[str]:
        """Every chunk id in the collection, or those whose metadata match ``where`` (read in pages)."""
        found: set[str] = set()
        page = int(self.client.get_max_batch_size())
        offset = 0
        while True:
            ids = self._read(lambda c: c.get(where=chroma_where(where), include=[], limit=page, offset=offset))["ids"]
            found.update(ids)
            if len(ids) < page:
                return found
            offset += page

    def drop_collection(self, name: str) -> None:
        """Delete a physical collection (a retired or half-built one); no error when it is gone."""
        if self.exists_named(name):
            self.client.delete_collection(name)
            self._writes += 1
        if name == self._collection_name:
            self._served_changed()

    def count(self) -> int:
        return self.collection.count()

    def content_version(self) -> Any:
        """Something that changes whenever the served collection's chunks may have changed, cheap
        to ask before every query: what a reader that keeps a copy (exact search's snapshot)
        compares to know whether it is still current. It changes with this store's own writes,
        with another process's commit (``change_token``) and with a reindex that switched the
        collection. A server's writers may leave no trace on this machine, so there the count is
        asked too (a write that keeps the count, replacing chunks in place, is seen only through
        the token)."""
        token = self.change_token() if self.change_token is not None else None
        self.refresh_if_changed()
        count = self._read(lambda c: c.count()) if self.on_server else None
        return (self.collection_name, self._writes, token, count)

    # -- reads -----------------------------------------------------------------------------------
    def _sees_other_processes(self) -> bool:
        # nothing opened yet (the client reads the token when it opens), or an in-memory client
        return self._client is not None and (self.config.persist_directory is not None or self.on_server)

    def _reopen(self) -> None:
        """A fresh view of the folder (a server's view is always current; there only the active
        collection is asked again, as after any change: a reindex may have switched it)."""
        if not self.on_server:
            _forget_process_view(self._client)
            self._client = self._raw_client = None
        self._served_changed()

    def _read(self, operation: Callable[[Any], Any]) -> Any:
        """Run a read on an up-to-date view; if the collection was dropped under us (a reindex in
        another process), serve the one that replaced it."""
        from chromadb.errors import NotFoundError

        self.refresh_if_changed()
        try:
            return operation(self.collection)
        except NotFoundError:
            if self.resolve_collection is None:
                raise
            self._served_changed()  # (the active collection may carry the same name, made anew)
            self.use_collection(self.resolve_collection())
            return operation(self.collection)

    def documents(self, ids: Sequence[str]) -> list[Document]:
        """The stored chunks, in ``ids`` order (read back page by page)."""
        found: dict[str, Document] = {}
        for part in batches(list(ids), self.max_batch_size):
            got = self._read(lambda c: c.get(ids=list(part), include=["documents", "metadatas"]))
            for identifier, text, metadata in zip(got["ids"], got["documents"], got["metadatas"]):
                found[identifier] = Document(page_content=text or "", metadata=dict(metadata or {}), id=identifier)
        return [found[i] for i in ids]

    def documents_in(self, collection: str, ids: Sequence[str]) -> list[Document]:
        """The stored chunks of another physical collection, in ``ids`` order, read without the
        model check: ``reindex`` copies the texts added from code out of the collection it replaces,
        which was built with the previous model."""
        found: dict[str, Document] = {}
        source = self.client.get_collection(collection, embedding_function=None)
        for part in batches(list(ids), self.max_batch_size):
            got = source.get(ids=list(part), include=["documents", "metadatas"])
            for identifier, text, metadata in zip(got["ids"], got["documents"], got["metadatas"]):
                found[identifier] = Document(page_content=text or "", metadata=dict(metadata or {}), id=identifier)
        return [found[i] for i in ids if i in found]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors, in ``ids`` order (read back page by page)."""
        rows: dict[str, np.ndarray] = {}
        for part in batches(list(ids), self.max_batch_size):
            got = self._read(lambda c: c.get(ids=list(part), include=["embeddings"]))
            rows.update(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        dimension = len(next(iter(rows.values()))) if rows else 0
        return np.vstack([rows[i] for i in ids]) if ids else np.zeros((0, dimension), dtype=np.float32)

    def _distance_to_similarity(self, distance: float) -> float:
        # Chroma returns distances: cosine and ip give 1 - similarity; l2 is squared Euclidean.
        if self.config.distance == "l2":
            return 1.0 - distance / 2.0
        return 1.0 - distance

    def _search_collection(
        self, queries: np.ndarray, k: int, where: Filter | None, with_text: bool
    ) -> list[list[Document]]:
        """Top-k chunks per query vector from Chroma's HNSW index."""
        include = ["metadatas", "distances"] + (["documents"] if with_text else [])
        from chromadb.errors import InvalidArgumentError

        try:
            result = self._read(
                lambda c: c.query(query_embeddings=queries, n_results=k, where=chroma_where(where) or None, include=include)
            )
        except (ValueError, TypeError, InvalidArgumentError) as exc:  # what chromadb raises for a bad filter
            if not where:
                raise
            raise ConfigError(f"retriever.filter: not a valid Chroma filter ({first_line(exc)}): {where!r}") from None
        results = []
        for row in range(len(queries)):
            texts = result["documents"][row] if with_text else [""] * len(result["ids"][row])
            documents = []
            for identifier, text, metadata, distance in zip(
                result["ids"][row], texts, result["metadatas"][row], result["distances"][row]
            ):
                metadata = dict(metadata or {})
                metadata["score"] = self._distance_to_similarity(float(distance))
                documents.append(Document(page_content=text or "", metadata=metadata, id=identifier))
            results.append(documents)
        return results


def _holds_the_same(held: tuple[dict, str | None, Any] | None, text: str, metadata: dict, vector: np.ndarray) -> bool:
    """Whether a held record (metadata, document, embedding) is what an upsert would write."""
    if held is None:
        return False
    held_metadata, held_text, held_vector = held
    return (
        held_text == text
        and held_metadata == metadata
        and held_vector is not None
        # (to float32's precision: Chroma may hand back a cosine collection's vector normalised)
        and np.allclose(np.asarray(held_vector, dtype=np.float32), vector, rtol=1e-6, atol=1e-7)
    )


class _ServerCalls:
    """A chromadb client or collection whose calls report a lost or refusing server as one
    ``IndexUnavailableError`` line instead of an httpx traceback (collections it returns too)."""

    _RETURNS_COLLECTION = frozenset({"get_collection", "create_collection", "get_or_create_collection"})

    def __init__(self, target: Any, url: str):
        self._target = target
        self._url = url

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args, **kwargs):
            import httpx
            from chromadb.errors import ChromaAuthError

            try:
                result = value(*args, **kwargs)
            except httpx.TransportError as exc:
                raise _unreachable(self._url, exc) from None
            except ChromaAuthError as exc:
                raise _refused(self._url, exc) from None
            return _ServerCalls(result, self._url) if name in self._RETURNS_COLLECTION else result

        return call


def _unreachable(url: str, exc: BaseException) -> IndexUnavailableError:
    return IndexUnavailableError(
        f"vectorstore: the Chroma server at {url} cannot be reached ({first_line(exc, 80)}); start it "
        "(`chroma run --path DIR --host HOST --port PORT`) or fix vectorstore.host/port, then run the command "
        "again (an interrupted ingest resumes where it stopped)"
    )


def _refused(url: str, exc: BaseException) -> IndexUnavailableError:
    return IndexUnavailableError(
        f"vectorstore: the Chroma server at {url} refused the credentials ({first_line(exc, 80)}); check the "
        "environment variables named by vectorstore.token_env/headers_env"
    )


def _forget_process_view(client) -> None:
    """Make the next client on this folder load it afresh from disk.

    chromadb caches one ``System`` per folder and process (``SharedSystemClient``); its HNSW index
    is loaded once and misses what other processes wrote since. Dropping it from the cache (not
    stopping it: other clients in this process may still use it) makes the next client read the
    folder's current state, including the write-ahead log. This uses chromadb's internal cache:
    if a later chromadb moves it, the refresh degrades to a no-op and readers see the old view.
    """
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient._identifier_to_system.pop(client._identifier, None)
    except (ImportError, AttributeError):  # pragma: no cover - depends on chromadb internals
        pass


def _collection_space(collection) -> str | None:
    """The distance a collection was created with: our own metadata, else Chroma's configuration."""
    space = (collection.metadata or {}).get("hnsw:space")
    if space is None:
        configuration = getattr(collection, "configuration_json", None)
        if isinstance(configuration, dict):
            space = (configuration.get("hnsw") or {}).get("space")
    return space

