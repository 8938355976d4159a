"""The HTTP API over one :class:`~rag_pipeline.pipeline.Pipeline` (FastAPI), and the search page.

    POST   /query       {"query": "...", "k": 5, "filter": {...}}  -> ranked chunks with every score
    POST   /documents   {"documents": [{"content", "metadata", "id"}], "source": "..."}
    DELETE /documents   {"source": "..."} or {"ids": [...]}
    GET    /stats       collection, model, chunk count
    POST   /v1/embeddings  OpenAI's embeddings request -> the configured embedder's vectors
    POST   /rerank      {"query": "...", "documents": [...], "top_n": 3} (Cohere / Jina's shape; also
                        at /v1/rerank) -> the configured cross-encoder's scores, best first
    GET    /health      liveness (never needs the token)
    GET    /ready       200 once the models are loaded and the index is open, else 503 (no token)
    GET    /metrics     Prometheus text: the service's counters and histograms, and per endpoint
    GET    /            the search page
    /docs, /redoc, /openapi.json: FastAPI's OpenAPI docs; with a token, /openapi.json wants it and
    the two pages are off (a browser cannot send the token to them)

The boundary a server holds, whatever a client sends (:class:`ServerSettings`):

- only the host names the operator allows in the ``Host`` header (400 otherwise): on a loopback
  bind a web page that rebinds its own name to 127.0.0.1 must not reach the index;
- a request's ``filter`` narrows the configured ``retriever.filter`` (both hold), never replaces it;
- at most ``max_k`` results per query, ``max_body_bytes`` per request body (413) and
  ``max_documents`` per ``POST /documents``, inputs per ``/v1/embeddings`` and documents per
  ``/rerank`` (413);
- text that is not valid Unicode (JSON's lone ``"\\ud800"`` escape) is refused with 400 naming the field.

Errors a user causes (``RagPipelineError``) answer with ``{"detail": "<the one-line message>"}``:
409 when another writer holds the index (``IndexBusyError``), 503 when the index's server cannot be
reached (``IndexUnavailableError``), 429 with ``Retry-After: 1`` when the service's queue is full
(``ServiceBusy``), 503 when the service is not started, closing or overloaded
(``ServiceUnavailable``), 400 for the rest.

``/v1/embeddings`` and ``/rerank`` take the request shapes OpenAI's, Cohere's and Jina's clients send
(so those clients, and LangChain's and LlamaIndex's integrations built on them, work pointed at this
server): any ``model`` is accepted and the answer names the configured one, since a server holds one
embedder and one reranker. A config without a reranker answers ``/rerank`` with 404.

Queries, writes and their batching run in a :class:`~rag_pipeline.service.RetrievalService`; the
server applies its boundary checks, then calls it. Every request gets one access-log line
(logger ``rag_pipeline.server.access``) with a request id, echoed in ``X-Request-ID``.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterable, Iterator, Literal, Sequence, Union

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder  # reports, dataclasses, paths -> JSON
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from langchain_core.documents import Document
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    ConfigError,
    DocumentError,
    IndexBusyError,
    IndexUnavailableError,
    QueryError,
    RagPipelineError,
    ServiceBusy,
    ServiceUnavailable,
)
from ..pipeline import Pipeline
from ..retrieval.filters import filter_problem
from ..service import RetrievalService, ServiceSettings, no_reranker_message

# The metadata keys that explain a rank: the first stage's (fused, when hybrid) score, each arm's
# score and rank, and the cross-encoder's score. A key a result lacks is left out.
SCORE_KEYS = ("score", "dense_score", "dense_rank", "bm25_score", "bm25_rank", "rerank_score")

LOOPBACK_HOSTS = ("localhost", "127.0.0.0/8", "::1")
"""The ``Host`` names a loopback server answers to: ``localhost``, any 127.x address, and ``[::1]``."""

ANY_HOST = "*"
"""An ``allowed_hosts`` entry that turns the ``Host`` check off (behind a proxy that does it)."""

# A DNS name (RFC 1123 labels; underscores too, as some internal names use them).
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")

# Exceptions that mean something other than "the request was wrong" (RagPipelineError's 400).
STATUS_OF_ERROR = (
    (IndexBusyError, 409),
    (IndexUnavailableError, 503),
    (ServiceBusy, 429),
    (ServiceUnavailable, 503),
)
HEADERS_OF_STATUS = {429: {"Retry-After": "1"}}

# Endpoints whose errors also carry OpenAI's {"error": {"message": ...}} beside {"detail": ...}.
OPENAI_PATHS = frozenset({"/v1/embeddings"})

access_log = logging.getLogger("rag_pipeline.server.access")

# A client's X-Request-ID is kept when it is short and plain (it goes into the log line as it is).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _is_every_interface(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified  # 0.0.0.0, ::
    except ValueError:
        return False


def allowed_hosts_for(bind: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The ``Host`` names a server bound to ``bind`` answers to: the loopback names on a loopback
    bind, else ``bind`` itself, plus ``extra`` (``serve --allowed-host``). A bind to every interface
    (0.0.0.0, ::) has no name of its own, so it needs ``extra``."""
    if is_loopback(bind):
        own: tuple[str, ...] = LOOPBACK_HOSTS
    elif _is_every_interface(bind):
        if not extra:
            raise ConfigError(
                f"--host {bind} listens on every interface: name the host names clients use with --allowed-host NAME "
                f"(repeatable), or --allowed-host '{ANY_HOST}' to accept any"
            )
        own = ()
    else:
        own = (bind.strip("[]"),)
    return own + tuple(extra)


