"""One vocabulary of exceptions for every error a user can cause.

Each carries a one-line message that names the cause and, where there is one, the fix.
The CLI prints ``error: <message>`` for these and exits non-zero; anything else is a bug.
"""

from __future__ import annotations


class RagPipelineError(Exception):
    """Base class: a mistake or condition the user can fix."""


class ConfigError(RagPipelineError):
    """The configuration is invalid (unknown key, wrong type, bad value)."""


class ModelNotAvailableError(RagPipelineError):
    """A model could not be found locally and cannot be downloaded."""


class IndexMismatchError(RagPipelineError):
    """An existing collection was built with a different embedding model."""


class LoaderError(RagPipelineError):
    """A source file could not be read and ``on_error: fail`` is set."""


class QueryError(RagPipelineError):
    """A query that cannot be answered as given (empty text)."""


class IndexNotFoundError(RagPipelineError):
    """A query or evaluation found no index where the config points; nothing was created."""


class IndexBusyError(RagPipelineError):
    """Another ingest or reindex holds the index's write lock."""


class DocumentError(RagPipelineError):
    """Documents added or deleted from code that cannot be as asked (an unknown source, a source
    that a folder file holds)."""


def positive_count(value: object, name: str) -> int:
    """``value`` as a count (results, queries, documents, bytes), or the one error every such check
    raises: a ``ConfigError`` naming ``name`` as the user wrote it (``--k``, ``retriever.k``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: must be a positive whole number, got {value!r}")
    return value


def first_line(exc: BaseException, limit: int | None = 160) -> str:
    """An exception's first line, cut to ``limit``, or its type name when it has no message.

    Library errors (transformers, pypdf, httpx, PyYAML) often span many lines; our messages are one.
    """
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class IndexUnavailableError(RagPipelineError):
    """The index lives on a server that cannot be reached (down, wrong address, refused credentials)."""


class ServiceBusy(RagPipelineError):
    """A :class:`~rag_pipeline.service.RetrievalService` has as many requests waiting as it takes:
    try again shortly (a server answers 429)."""


class ServiceUnavailable(RagPipelineError):
    """A :class:`~rag_pipeline.service.RetrievalService` cannot answer: not started, closing, or the
    request waited longer than its timeout (a server answers 503)."""
