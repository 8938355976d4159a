"""``rag-pipeline mcp`` driven by the MCP SDK's own client: over real stdio (the client starts
``python -m rag_pipeline.cli mcp CONFIG``, as an AI client does) and over streamable HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("mcp.server.mcpserver")  # the SDK's 2.x

import httpx2  # noqa: E402  (the SDK's HTTP client)
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from model_factory import REPO  # noqa: E402
from serving import free_port, hybrid_index, stop  # noqa: E402,F401  (fixtures)

from rag_pipeline.cli import main  # noqa: E402

TOKEN = "s3cret-for-tests"
QUERY = "how do I fix a flat bicycle tyre?"
READS = {"search", "list_sources"}
WRITES = {"add_documents", "delete"}


def server_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rag_pipeline.cli", "mcp", str(config), *extra]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


@asynccontextmanager
async def connected(config: Path, log: Path, *extra: str) -> AsyncIterator[ClientSession]:
    """A session with a server the SDK's stdio client started; on leaving, no line the server
    wrote to standard output was anything but a protocol message."""
    command = server_command(config, *extra)
    parameters = StdioServerParameters(command=command[0], args=command[1:], cwd=REPO, env=environment())
    stray: list[Any] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):  # a stdout line that is not JSON-RPC
            stray.append(message)

    with log.open("w", encoding="utf-8") as errlog:
        async with stdio_client(parameters, errlog=errlog) as (read, write):
            async with ClientSession(read, write, message_handler=on_message) as session:
                await session.initialize()
                yield session
    assert stray == [], log.read_text(encoding="utf-8")


async def refused(session: ClientSession, tool: str, arguments: dict[str, Any]) -> str:
    """The text of a tool error, checked to be one line and no traceback."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    return text


async def test_the_tools_answer_over_stdio_as_the_python_api_does(hybrid_index, tmp_path):
    """One server process (each costs seconds of imports) for every tool; the HTTP test below checks
    that a server started without --allow-writes offers no write tool."""
    config, pipe = hybrid_index
    async with connected(config, tmp_path / "server.log", "--allow-writes", "--max-k", "5") as session:
        listed = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(listed) == READS | WRITES
        assert listed["search"].annotations.read_only_hint and not listed["delete"].annotations.read_only_hint
        assert "results" in listed["search"].output_schema["properties"]
        assert "at most 5" in listed["search"].description
        await search_answers_what_the_retriever_answers(session, pipe)
        await list_sources_answers_what_pipeline_sources_answers(session, pipe)
        await library_errors_are_one_line_tool_errors(session)
        await documents_added_are_found_then_deleted(session, pipe)


async def search_answers_what_the_retriever_answers(session: ClientSession, pipe: Any) -> None:
    result = await session.call_tool("search", {"query": QUERY, "k": 4})
    assert not result.is_error, result
    expected = pipe.as_retriever(k=4).invoke(QUERY)
    results = result.structured_content["results"]
    assert [r["id"] for r in results] == [d.id for d in expected]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    first, document = results[0], expected[0]
    assert (first["content"], first["source"], first["doc_id"], first["chunk_index"]) == (
        document.page_content, document.metadata["source"], document.metadata["doc_id"], document.metadata["chunk_index"]
    )
    # the fused score and each arm's score and rank, as the retriever kept them in metadata
    for key in ("score", "dense_score", "dense_rank", "bm25_score", "bm25_rank"):
        if key in document.metadata:
            assert first["scores"][key] == pytest.approx(document.metadata[key])
    assert "score" in first["scores"] and {"dense_score", "bm25_score"} & first["scores"].keys()
    assert result.structured_content["ranked_by"] == "score"
    # the text rendering, for clients that show the model text only: each passage with its place
    text = result.content[0].text
    assert text.startswith(f"4 results for {QUERY!r}") and document.page_content in text

    result = await session.call_tool("search", {"query": QUERY})  # k: the config's (retriever.k: 3)
    assert [r["id"] for r in result.structured_content["results"]] == [d.id for d in pipe.as_retriever().invoke(QUERY)]

    wanted = "guides/bicycle-maintenance.md"
    result = await session.call_tool("search", {"query": "how do I bake bread?", "filter": {"doc_id": wanted}})
    assert result.structured_content["results"]
    assert {r["doc_id"] for r in result.structured_content["results"]} == {wanted}


async def list_sources_answers_what_pipeline_sources_answers(session: ClientSession, pipe: Any) -> None:
    result = await session.call_tool("list_sources", {})
    assert not result.is_error, result
    assert result.structured_content["sources"] == [info.to_dict() for info in pipe.sources()]
    assert result.structured_content["total_chunks"] == pipe.store.count() > 0
    assert "guides/bicycle-maintenance.md" in result.content[0].text


async def library_errors_are_one_line_tool_errors(session: ClientSession) -> None:
    assert await refused(session, "search", {"query": "   "}) == "the query is empty: give the text to search for"
    bad_filter = await refused(session, "search", {"query": "bread", "filter": {"$bogus": 1}})
    assert bad_filter.startswith("filter: unknown operator '$bogus'"), bad_filter
    assert await refused(session, "search", {"query": "bread", "k": 6}) == (
        "k: this server answers at most 5 results per search (mcp --max-k); ask for fewer"
    )
    assert await refused(session, "search", {"query": "bread", "k": 0}) == "k: must be a positive whole number, got 0"
    assert await refused(session, "delete", {}) == "give exactly one of `source` or `ids`"