def host_of(header: str) -> str | None:
    """The host of a ``Host`` header, lower case, without port, brackets or a final dot
    (``[::1]:8000`` -> ``::1``, ``LocalHost.:80`` -> ``localhost``); None when it is malformed."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal, the only form with colons of its own
        end = header.find("]")
        if end < 0:
            return None
        host, rest = header[1:end], header[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, colon, port = header.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    host = host[:-1] if host.endswith(".") else host
    return host or None


class AllowedHosts:
    """The ``Host`` check: names compared whole, addresses against addresses and networks
    (``127.0.0.0/8``), and ``*`` for any."""

    def __init__(self, entries: Iterable[str]):
        self.entries = tuple(entries)
        self.any = ANY_HOST in self.entries
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in self.entries:
            if entry == ANY_HOST:
                continue
            text = entry.strip().lower().strip("[]").rstrip(".")
            try:
                self.networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_NAME.match(text):
                raise ConfigError(
                    f"allowed host {entry!r}: give a host name, an IP address or network (127.0.0.0/8), "
                    f"without scheme or port, or '{ANY_HOST}'"
                )
            self.names.add(text)

    def allows(self, host: str) -> bool:
        if self.any:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.names
        # ::ffff:127.0.0.1 is 127.0.0.1 seen through an IPv6 socket
        mapped = getattr(address, "ipv4_mapped", None)
        return any(address in network or (mapped is not None and mapped in network) for network in self.networks)


@dataclass(frozen=True)
class ServerSettings:
    """What a server lets a client do.

    ``token``: when set, every endpoint but ``/health`` and the page wants
    ``Authorization: Bearer <token>``. ``allowed_hosts``: the ``Host`` header values it answers
    (host names, IP addresses, networks such as ``127.0.0.0/8``; ``*`` for any), the loopback
    names by default (:func:`allowed_hosts_for` gives the set for a bind address).
    ``max_k``: the most results one query may ask for. ``max_body_bytes``: the largest request
    body. ``max_documents``: the most documents one ``POST /documents`` may carry, and the most
    inputs of one ``/v1/embeddings`` or documents of one ``/rerank``.
    """

    token: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_k: int = 100
    max_body_bytes: int = 16 * 2**20
    max_documents: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_k", "max_body_bytes", "max_documents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ServerSettings.{name}: must be a positive whole number, got {value!r}")
        # a list, or one name given where a tuple was meant: kept as a tuple (the settings are frozen)
        hosts = (self.allowed_hosts,) if isinstance(self.allowed_hosts, str) else tuple(self.allowed_hosts)
        object.__setattr__(self, "allowed_hosts", hosts)
        AllowedHosts(self.allowed_hosts)  # refuse a malformed entry now, not at the first request


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="The text to search for.")
    # strict: JSON's true is not the number 1, nor "3" the number 3
    k: StrictInt | None = Field(None, gt=0, description="Number of results (default: the config's; at most the server's max_k).")
    filter: dict[str, Any] | None = Field(
        None,
        description="Chroma `where` filter for this call, e.g. {\"file_type\": \"md\"}; it narrows the configured "
        "retriever.filter (both must hold).",
    )


class ResultItem(BaseModel):
    rank: int
    id: str | None
    content: str
    source: str | None = Field(description="The file the chunk came from.")
    doc_id: str | None = Field(description="The document inside the file (path, plus #page= / #row= for records).")
    chunk_index: int | None = Field(description="The chunk's position in its document (0 = first).")
    start_index: int | None = Field(description="Character offset of the chunk in its document.")
    scores: dict[str, float] = Field(description="Every score and arm rank behind this position (see SCORE_KEYS).")
    metadata: dict[str, Any]


class QueryResponse(BaseModel):
    query: str
    k: int | None
    ranked_by: str = Field(description="The score the results are ordered by: rerank_score with a reranker, else score.")
    took_ms: float
    results: list[ResultItem]


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class AddDocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, description="At most the server's max_documents.")
    source: str = Field(description="Where these documents come from, e.g. 'api:notes'; delete them by it later.")


class DeleteDocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    ids: list[str] | None = None


class EmbeddingsRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body, plus ``input_type``."""

    model_config = ConfigDict(extra="forbid")

    # token ids are declared so that they get a message of their own, not a validation error
    input: Union[str, list[str], list[StrictInt], list[list[StrictInt]]] = Field(
        description="A text, or a list of texts (at most the server's max_documents), none empty. Token ids are not accepted."
    )
    model: str | None = Field(
        None, description="Any value is accepted: the server has one embedder, and the answer names it."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: each vector's little-endian float32 bytes, base64-encoded."
    )
    dimensions: StrictInt | None = Field(
        None, gt=0, description="Must equal the model's dimension when given: vectors are never shortened."
    )
    user: str | None = Field(None, description="Accepted and ignored.")
    input_type: Literal["passage", "query"] = Field(
        "passage",
        description="An extension: passage embeds the texts as they are (embed_documents); query puts the configured "
        "query instruction first (embed_query), as a search does.",
    )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens of every input (special tokens included, before truncation).")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str = Field(description="The configured embedding model.")
    usage: EmbeddingsUsage


