"""Ingestion you can trust: a record of what was indexed, incremental sync, crash safety, one writer
at a time, and model changes by ``reindex``. See :mod:`rag_pipeline.indexing.sync` for the design."""

from .record import FileRecord, IndexRecord
from .report import IngestReport, SyncPlan

__all__ = ["FileRecord", "IndexRecord", "IngestReport", "SyncPlan"]
