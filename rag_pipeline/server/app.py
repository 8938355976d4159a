"""The HTTP API over one :class:`~rag_pipeline.pipeline.Pipeline` (FastAPI), and the search page.

    POST   /query       {"query": "...", "k": 5, "filter": {...}}  -> ranked chunks with every score
    POST   /documents   {"documents": [{"content", "metadata", "id"}], "source": "..."}
    DELETE /documents   {"source": "..."} or {"ids": [...]}
    GET    /stats       collection, model, chunk count
    GET    /health      liveness (never needs the token)
    GET    /            the search page;  /docs, /openapi.json: FastAPI's OpenAPI docs

Errors a user causes (``RagPipelineError``) answer 400 with ``{"detail": "<the one-line message>"}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder  # reports, dataclasses, paths -> JSON
from fastapi.responses import HTMLResponse, JSONResponse
from langchain_core.documents import Document
from pydantic import BaseModel, ConfigDict, Field

from ..errors import RagPipelineError
from ..pipeline import Pipeline

# The metadata keys that explain a rank: the first stage's (fused, when hybrid) score, each arm's
# score and rank, and the cross-encoder's score. A key a result lacks is left out.
SCORE_KEYS = ("score", "dense_score", "dense_rank", "bm25_score", "bm25_rank", "rerank_score")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


@dataclass(frozen=True)
class ServerSettings:
    """``token``: when set, every endpoint but ``/health`` and the page wants
    ``Authorization: Bearer <token>``."""

    token: str | None = None


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="The text to search for.")
    k: int | None = Field(None, gt=0, description="Number of results (default: the config's).")
    filter: dict[str, Any] | None = Field(None, description="Chroma `where` filter for this call, e.g. {\"file_type\": \"md\"}.")


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

    documents: list[DocumentIn] = Field(min_length=1)
    source: str = Field(description="Where these documents come from, e.g. 'api:notes'; delete them by it later.")


class DeleteDocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    ids: list[str] | None = None


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


class PipelineService:
    """The one pipeline a server holds: models loaded at start, calls one at a time.

    One at a time because the pipeline's index views (Chroma's client, the record check that follows
    other processes' writes) are not made for concurrent use; a query takes milliseconds, so a lock
    costs little next to a second copy of the model.
    """

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self._lock = threading.Lock()
        self._retrievers: dict[int | None, Any] = {}
        self.started = time.time()

    def warm_up(self) -> None:
        """Refuse now, not at the first request, when there is no index; load every model."""
        with self._lock:
            self._retriever(None)
            self.pipeline.embeddings.warm_up()
            if self.pipeline.reranker is not None:
                self.pipeline.reranker.warm_up()
            self.pipeline.embeddings.embed_query("warm up")  # the first encode pays one-off costs

    def _retriever(self, k: int | None):
        # a retriever is a few objects over the shared stages: one per k asked for, built once
        if k not in self._retrievers:
            self._retrievers[k] = self.pipeline.as_retriever(k=k)
        return self._retrievers[k]

    def query(self, request: QueryRequest) -> QueryResponse:
        started = time.perf_counter()
        with self._lock:
            retriever = self._retriever(request.k)
            if request.filter is not None:
                # the per-call filter of the retriever's RunnableConfig (rag_pipeline.retrieval)
                documents = retriever.invoke(request.query, config={"configurable": {"filter": request.filter}})
            else:
                documents = retriever.invoke(request.query)
        reranked = any("rerank_score" in d.metadata for d in documents)
        return QueryResponse(
            query=request.query,
            k=request.k,
            ranked_by="rerank_score" if reranked else "score",
            took_ms=round(1000 * (time.perf_counter() - started), 2),
            results=[result_item(rank, d) for rank, d in enumerate(documents, start=1)],
        )

    def add_documents(self, request: AddDocumentsRequest) -> Any:
        documents = [Document(page_content=d.content, metadata=d.metadata, id=d.id) for d in request.documents]
        with self._lock:
            return jsonable_encoder(_document_api(self.pipeline, "add_documents")(documents, source=request.source))

    def delete_documents(self, request: DeleteDocumentsRequest) -> Any:
        if (request.source is None) == (request.ids is None):
            raise HTTPException(400, "give exactly one of `source` or `ids`")
        with self._lock:
            chosen = {"source": request.source} if request.source is not None else {"ids": request.ids}
            return jsonable_encoder(_document_api(self.pipeline, "delete")(**chosen))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pipeline = self.pipeline
            store = pipeline.store
            reranker = pipeline.config.reranker
            stats = {
                "name": pipeline.config.name,
                "collection": store.config.collection,
                "physical_collection": store.collection_name,
                "chunks": store.count(),
                "embeddings_model": str(pipeline.config.embeddings.model),
                "reranker_model": str(reranker.model) if reranker is not None else None,
                "retriever": pipeline.config.retriever.type,
            }
            if hasattr(pipeline, "stats"):  # the documents API's fuller account (sizes, fingerprint, sources)
                stats["index"] = jsonable_encoder(pipeline.stats())
            return stats

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1)}


def _document_api(pipeline: Pipeline, name: str):
    method = getattr(pipeline, name, None)
    if method is None:  # pragma: no cover - present once the documents API is merged
        raise HTTPException(501, f"this version of rag-pipeline has no Pipeline.{name}")
    return method


def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(pipeline: Pipeline, settings: ServerSettings | None = None, *, warm_up: bool = True) -> FastAPI:
    """The FastAPI app over ``pipeline`` (its models are loaded here unless ``warm_up=False``)."""
    settings = settings or ServerSettings()
    service = PipelineService(pipeline)
    if warm_up:
        service.warm_up()

    def authorised(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise HTTPException(401, "missing or wrong token: send the header `Authorization: Bearer <token>`")

    app = FastAPI(
        title="rag-pipeline",
        summary=f"Retrieval over the {pipeline.config.name!r} index ({pipeline.config.vectorstore.collection}).",
        version=_version(),
    )
    app.state.service = service

    @app.exception_handler(RagPipelineError)
    async def user_error(request: Request, exc: RagPipelineError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    guarded = [Depends(authorised)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

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

    return app


def _version() -> str:
    from .. import __version__

    return __version__


def run_server(app: FastAPI, host: str, port: int, *, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