class RerankDocument(BaseModel):
    # Cohere's document objects may carry other fields (a title): kept out of the ranking
    model_config = ConfigDict(extra="allow")

    text: str


class RerankRequest(BaseModel):
    """The ``POST /rerank`` body as Cohere's and Jina's clients (and LangChain's and LlamaIndex's
    rerankers over them) send it."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="The text the documents are ranked against.")
    documents: list[Union[str, RerankDocument]] = Field(
        description='Texts, or objects {"text": ...}; at most the server\'s max_documents.'
    )
    top_n: StrictInt | None = Field(None, gt=0, description="Results to return, best first (default: all).")
    return_documents: StrictBool = Field(False, description="Give each result's document text back.")
    model: str | None = Field(None, description="Any value is accepted: the server has one reranker, and the answer names it.")
    rank_fields: list[str] | None = Field(None, description='Cohere\'s: only ["text"] is supported.')
    max_chunks_per_doc: StrictInt | None = Field(
        None, description="Cohere's; accepted and ignored: a long document is truncated to the reranker's max_length."
    )
    max_tokens_per_doc: StrictInt | None = Field(None, description="Cohere's; accepted and ignored, as max_chunks_per_doc.")


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="The document's position in the request.")
    relevance_score: float = Field(description="The cross-encoder's score (a logit, or 0..1 with reranker.normalize).")
    document: RerankResultDocument | None = Field(None, description="Only with return_documents.")


class RerankUsage(BaseModel):
    total_tokens: int = Field(description="Tokens of every (query, document) pair (special tokens included, before truncation).")


class RerankResponse(BaseModel):
    results: list[RerankResult]
    model: str = Field(description="The configured reranker model.")
    usage: RerankUsage


def model_name(stage: Any, configured: Any) -> str:
    """The name an answer gives a model: its hub id (or its folder's name), else what the config says."""
    name = getattr(getattr(stage, "resolved", None), "model_id", None)
    return name if isinstance(name, str) and name else str(configured)


def result_item(rank: int, document: Document) -> ResultItem:
    meta = document.metadata
    return ResultItem(
        rank=rank,
        id=document.id,
        content=document.page_content,
        source=meta.get("source"),
        doc_id=meta.get("doc_id"),
        chunk_index=meta.get("chunk_index"),
        start_index=meta.get("start_index"),
        scores={key: float(meta[key]) for key in SCORE_KEYS if isinstance(meta.get(key), (int, float))},
        metadata=meta,
    )


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON's "\ud800" escape decodes to one
        return False
    return True


def _invalid_text_at(value: Any, where: str) -> str | None:
    """Where in ``value`` (a field's JSON value) there is text that is not valid Unicode, or None."""
    if isinstance(value, str):
        return None if _is_valid_unicode(value) else where
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not _is_valid_unicode(key):
                return f"{where} (the key {ascii(key)})"
            found = _invalid_text_at(item, f"{where}[{key!r}]")
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _invalid_text_at(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def refuse_invalid_text(fields: Iterable[tuple[str, Any]], error: type[RagPipelineError]) -> None:
    """Raise ``error`` naming the first field whose text is not valid Unicode.

    Refused rather than repaired (as the folder loader repairs a file's metadata): a client can
    fix what it sends, and a repaired query, source or id would silently be another one."""
    for name, value in fields:
        found = _invalid_text_at(value, name)
        if found is not None:
            raise error(
                f"{found}: not valid Unicode (a lone surrogate such as JSON's \\ud800 escape); send the text as UTF-8"
            )



# What every door that searches or writes over the network applies (serve's HTTP API, the MCP tools).
def bounded_k(k: int | None, max_k: int, flag: str, unit: str) -> int | None:
    """The request's ``k`` (None: the config's), refused above ``max_k``: a large k makes the
    first stage, and the reranker, score that many chunks. ``flag`` names the option that sets
    the bound (``serve --max-k``), ``unit`` what one call is (a query, a search)."""
    if k is not None and k > max_k:
        raise QueryError(f"k: this server answers at most {max_k} results per {unit} ({flag}); ask for fewer")
    return k


def narrowed_filter(configured: dict[str, Any] | None, requested: dict[str, Any] | None) -> dict[str, Any] | None:
    """The filter a request searches under: the configured ``retriever.filter`` and the
    request's, both; None keeps the configured one alone (also for ``{}``).

    A client narrows what the operator's config serves, never widens it; the Python API, where
    the caller owns the config, keeps its per-call replacement."""
    if not requested:
        return None
    problem = filter_problem(requested)
    if problem is not None:
        raise QueryError(f"filter: {problem}")
    return {"$and": [configured, requested]} if configured else requested


def query_response(query: str, k: int | None, documents: list[Document], started: float) -> QueryResponse:
    """The answer to a search that began at ``started`` (``time.perf_counter()``)."""
    reranked = any("rerank_score" in d.metadata for d in documents)
    return QueryResponse(
        query=query,
        k=k,
        ranked_by="rerank_score" if reranked else "score",
        took_ms=round(1000 * (time.perf_counter() - started), 2),
        results=[result_item(rank, d) for rank, d in enumerate(documents, start=1)],
    )


def document_fields(source: Any, documents: Iterable[Any]) -> list[tuple[str, Any]]:
    """Every text a write carries, named as the request names it (for :func:`refuse_invalid_text`)."""
    fields: list[tuple[str, Any]] = [("source", source)]
    for number, document in enumerate(documents):
        fields += [
            (f"documents[{number}].content", document.content),
            (f"documents[{number}].metadata", document.metadata),
            (f"documents[{number}].id", document.id),
        ]
    return fields


class PipelineService:
    """The server's adapter over a :class:`~rag_pipeline.service.RetrievalService`: it applies the
    server's checks (``max_k``, filter narrowing, ``max_documents``, text that is not Unicode),
    then calls the service, which answers queries concurrently (batching their embeddings) and
    runs writes beside them (see :mod:`rag_pipeline.service`).

    The service is started by :meth:`warm_up` (``create_app`` calls it unless ``warm_up=False``),
    else at the first request that needs it; :meth:`close` drains what it has taken, then stops.
    """

    def __init__(self, pipeline: Pipeline, settings: ServerSettings | None = None, service_settings: ServiceSettings | None = None):
        self.pipeline = pipeline
        self.settings = settings or ServerSettings()
        if service_settings is None:
            # a write waits for another process's ingest as long as the config says (ingest.lock_timeout)
            wait = getattr(pipeline.config.ingest, "lock_timeout", None)
            service_settings = ServiceSettings(write_lock_wait_s=wait) if isinstance(wait, (int, float)) and wait >= 0 else ServiceSettings()
        self.service = RetrievalService(pipeline, service_settings)
        self._starting = threading.Lock()
        self._started_service = False
        self.started = time.time()

    def warm_up(self) -> None:
        """Refuse now, not at the first request, when there is no index; load every model and
        start the service's threads."""
        self.running()

    def running(self) -> RetrievalService:
        """The service, started (once) if it was not yet."""
        if not self._started_service:
            with self._starting:
                if not self._started_service:
                    self.service.start()
                    self._started_service = True
        return self.service

    def close(self) -> None:
        """Finish the requests the service took, then stop it (the server's shutdown)."""
        with self._starting:
            self.service.close()

    @property
    def ready(self) -> bool:
        return self.service.ready

    def query(self, request: QueryRequest) -> QueryResponse:
        started = time.perf_counter()
        refuse_invalid_text([("query", request.query), ("filter", request.filter)], QueryError)
        k = bounded_k(request.k, self.settings.max_k, "serve --max-k", "query")
        where = narrowed_filter(getattr(self.pipeline.config.retriever, "filter", None), request.filter)
        documents = self.running().query(request.query, k=k, filter=where)
        return query_response(request.query, request.k, documents, started)

    def add_documents(self, request: AddDocumentsRequest) -> Any:
        limit = self.settings.max_documents
        if len(request.documents) > limit:
            raise HTTPException(
                413,
                f"{len(request.documents)} documents in one request; this server takes at most {limit} "
                "(serve --max-documents). A POST replaces its source whole: split a larger set into several sources",
            )
        refuse_invalid_text(document_fields(request.source, request.documents), DocumentError)
        documents = [Document(page_content=d.content, metadata=d.metadata, id=d.id) for d in request.documents]
        return jsonable_encoder(self.running().add_documents(documents, source=request.source))

    def refuse_over_limit(self, count: int, what: str) -> None:
        limit = self.settings.max_documents
        if count > limit:
            raise HTTPException(
                413, f"{count} {what} in one request; this server takes at most {limit} (serve --max-documents): split them"
            )

    def embeddings(self, request: EmbeddingsRequest) -> dict[str, Any]:
        single = isinstance(request.input, str)
        texts = [request.input] if single else list(request.input)
        self.refuse_over_limit(len(texts), "inputs")
        if not texts:
            raise QueryError("input is empty: give a string or a list of strings to embed")
        if not isinstance(texts[0], str):
            raise QueryError(
                "input: token ids are not accepted, send the texts (this server tokenizes with its own model; "
                "LangChain's OpenAIEmbeddings sends token ids unless check_embedding_ctx_length=False)"
            )
        names = ["input"] if single else [f"input[{number}]" for number in range(len(texts))]
        refuse_invalid_text(zip(names, texts), QueryError)
        for name, text in zip(names, texts):
            if not text:
                raise QueryError(f"{name} is an empty string: give text to embed, or leave it out")
        embedder = self.pipeline.embeddings
        if request.dimensions is not None:
            dimension = int(embedder.dimension)
            if request.dimensions != dimension:
                raise QueryError(
                    f"dimensions: this model's vectors have {dimension} dimensions and are never shortened; "
                    f"leave dimensions out, or give {dimension}"
                )
        embedded = self.running().embed(texts, kind=request.input_type)
        if request.encoding_format == "base64":
            vectors: list[Any] = [
                base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii") for row in embedded.vectors
            ]
        else:
            vectors = embedded.vectors.tolist()
        tokens = sum(embedded.tokens)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": number, "embedding": vector} for number, vector in enumerate(vectors)],
            "model": model_name(embedder, self.pipeline.config.embeddings.model),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def rerank(self, request: RerankRequest) -> dict[str, Any]:
        reranker = self.pipeline.reranker
        if reranker is None:
            raise HTTPException(404, no_reranker_message(self.pipeline))
        self.refuse_over_limit(len(request.documents), "documents")
        if not request.documents:
            raise QueryError("documents is empty: give at least one document to rank")
        if request.rank_fields is not None and request.rank_fields != ["text"]:
            raise QueryError('rank_fields: this server ranks the documents\' text only; leave it out or send ["text"]')
        texts = [document if isinstance(document, str) else document.text for document in request.documents]
        refuse_invalid_text(
            [("query", request.query), *((f"documents[{number}]", text) for number, text in enumerate(texts))], QueryError
        )
        reranked = self.running().rerank(request.query, texts, top_n=request.top_n)
        results = []
        for index, score in reranked.ranking:
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if request.return_documents:
                result["document"] = {"text": texts[index]}
            results.append(result)
        model = model_name(reranker, self.pipeline.config.reranker.model)
        return {"results": results, "model": model, "usage": {"total_tokens": reranked.tokens}}

    def delete_documents(self, request: DeleteDocumentsRequest) -> Any:
        if (request.source is None) == (request.ids is None):
            raise HTTPException(400, "give exactly one of `source` or `ids`")
        refuse_invalid_text([("source", request.source), ("ids", request.ids)], DocumentError)
        chosen = {"source": request.source} if request.source is not None else {"ids": request.ids}
        return jsonable_encoder(self.running().delete(**chosen))

    def stats(self) -> dict[str, Any]:
        pipeline = self.pipeline
        index = jsonable_encoder(self.running().index_stats())  # read on a reader's view: a committed state
        reranker = pipeline.config.reranker
        chunks = index.get("chunks") if isinstance(index, dict) else None
        if not isinstance(chunks, int):
            chunks = self.service.stats()["index_chunks"]
        return {
            "name": pipeline.config.name,
            "collection": pipeline.config.vectorstore.collection,
            "physical_collection": pipeline.store.collection_name,
            "chunks": chunks,
            "embeddings_model": str(pipeline.config.embeddings.model),
            "reranker_model": str(reranker.model) if reranker is not None else None,
            "retriever": pipeline.config.retriever.type,
            "index": index,  # sizes, fingerprint, sources
        }

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1)}


