"""``rag-pipeline mcp``: the index as tools a model can call, over the Model Context Protocol.

    search          query, k?, filter?   -> ranked chunks with every score (POST /query's results)
    list_sources                         -> each source: origin, chunk count, last written
    add_documents   source, documents    -> counts written   (only with ``allow_writes``)
    delete          source | ids         -> chunks removed   (only with ``allow_writes``)

A thin layer over the same Python API ``serve`` wraps: queries and writes run in a
:class:`~rag_pipeline.service.RetrievalService`, results are built by the HTTP server's own
:func:`~rag_pipeline.server.app.result_item`, and the server's boundary holds here too (``k`` at most
``max_k``, a ``filter`` narrows the configured ``retriever.filter``, text must be valid Unicode).
Each tool answers with structured content (its output schema is published) and a short text
rendering for clients that show the model text only. A library error (``RagPipelineError``) is a
tool error carrying its one-line message; anything else is the SDK's generic tool error, its
traceback on the server's log only.

Transports: stdio (the client starts the server as a child process; standard output carries the
protocol alone, so everything else, model loading included, is sent to standard error), or
streamable HTTP on a port (``/mcp``), where a token, when set, is wanted as
``Authorization: Bearer <token>``.

Needs the ``mcp`` extra (the official SDK, 2.x) and, for the result conversion shared with
``serve``, FastAPI from the ``serve`` extra.

(The module shares its name with the SDK's package; imports here are absolute, so ``mcp`` below is
always the SDK.)
"""

from __future__ import annotations

import hmac
import os
import sys
import time
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterator

from langchain_core.documents import Document
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from ..errors import ConfigError, DocumentError, QueryError, RagPipelineError, first_line, positive_count
from ..pipeline import Pipeline
from ..service import RetrievalService, ServiceSettings
from .app import (
    DocumentIn,
    QueryResponse,
    bounded_k,
    document_fields,
    narrowed_filter,
    query_response,
    refuse_invalid_text,
)

__all__ = ["McpSettings", "create_mcp_server", "run_mcp", "BearerToken", "stdout_to_stderr"]

UNAUTHORISED = "missing or wrong token: send the header `Authorization: Bearer <token>`"


@dataclass(frozen=True)
class McpSettings:
    """What the tool server lets a client do. ``allow_writes``: offer ``add_documents`` and
    ``delete`` (a client cannot call a tool it is not offered). ``max_k``: the most results one
    ``search`` may ask for. ``token``: over HTTP, the bearer token every request must carry."""

    allow_writes: bool = False
    max_k: int = 100
    token: str | None = None

    def __post_init__(self) -> None:
        positive_count(self.max_k, "McpSettings.max_k")
        if self.token is not None and not self.token:
            raise ConfigError("McpSettings.token: an empty token guards nothing; give one, or None")


# -- what the tools answer --------------------------------------------------------------------------
class SourceItem(BaseModel):
    source: str = Field(description="The source's name: a file path under the indexed folder, or the name given to add_documents.")
    origin: str = Field(description="'folder' (a file the ingest keeps in step) or 'api' (added with add_documents).")
    chunks: int = Field(description="Chunks the source holds in the index.")
    recorded_at: str = Field(description="When the source was last written, ISO 8601 in UTC.")


class SourcesResponse(BaseModel):
    sources: list[SourceItem]
    total_chunks: int = Field(description="Chunks of every source together.")


class AddResponse(BaseModel):
    source: str
    documents: int = Field(description="Documents given.")
    chunks: int = Field(description="Chunks the source holds now.")
    added: int = Field(description="Chunks written (new or changed); unchanged ones are kept as they were.")
    deleted: int = Field(description="Chunks removed: what the source held before and no longer does.")
    collection_count: int = Field(description="Chunks in the whole index after the write.")


class DeleteResponse(BaseModel):
    deleted: int = Field(description="Chunks removed (ids the index did not hold are ignored).")


