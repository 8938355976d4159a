"""One retrieval path for serving, evaluation and (soon) hard-negative mining.

    first stage (one or more arms, each ``search_batch``, filter honoured, exact or ANN)
      -> fusion (pure functions over ranked lists)
      -> rerank (once, after fusion)

``Pipeline.as_retriever()`` wraps a :class:`RetrievalPath` in a LangChain ``BaseRetriever``;
``rag-pipeline eval`` calls the same path in batches. Everything here talks to the stage
contracts (:mod:`rag_pipeline.contracts`), never to a concrete store or model.
"""

from ..metadata import SCORE_KEYS
from .first_stage import DenseArm, LexicalArm
from .fusion import convex, fuse_single, reciprocal_rank
from .path import RetrievalPath
from .retriever import DenseRetrieverConfig, HybridRetrieverConfig, PipelineRetriever

__all__ = [
    "DenseArm", "DenseRetrieverConfig", "HybridRetrieverConfig", "LexicalArm", "PipelineRetriever",
    "RetrievalPath", "SCORE_KEYS", "convex", "fuse_single", "reciprocal_rank",
]
