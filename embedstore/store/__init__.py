"""The store: DuckDB (source of truth) + derived FAISS indexes + saved heads, in one directory."""

from embedstore.store.store import EncoderRecord, Store, open

__all__ = ["EncoderRecord", "Store", "open"]
