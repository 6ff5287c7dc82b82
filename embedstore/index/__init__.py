"""FAISS indexes per (dataset, encoder fingerprint), derived from DuckDB and rebuilt from it when needed."""

from embedstore.index.faiss_index import VectorIndex, choose_factory

__all__ = ["VectorIndex", "choose_factory"]
