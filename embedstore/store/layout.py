"""Where things live inside a store directory: one place, so no module rebuilds a path from another's internals.

    <store>/embedstore.duckdb                      the database (source of truth)
    <store>/LOCK, <store>/READERS, <store>/WRITING the writer's lock; readers waiting for it; a writer at work
    <store>/indexes/<dataset>/<fp16>.json          an index's sidecar, naming its data file <fp16>.<sha16>.faiss
    <store>/heads/<name>/head.<sha16>/             one version of a saved head (the database names the current one)
    <store>/heads/<name>/eval/<dataset>/           `heads eval` reports (metrics.json, confusion.png)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DB_NAME = "embedstore.duckdb"
LOCK_NAME = "LOCK"
WAITING_NAME = "READERS"  # readers waiting for the database hold a shared flock on it (see Database.yield_to_readers)
WRITING_NAME = "WRITING"  # the writer holds a shared flock on it while it holds LOCK: readers then linger not


def indexes_root(store: Path) -> Path:
    return store / "indexes"


def index_sidecar(store: Path, dataset: str, fingerprint: str) -> Path:
    """The index's sidecar, which names its current data file (see VectorIndex.save)."""
    return indexes_root(store) / dataset / f"{fingerprint[:16]}.json"


def scratch_root(store: Path) -> Path:
    """Temporary files of one command (features memory-mapped for a streaming head); removed by that command,
    and anything left by a killed one is removed by the next writer that uses the folder."""
    return store / "scratch"


def ray_staging_root(store: Path) -> Path:
    """Where the Ray engine's workers write result shards for the driver to merge (when not given elsewhere)."""
    return store / "staging" / "ray"


def ray_staging(root: Path, store: Path, dataset: str) -> Path:
    """A dataset's Ray shards under a staging root: `<root>/<store id>/<dataset>/`, so that one shared root can
    serve several stores (the store id is a digest of its resolved path)."""
    store_id = hashlib.blake2b(str(store.resolve()).encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return root / store_id / dataset


def heads_root(store: Path) -> Path:
    return store / "heads"


def head_dir(store: Path, name: str, checksum: str) -> Path:
    """Where the version of head `name` whose manifest has sha256 `checksum` lives (see heads/persist.py)."""
    return heads_root(store) / name / f"head.{checksum[:16]}"


def head_eval_dir(store: Path, name: str, dataset: str) -> Path:
    """Where `heads eval` writes its report for a dataset: derived files, which gc leaves with the head."""
    return heads_root(store) / name / "eval" / dataset