SEARCH = """Search the document index {name!r} for the passages most relevant to a question or topic, best first.
Use it before answering anything about what these documents say, and cite each passage's `source` when you use it.
`query`: natural language or keywords; if the results look off-topic, rephrase and search again.
`k`: how many passages (default: the index's configured number; at most {max_k}).
`filter`: narrow by metadata with a Chroma `where` filter, e.g. {{"source": "guides/x.md"}}, \
{{"file_type": {{"$in": ["md", "txt"]}}}} or {{"$and": [...]}} (operators $eq $ne $gt $gte $lt $lte $in $nin $and $or), \
on fields seen in a result's `metadata`; list_sources gives the source names. The server's own filter always applies too.
Returns `results`, each with `rank`, `content` (the passage text), `source` (its file), `doc_id`, `chunk_index` \
(position in its document, 0 = first), `start_index` (character offset), `id`, `scores` (`score` is what ranks it; \
`dense_score`/`bm25_score` and their ranks with hybrid retrieval; `rerank_score` when reranked) and `metadata`."""

LIST_SOURCES = """List what the index {name!r} holds: every source with its origin ('folder': a file under the \
indexed folder; 'api': documents added with add_documents), its chunk count and when it was last written (UTC).
Use it to see what can be searched, to get exact source names for a search `filter` or for `delete`, \
or to check that a write landed. Takes no arguments."""

ADD_DOCUMENTS = """Add documents to the index {name!r} under one `source` name (e.g. 'notes:2024-05-01-meeting'), \
so that search finds them.
The documents given become the whole of that source: calling again with the same `source` replaces what it held \
(unchanged documents are not embedded again), so send every document of the source each time.
Each document: `content` (the text; it is split into chunks), optional `metadata` (flat key: value pairs that a \
search `filter` can select on) and optional `id`.
Returns how many chunks the source now holds, were written and were removed. A source name that is a file of the \
indexed folder is refused (the folder's files change only by ingest)."""

DELETE = """Remove documents that were added with add_documents from the index {name!r}: give either `source` \
(one name, or a list, as list_sources shows them with origin 'api') or `ids` (chunk ids as search returns them), \
not both. Returns the number of chunks removed. Files of the indexed folder cannot be removed here."""


# -- the server --------------------------------------------------------------------------------------
class _Tools:
    """The tools' bodies over one started service. Each returns a ``CallToolResult``: its
    structured content and text, or, for a library error, ``is_error`` with the one-line message."""

    def __init__(self, pipeline: Pipeline, service: RetrievalService, settings: McpSettings):
        self.pipeline = pipeline
        self.service = service
        self.settings = settings

    @staticmethod
    def answer(work: Callable[[], tuple[BaseModel, str]]) -> CallToolResult:
        try:
            output, text = work()
        except RagPipelineError as exc:
            return CallToolResult(content=[TextContent(type="text", text=first_line(exc, None))], is_error=True)
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=output.model_dump(mode="json"))

    # search ------------------------------------------------------------------------------------------
    def search(self, query: str, k: int | None, filter: dict[str, Any] | None) -> tuple[QueryResponse, str]:
        started = time.perf_counter()
        refuse_invalid_text([("query", query), ("filter", filter)], QueryError)
        if k is not None and (isinstance(k, bool) or k <= 0):  # (serve's request model refuses these itself)
            raise QueryError(f"k: must be a positive whole number, got {k!r}")
        count = bounded_k(k, self.settings.max_k, "mcp --max-k", "search")
        where = narrowed_filter(getattr(self.pipeline.config.retriever, "filter", None), filter)
        response = query_response(query, k, self.service.query(query, k=count, filter=where), started)
        return response, render_results(response)

    # list_sources -----------------------------------------------------------------------------------
    def sources(self) -> tuple[SourcesResponse, str]:
        listed = self.service.index_sources()
        response = SourcesResponse(
            sources=[SourceItem(**info.to_dict()) for info in listed], total_chunks=sum(info.chunks for info in listed)
        )
        return response, render_sources(response)

    # writes ------------------------------------------------------------------------------------------
    def add_documents(self, source: str, documents: list[DocumentIn]) -> tuple[AddResponse, str]:
        refuse_invalid_text(document_fields(source, documents), DocumentError)
        if not documents:
            raise DocumentError("documents: give at least one {content, metadata?} (to remove a source, call delete)")
        report = self.service.add_documents(
            [Document(page_content=d.content, metadata=d.metadata, id=d.id) for d in documents], source=source
        )
        response = AddResponse(
            source=source, documents=len(documents), chunks=report.chunks, added=report.added,
            deleted=report.deleted, collection_count=report.collection_count,
        )
        text = (
            f"source {source!r}: {len(documents)} documents, {report.chunks} chunks "
            f"({report.added} written, {report.deleted} removed); the index holds {report.collection_count} chunks"
        )
        return response, text

    def delete(self, source: str | list[str] | None, ids: list[str] | None) -> tuple[DeleteResponse, str]:
        if (source is None) == (ids is None):
            raise DocumentError("give exactly one of `source` or `ids`")
        refuse_invalid_text([("source", source), ("ids", ids)], DocumentError)
        chosen = {"source": source} if source is not None else {"ids": ids}
        removed = self.service.delete(**chosen)
        what = f"source(s) {source!r}" if source is not None else f"{len(ids or [])} id(s)"
        return DeleteResponse(deleted=removed), f"deleted {removed} chunks of {what}"


