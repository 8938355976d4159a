"""``rag-pipeline serve``: one warm pipeline behind HTTP (FastAPI), and a search page at ``/``.

The models load once, when the server starts; each request then costs a query, not a process
start (a CLI ``query`` spends ~10 s loading the model). Needs the ``serve`` extra
(``pip install "rag-pipeline[serve]"``).
"""

from __future__ import annotations

from .app import SCORE_KEYS, ServerSettings, create_app, is_loopback, run_server

__all__ = ["SCORE_KEYS", "ServerSettings", "create_app", "is_loopback", "run_server"]
