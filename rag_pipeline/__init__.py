"""rag-pipeline: a YAML-configured BGE retrieval pipeline on LangChain.

    from rag_pipeline import Pipeline
    pipe = Pipeline.from_yaml("configs/quickstart.yaml")
    pipe.ingest()
    docs = pipe.as_retriever().invoke("what is a sourdough starter?")
"""

from .config import PipelineConfig, as_config, load_config
from .errors import (
    ConfigError,
    DocumentError,
    IndexBusyError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexUnavailableError,
    LoaderError,
    ModelNotAvailableError,
    QueryError,
    RagPipelineError,
)
from .pipeline import IngestReport, Pipeline

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DocumentError",
    "IndexBusyError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexUnavailableError",
    "IngestReport",
    "LoaderError",
    "ModelNotAvailableError",
    "QueryError",
    "Pipeline",
    "PipelineConfig",
    "RagPipelineError",
    "__version__",
    "as_config",
    "load_config",
]