def render_results(response: QueryResponse) -> str:
    """The results as a model reads them in text: one header line per passage, then its text."""
    if not response.results:
        return f"No results for {response.query!r}."
    lines = [f"{len(response.results)} results for {response.query!r}, best first (ranked by {response.ranked_by}):"]
    for item in response.results:
        where = item.doc_id or item.source or "?"
        position = f", chunk {item.chunk_index}" if item.chunk_index is not None else ""
        score = item.scores.get(response.ranked_by)
        shown = f"{response.ranked_by} {score:.4f}, " if score is not None else ""
        lines += ["", f"[{item.rank}] {where}{position} ({shown}id {item.id})", item.content]
    return "\n".join(lines)


def render_sources(response: SourcesResponse) -> str:
    if not response.sources:
        return "The index holds no sources."
    lines = [f"{len(response.sources)} sources, {response.total_chunks} chunks (origin, chunks, last written, source):"]
    lines += [f"  {s.origin:<6} {s.chunks:>6}  {s.recorded_at}  {s.source}" for s in response.sources]
    return "\n".join(lines)


# Parameter descriptions are static (the signatures are read from this module's names); what
# depends on the server (max_k, the index's name) is in each tool's description.
Query = Annotated[str, Field(description="What to search for: a question, a topic or keywords.")]
ResultCount = Annotated[int | None, Field(description="How many passages to return (default: the index's configured number).")]
WhereFilter = Annotated[
    dict[str, Any] | None,
    Field(description='A Chroma `where` filter on chunk metadata, e.g. {"source": "guides/x.md"}; it narrows the server\'s own filter.'),
]
SourceName = Annotated[str, Field(description="The name the documents are kept under; delete removes them by it.")]
Documents = Annotated[list[DocumentIn], Field(description="The documents: {content, metadata?, id?} each.")]
SourceNames = Annotated[str | list[str] | None, Field(description="A source added with add_documents, or a list of them.")]
ChunkIds = Annotated[list[str] | None, Field(description="Chunk ids, as search returns them.")]


