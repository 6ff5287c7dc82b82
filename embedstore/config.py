"""Settings: one table of name, default, environment variable and help.

`tests/test_config.py` checks that the README documents every row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: str
    help: str

    def get(self) -> str:
        return os.environ.get(self.env, self.default)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("store", "EMBEDSTORE_STORE", "~/.local/share/embedstore",
                "store directory used when --store is not given"),
        Setting("exact_index_max", "EMBEDSTORE_EXACT_INDEX_MAX", "200000",
                "a dataset with more vectors than this gets an IVF index instead of exact search"),
        Setting("checkpoint_items", "EMBEDSTORE_CHECKPOINT_ITEMS", "50000",
                "during ingest, the FAISS index is persisted after this many new items (or a quarter of its size, if more)"),
        Setting("lock_wait", "EMBEDSTORE_LOCK_WAIT", "30",
                "seconds a reader waits for the database while an ingest writes a batch"),
        Setting("duckdb_memory", "EMBEDSTORE_DUCKDB_MEMORY", "256MB",
                "DuckDB's memory limit (its page cache; larger queries spill to <store>/embedstore.duckdb.tmp). Its "
                "key indexes stay in memory, ~15 MB per 100k items and encoder: raise it for multi-million stores"),
        Setting("device", "EMBEDSTORE_DEVICE", "auto",
                "encoder device: auto (cuda when available), cpu, cuda, cuda:N"),
    ]
}


def setting(name: str) -> str:
    return SETTINGS[name].get()


def number(name: str, kind: type = float, low: float = 0) -> float:
    """A numeric setting, refused with a clear message when its environment variable is not a number >= low."""
    raw, s = setting(name), SETTINGS[name]
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < low or value != value:
        from embedstore.errors import InputError
        raise InputError(f"{s.env}={raw!r}: expected {'a whole number' if kind is int else 'a number'} >= {low:g} "
                         f"({s.help}); default {s.default}")
    return value


def default_store_path() -> Path:
    return Path(setting("store")).expanduser()