class SafeJSONResponse(JSONResponse):
    """JSON as UTF-8, or, when some text is not valid Unicode (a 422 that echoes a client's lone
    surrogate), with every non-ASCII character escaped: the same JSON, never a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _refusal(status: int, message: str, path: str | None = None, headers: dict[str, str] | None = None) -> SafeJSONResponse:
    content: dict[str, Any] = {"detail": message}
    if path in OPENAI_PATHS:
        # the openai client shows error.message and nothing else of a body; `detail` stays for every other client
        content["error"] = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                            "param": None, "code": None}
    return SafeJSONResponse(status_code=status, content=content, headers=headers or HEADERS_OF_STATUS.get(status))


class HostCheck:
    """Answer only requests whose ``Host`` header names an allowed host (400 otherwise).

    A browser sends the name in the address bar: a page whose own name was rebound to 127.0.0.1
    reaches a loopback server with its own name in ``Host``, and is turned away here."""

    def __init__(self, app: Any, allowed: AllowedHosts):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.allowed.any:
            header = Headers(scope=scope).get("host")
            host = host_of(header) if header is not None else None
            if host is None or not self.allowed.allows(host):
                shown = "no Host header" if header is None else f"Host {header[:100]!r}"
                message = f"{shown} is not a name this server answers to; the operator can add it with serve --allowed-host"
                await _refusal(400, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with 413, whether its length is declared or it
    arrives in chunks: the body is read (up to the limit) before the app sees it."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    def _too_large(self) -> SafeJSONResponse:
        return _refusal(413, f"the request body is over {self.limit / 2**20:g} MiB, this server's limit (serve --max-body-mb)")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        last: dict[str, Any] | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                last = message
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._too_large()(scope, receive, send)
                return
            parts.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return last if last is not None else {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class AccessLog:
    """One line per request on the ``rag_pipeline.server.access`` logger (method, path, status,
    duration, request id), the server's per-endpoint counter and latency histogram, and the request
    id echoed in ``X-Request-ID``: the client's when it sent a plain one, else a new one."""

    def __init__(self, app: Any, metrics: "ServerMetrics"):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = Headers(scope=scope).get("x-request-id")
        request_id = given if given is not None and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets when the app fails before it answers

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            method, path = scope.get("method", "?"), scope.get("path", "?")
            self.metrics.observe(method, path, status, seconds)
            access_log.info(
                "%s %s %d %.1fms request_id=%s", method, ascii(path)[1:-1], status, 1000 * seconds, request_id,
                extra={"method": method, "path": path, "status": status, "duration_ms": round(1000 * seconds, 2),
                       "request_id": request_id},
            )