def create_mcp_server(pipeline: Pipeline, service: RetrievalService, settings: McpSettings | None = None) -> MCPServer:
    """The MCP server over ``pipeline``, whose queries and writes ``service`` (started, and closed by
    the caller) runs: ``search`` and ``list_sources``, and ``add_documents`` and ``delete`` when
    ``settings.allow_writes``."""
    from .. import __version__

    settings = settings or McpSettings()
    tools = _Tools(pipeline, service, settings)
    name = pipeline.config.name
    offered = "search, list_sources" + (", add_documents, delete" if settings.allow_writes else "")
    server: MCPServer = MCPServer(
        name="rag-pipeline",
        title=f"rag-pipeline: {name}",
        version=__version__,
        instructions=(
            f"Retrieval over the document index {name!r} (collection {pipeline.config.vectorstore.collection!r}). "
            "Call search to find passages relevant to a question before answering from these documents, and cite "
            f"their sources; list_sources shows what the index holds. Tools: {offered}."
        ),
    )
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    def search(query: Query, k: ResultCount = None, filter: WhereFilter = None) -> Annotated[CallToolResult, QueryResponse]:
        return tools.answer(lambda: tools.search(query, k, filter))

    def list_sources() -> Annotated[CallToolResult, SourcesResponse]:
        return tools.answer(tools.sources)

    server.add_tool(search, title="Search the index", description=SEARCH.format(name=name, max_k=settings.max_k), annotations=reads)
    server.add_tool(list_sources, title="List the index's sources", description=LIST_SOURCES.format(name=name), annotations=reads)
    if settings.allow_writes:
        writes = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)

        def add_documents(source: SourceName, documents: Documents) -> Annotated[CallToolResult, AddResponse]:
            return tools.answer(lambda: tools.add_documents(source, documents))

        def delete(source: SourceNames = None, ids: ChunkIds = None) -> Annotated[CallToolResult, DeleteResponse]:
            return tools.answer(lambda: tools.delete(source, ids))

        server.add_tool(add_documents, title="Add documents", description=ADD_DOCUMENTS.format(name=name), annotations=writes)
        server.add_tool(delete, title="Delete documents", description=DELETE.format(name=name), annotations=writes)
    return server


# -- transports --------------------------------------------------------------------------------------
class BearerToken:
    """ASGI middleware: an HTTP request without ``Authorization: Bearer <token>`` is answered 401
    before it reaches the MCP app; the lifespan (the SDK's session manager) passes through."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = Headers(scope=scope).get("authorization", "")
            if not hmac.compare_digest(given.encode(), self.expected):
                refusal = JSONResponse({"detail": UNAUTHORISED}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what is written to standard output to standard error meanwhile: Python's prints and
    what C libraries write to the descriptor itself. Over stdio, standard output is the protocol's
    and a stray line there breaks the client's reading; the client keeps standard error as the
    server's log."""
    for stream in (sys.stdout, sys.__stdout__):
        if stream is not None:
            stream.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with redirect_stdout(sys.stderr):
            yield
    finally:
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()  # what was buffered meanwhile belongs to the log, where fd 1 still points
        os.dup2(saved, 1)
        os.close(saved)


def run_mcp(
    pipeline: Pipeline,
    settings: McpSettings | None = None,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    service_settings: ServiceSettings | None = None,
    log_level: str = "warning",
    announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> None:
    """Load the models, start the service, and serve MCP until the client leaves: over stdio when
    ``port`` is None, else streamable HTTP at ``http://host:port/mcp``. The service is closed after."""
    settings = settings or McpSettings()
    stdio = port is None
    with stdout_to_stderr() if stdio else nullcontext():
        service = RetrievalService(pipeline, service_settings).start()
    try:
        server = create_mcp_server(pipeline, service, settings)
        if stdio:
            announce(f"rag-pipeline mcp: serving {pipeline.config.name!r} on stdio")
            server.run("stdio")
            return
        import uvicorn

        # host: the SDK turns on its Host/Origin check (DNS rebinding) for a loopback bind
        app: Any = server.streamable_http_app(host=host)
        if settings.token is not None:
            app = BearerToken(app, settings.token)
        announce(f"rag-pipeline mcp: serving {pipeline.config.name!r} on http://{host}:{port}/mcp (Ctrl-C stops)")
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        service.close()
