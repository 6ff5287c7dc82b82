"""Ingest: sources -> hashes -> cache -> encoder -> store -> index."""

from embedstore.ingest.pipeline import IngestReport, ingest
from embedstore.ingest.sources import Record, TableOptions, open_source

__all__ = ["IngestReport", "Record", "TableOptions", "ingest", "open_source"]