class ServerMetrics:
    """``/metrics``: the server's per-endpoint requests and latency, and the service's own
    counters (:meth:`RetrievalService.stats`) read at each scrape, in one registry per app."""

    ENDPOINTS = frozenset({
        "/", "/query", "/documents", "/stats", "/health", "/ready", "/metrics", "/openapi.json", "/docs", "/redoc",
        "/v1/embeddings", "/rerank", "/v1/rerank",
    })

    def __init__(self, service: RetrievalService):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "rag_http_requests", "HTTP requests answered, by method, endpoint and status.",
            ["method", "endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "rag_http_request_duration_seconds", "Time to answer an HTTP request, by method and endpoint.",
            ["method", "endpoint"], registry=self.registry,
        )
        self.registry.register(ServiceCollector(service))

    def endpoint(self, path: str) -> str:
        return path if path in self.ENDPOINTS else "other"  # a bounded set of label values

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        endpoint = self.endpoint(path)
        method = method if method in ("GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS") else "other"
        self.requests.labels(method, endpoint, str(status)).inc()
        self.latency.labels(method, endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))



def _counter_by_kind(name: str, documentation: str, label: str, counts: dict[str, dict[str, int]]) -> Any:
    """A counter family labelled by request kind and ``label``, from ``{kind: {value: count}}``."""
    family = CounterMetricFamily(name, documentation, labels=["kind", label])
    for kind, by_value in counts.items():
        for value, count in by_value.items():
            family.add_metric([kind, value], count)
    return family