async def documents_added_are_found_then_deleted(session: ClientSession, pipe: Any) -> None:
    text = "The quokka is a small marsupial that lives on Rottnest Island and smiles for photographs."
    result = await session.call_tool(
        "add_documents", {"source": "api:animals", "documents": [{"content": text, "metadata": {"topic": "zoo"}}]}
    )
    assert not result.is_error, result
    added = result.structured_content
    assert (added["source"], added["documents"]) == ("api:animals", 1) and added["chunks"] == added["added"] >= 1

    result = await session.call_tool("search", {"query": "quokka Rottnest Island marsupial", "k": 1})
    found = result.structured_content["results"][0]
    assert (found["content"], found["source"], found["metadata"]["topic"]) == (text, "api:animals", "zoo")
    result = await session.call_tool("list_sources", {})
    listed = next(s for s in result.structured_content["sources"] if s["source"] == "api:animals")
    assert (listed["origin"], listed["chunks"]) == ("api", added["chunks"])

    folder_file = next(info.source for info in pipe.sources() if info.origin == "folder")
    assert folder_file in await refused(session, "delete", {"source": folder_file})  # the folder's files are ingest's

    result = await session.call_tool("delete", {"source": "api:animals"})
    assert not result.is_error and result.structured_content == {"deleted": added["chunks"]}
    result = await session.call_tool("search", {"query": "quokka Rottnest Island marsupial", "k": 3})
    assert text not in [r["content"] for r in result.structured_content["results"]]


def post(url: str, token: str | None = None) -> tuple[int, str]:
    """(status, body) of a bare POST to the MCP endpoint."""
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_streamable_http_wants_the_token_and_offers_no_writes_by_default(hybrid_index, tmp_path):
    config, pipe = hybrid_index
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    log = tmp_path / "server.log"
    with log.open("w", encoding="utf-8") as errlog:
        process = subprocess.Popen(
            server_command(config, "--port", str(port), "--token-env", "RAG_TEST_TOKEN"),
            cwd=REPO, env=environment(RAG_TEST_TOKEN=TOKEN), stdout=errlog, stderr=errlog,
        )
    try:
        deadline = time.monotonic() + 120
        while True:  # up once it answers; without the token, 401
            assert process.poll() is None, log.read_text(encoding="utf-8")
            try:
                status, body = post(url)
                break
            except OSError:
                assert time.monotonic() < deadline, "mcp --port did not answer in time"
                time.sleep(0.2)
        assert status == 401 and "Authorization: Bearer" in body
        assert post(url, token="wrong")[0] == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    assert {tool.name for tool in (await session.list_tools()).tools} == READS  # no --allow-writes
                    result = await session.call_tool("search", {"query": QUERY, "k": 2})
                    assert [r["id"] for r in result.structured_content["results"]] == [
                        d.id for d in pipe.as_retriever(k=2).invoke(QUERY)
                    ]
    finally:
        stop(process)


def test_network_flags_follow_serves_rules(hybrid_index, capsys, monkeypatch):
    config = str(hybrid_index[0])
    assert main(["mcp", config, "--port", "8", "--host", "0.0.0.0"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --host 0.0.0.0 is reachable from other machines: give --token-env VAR"), message
    monkeypatch.delenv("RAG_NO_SUCH_TOKEN", raising=False)
    assert main(["mcp", config, "--port", "8", "--token-env", "RAG_NO_SUCH_TOKEN"]) == 2
    assert "RAG_NO_SUCH_TOKEN: that environment variable is unset or empty" in capsys.readouterr().err
    assert main(["mcp", config, "--token-env", "RAG_TEST_TOKEN"]) == 2  # stdio: nothing for a token to guard
    assert capsys.readouterr().err.strip().startswith("error: --token-env: only with --port N")
    assert main(["mcp", config, "--max-k", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-k: must be a positive whole number, got 0"


def test_mcp_without_its_extra_says_which_to_install(hybrid_index, monkeypatch, capsys):
    import rag_pipeline.server

    # only our mcp module and the SDK are forgotten: the package attribute goes too, so that the
    # next test's rag_pipeline.server is the same module object in sys.modules and on the package
    for name in [m for m in sys.modules if m.startswith(("rag_pipeline.server.mcp", "mcp."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(rag_pipeline.server, "mcp", raising=False)
    monkeypatch.setitem(sys.modules, "mcp", None)  # as if not installed
    assert main(["mcp", str(hybrid_index[0])]) == 2
    assert capsys.readouterr().err.strip() == "error: mcp needs mcp, which is not installed: pip install 'rag-pipeline[mcp]'"


def test_while_the_models_load_standard_output_goes_to_standard_error(capfd):
    from rag_pipeline.server.mcp import stdout_to_stderr

    with stdout_to_stderr():
        print("a library's print")
        os.write(1, b"a C library's line\n")
    print("the protocol's")
    captured = capfd.readouterr()
    assert captured.out == "the protocol's\n"
    assert "a library's print" in captured.err and "a C library's line" in captured.err
