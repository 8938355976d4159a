"""The built-in stages: importing this module registers every ``type:`` the package ships.

One list, so that what a config may name is visible in one place; ``config.load_config`` imports
it before validating. Third-party stages register themselves (``registry.register``) the same way,
and installed ones are imported from the ``rag_pipeline.stages`` entry-point group when a config is
first loaded (``registry.load_entry_point_stages``).
"""

from __future__ import annotations

from .chunkers import none, recursive, tokens  # noqa: F401
from .embeddings import bge  # noqa: F401
from .embeddings import bge_m3  # noqa: F401
from .lexical import bm25  # noqa: F401
from .lexical import m3_sparse  # noqa: F401
from .lexical import tantivy_index  # noqa: F401
from .loaders import directory  # noqa: F401
from .rerankers import bge_reranker  # noqa: F401
from .retrieval import retriever  # noqa: F401
from .retrieval import m3  # noqa: F401
from .vectorstores import chroma  # noqa: F401
from .vectorstores import faiss_store  # noqa: F401  (faiss itself is imported only when chosen)
