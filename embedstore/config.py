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
        Setting("read_linger", "EMBEDSTORE_READ_LINGER", "0.5",
                "seconds a read connection stays open after its last use while no writer is at work, so that "
                "repeated searches from Python skip re-opening the database (0: close after each use)"),
        Setting("index_memory", "EMBEDSTORE_INDEX_MEMORY", "2GB",
                "memory one IVF index may take: above it, vectors are stored as 8-bit scalars (SQ8, 4x smaller), "
                "then as product-quantised codes (PQ) that fit"),
        Setting("features_memory", "EMBEDSTORE_FEATURES_MEMORY", "auto",
                "memory a head may load features into (auto: the memory the system has available); a fit, compare "
                "or eval that would need more is refused before it reads anything"),
        Setting("duckdb_memory", "EMBEDSTORE_DUCKDB_MEMORY", "256MB",
                "DuckDB's memory limit (its page cache; larger queries spill to <store>/embedstore.duckdb.tmp); "
                "the store keeps no key index in memory, so it holds at 10M items"),
        Setting("device", "EMBEDSTORE_DEVICE", "auto",
                "encoder device: auto (cuda when available), cpu, cuda, cuda:N"),
        Setting("model_cache", "EMBEDSTORE_MODEL_CACHE", "~/.cache/embedstore",
                "where models converted for a faster runtime (ONNX exports of image backbones) are kept, keyed by "
                "the encoder's fingerprint; safe to delete"),
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


_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 1 << 10, "MIB": 1 << 20,
          "GIB": 1 << 30, "TIB": 1 << 40}


def size(name: str) -> int:
    """A byte-size setting ("2GB", "512MiB", "1e9"), refused with a clear message when it does not parse."""
    import re
    raw, s = setting(name), SETTINGS[name]
    m = re.fullmatch(r"\s*([0-9.e+]+)\s*([A-Za-z]*)\s*", raw)
    try:
        value = float(m.group(1)) * _UNITS[m.group(2).upper()] if m else -1
    except (ValueError, KeyError):
        value = -1
    if not value > 0:
        from embedstore.errors import InputError
        raise InputError(f"{s.env}={raw!r}: expected a size such as 2GB or 512MB ({s.help}); default {s.default}")
    return int(value)


def available_memory() -> int:
    """Bytes the system can give a process now without swapping (MemAvailable; 0 where it is not known)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def default_store_path() -> Path:
    return Path(setting("store")).expanduser()


def model_cache() -> Path:
    return Path(setting("model_cache")).expanduser()
