"""Ingest: sources -> hashes -> cache -> encoder -> one transaction per chunk -> index (pipeline.py); the cache
every read path shares (cache.py); the no-op re-ingest of an unchanged file (unchanged.py); the progress bar
(progress.py)."""

from embedstore.ingest.cache import check_fingerprint, embed_cached, encode
from embedstore.ingest.pipeline import IngestReport, ingest

__all__ = ["IngestReport", "check_fingerprint", "embed_cached", "encode", "ingest"]