class ServiceCollector:
    """A ``prometheus_client`` collector over :meth:`RetrievalService.stats`, read at each scrape."""

    def __init__(self, service: RetrievalService):
        self.service = service

    def describe(self) -> list[Any]:
        return []  # names are only known by collecting; nothing to check against at registration

    def collect(self) -> Iterator[Any]:
        stats = self.service.stats()
        yield _counter_by_kind(
            "rag_service_requests", "Service requests by kind (query, embed, rerank, add, delete) and outcome.", "outcome",
            stats["requests"],
        )
        yield _counter_by_kind(
            "rag_service_errors", "Service requests that failed, by kind and error type.", "type", stats["errors"]
        )
        latency = HistogramMetricFamily(
            "rag_service_latency_seconds", "Time a service request took, from admission to answer.", labels=["kind"]
        )
        for kind, snapshot in stats["latency_seconds"].items():
            latency.add_metric([kind], [(_le(b), c) for b, c in snapshot["buckets"]], snapshot["sum"])
        yield latency
        batches = HistogramMetricFamily(
            "rag_service_batch_size", "Queries (or reranker pairs) computed in one forward pass.", labels=["stage"]
        )
        for stage, snapshot in stats["batch_sizes"].items():
            batches.add_metric([stage], [(_le(b), c) for b, c in snapshot["buckets"]], snapshot["sum"])
        yield batches
        gauges = (
            ("rag_service_ready", "1 when the models are loaded and the index is open.", int(bool(stats["ready"]))),
            ("rag_service_workers", "Threads answering queries.", stats["workers"]),
            ("rag_service_queries_in_flight", "Queries admitted and not yet answered.", stats["queries_in_flight"]),
            ("rag_service_queue_depth", "Queries waiting for a worker.", stats["queries_queued"]),
            ("rag_service_writes_in_flight", "Writes admitted and not yet committed.", stats["writes_in_flight"]),
            ("rag_service_writes_queued", "Writes waiting behind the one being written.", stats["writes_queued"]),
            ("rag_service_index_chunks", "Chunks in the index as of the last commit.", stats["index_chunks"]),
        )
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)


def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(
    pipeline: Pipeline,
    settings: ServerSettings | None = None,
    *,
    warm_up: bool = True,
    service_settings: ServiceSettings | None = None,
) -> FastAPI:
    """The FastAPI app over ``pipeline``, its queries and writes run by a
    :class:`~rag_pipeline.service.RetrievalService` (``service_settings``: workers, batching,
    queue; by default ``ServiceSettings()`` with the config's ``ingest.lock_timeout`` as the
    write's lock wait). The service starts here (models loaded, index opened) unless
    ``warm_up=False``, then at the first request that needs it; the app's shutdown closes it,
    finishing the requests it took."""
    settings = settings or ServerSettings()
    service = PipelineService(pipeline, settings, service_settings)
    if warm_up:
        service.warm_up()
    metrics = ServerMetrics(service.service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        import anyio

        await anyio.to_thread.run_sync(service.close)  # drains in-flight work (uvicorn: on SIGTERM too)

    def authorised(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise HTTPException(401, "missing or wrong token: send the header `Authorization: Bearer <token>`")

    docs_open = settings.token is None
    app = FastAPI(
        title="rag-pipeline",
        summary=f"Retrieval over the {pipeline.config.name!r} index ({pipeline.config.vectorstore.collection}).",
        version=_version(),
        default_response_class=SafeJSONResponse,
        docs_url="/docs" if docs_open else None,
        redoc_url="/redoc" if docs_open else None,
        openapi_url="/openapi.json" if docs_open else None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    # the outermost (last added) runs first: a foreign Host is refused before its body is read,
    # and every request, refused or not, gets its access-log line and request id
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HostCheck, allowed=AllowedHosts(settings.allowed_hosts))
    app.add_middleware(AccessLog, metrics=metrics)

    @app.exception_handler(RagPipelineError)
    async def user_error(request: Request, exc: RagPipelineError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF_ERROR if isinstance(exc, kind)), 400)
        return _refusal(status, str(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path in OPENAI_PATHS and isinstance(exc.detail, str):
            return _refusal(exc.status_code, exc.detail, request.url.path, exc.headers)
        return await http_exception_handler(request, exc)  # FastAPI's own, as before

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, answered with SafeJSONResponse: the errors echo the client's input
        return SafeJSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})

    guarded = [Depends(authorised)]

    if not docs_open:
        # the API's description is the token holder's: a client with it fetches the spec with the header
        @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
        def openapi() -> dict[str, Any]:
            return app.openapi()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/ready")
    def ready() -> Any:
        if service.ready:
            return {"status": "ready"}
        return _refusal(503, "not ready: the models are loading, or the server is shutting down")

    @app.get("/metrics", dependencies=guarded, include_in_schema=False)
    def prometheus_metrics() -> Response:
        body, media_type = metrics.render()
        return Response(content=body, media_type=media_type)

    @app.post("/query", response_model=QueryResponse, dependencies=guarded)
    def query(request: QueryRequest) -> QueryResponse:
        return service.query(request)

    @app.post("/documents", dependencies=guarded)
    def add_documents(request: AddDocumentsRequest) -> Any:
        return {"result": service.add_documents(request)}

    @app.delete("/documents", dependencies=guarded)
    def delete_documents(request: DeleteDocumentsRequest) -> Any:
        return {"result": service.delete_documents(request)}

    @app.get("/stats", dependencies=guarded)
    def stats() -> dict[str, Any]:
        return service.stats()

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, dependencies=guarded)
    def embeddings(request: EmbeddingsRequest) -> Any:
        """The configured embedder's vectors, in OpenAI's shape (the `openai` client's
        `embeddings.create` works with `base_url=<server>/v1`)."""
        return service.embeddings(request)

    @app.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True, dependencies=guarded)
    def rerank(request: RerankRequest) -> Any:
        """The configured cross-encoder's score of each document against the query, best first
        (Cohere's and Jina's shape); 404 when the config has no reranker."""
        return service.rerank(request)

    # where Cohere's and Jina's clients post when given this server as their base URL
    app.post(
        "/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, dependencies=guarded,
        include_in_schema=False,
    )(rerank)

    return app


def _version() -> str:
    from .. import __version__

    return __version__


def run_server(app: FastAPI, host: str, port: int, *, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
