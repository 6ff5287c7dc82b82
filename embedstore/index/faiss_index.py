"""A cosine FAISS index keyed by item id, saved atomically with a JSON sidecar (autofaiss-style).

The sidecar records the factory string, its parameters, dim, metric, count, the file's sha256, and the
database state the index reflects (`state`), which the store compares to DuckDB on open to decide between
"up to date", "catch up" and "rebuild".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np

from embedstore import config
from embedstore.errors import CorruptFileError, InputError
from embedstore.fsutil import atomic_write, atomic_write_json, sha256_file

SIDECAR_VERSION = 1
TARGET_RECALL = 0.97  # nprobe is raised until held-out recall@10 reaches this on a sample


def choose_factory(n: int) -> str:
    """Exact search up to `exact_index_max` vectors; above it IVF with ~4*sqrt(n) lists (power of two)."""
    if n <= int(config.setting("exact_index_max")):
        return "IDMap2,Flat"
    nlist = 2 ** max(6, round(math.log2(4 * math.sqrt(n))))
    return f"IVF{nlist},Flat"


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise InputError(f"expected a 2-D array of vectors, found shape {x.shape}")
    faiss.normalize_L2(x)
    return x


class VectorIndex:
    """Inner product over L2-normalised vectors, i.e. cosine similarity; ids are item ids (int64)."""

    def __init__(self, index: faiss.Index, factory: str, dim: int, params: dict | None = None):
        self.index = index
        self.factory = factory
        self.dim = dim
        self.params = dict(params or {})

    @classmethod
    def create(cls, dim: int, factory: str) -> "VectorIndex":
        return cls(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT), factory, dim)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, sample: np.ndarray) -> None:
        self.index.train(_normalized(sample))

    def reserve(self, n: int) -> None:
        """Exact indexes: allocate room for `n` vectors at once, so that growing by appends does not double the
        buffer (and briefly hold old and new copies) as std::vector growth would."""
        if self.factory != "IDMap2,Flat" or n <= self.ntotal:
            return
        flat = faiss.downcast_index(self.index.index)
        used = flat.codes.size()
        flat.codes.resize(n * flat.code_size)  # capacity stays when shrinking back
        flat.codes.resize(used)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.index.add_with_ids(_normalized(vectors), np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def _search_params(self, allowed: np.ndarray | None, nprobe: int | None = None):
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)) if allowed is not None else None
        if self.factory.startswith("IVF"):
            return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe or self.params.get("nprobe", 16)), sel
        return (faiss.SearchParameters(sel=sel) if sel is not None else None), sel

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; ids are -1 where fewer than k vectors qualify."""
        q = _normalized(queries)
        if q.shape[1] != self.dim:
            raise InputError(f"query has {q.shape[1]} dimensions, but this index holds {self.dim}-d vectors")
        params, _keep_alive = self._search_params(allowed, nprobe)
        scores, ids = self.index.search(q, k, params=params)
        return scores, ids

    def tune(self, sample: np.ndarray, sample_ids: np.ndarray, k: int = 10, target: float = TARGET_RECALL) -> None:
        """IVF only: the smallest power-of-two nprobe whose recall@k reaches `target` for stored vectors used as
        held-out queries (each query's own id is dropped from both result lists, so that a query is not found
        trivially in its own cell: it then stands for a new item from the same distribution)."""
        if not self.factory.startswith("IVF"):
            return
        nlist = self.index.nlist

        def neighbours(nprobe: int) -> list[set]:
            _, ids = self.search(sample, k + 1, nprobe=nprobe)
            return [set([i for i in row if i != own][:k]) for row, own in zip(ids, sample_ids)]

        exact = neighbours(nlist)
        nprobe, recall = 1, 0.0
        while True:
            recall = float(np.mean([len(a & b) / k for a, b in zip(exact, neighbours(nprobe))]))
            if recall >= target or nprobe >= nlist:
                break
            nprobe = min(nprobe * 2, nlist)
        self.params.update(nprobe=nprobe, tuned_recall_at_10=round(recall, 4), tuned_queries=len(sample))

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: Path, state: dict) -> None:
        """Index file first, then the sidecar naming its checksum: a crash between leaves a detectable mismatch."""
        path = Path(path)
        atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        atomic_write_json(sidecar_path(path), {
            "version": SIDECAR_VERSION,
            "factory": self.factory,
            "params": self.params,
            "dim": self.dim,
            "metric": "cosine (inner product on L2-normalised vectors)",
            "count": self.ntotal,
            "sha256": sha256_file(path),
            "state": state,
        })

    @classmethod
    def load(cls, path: Path) -> tuple["VectorIndex", dict]:
        """Raise CorruptFileError unless the sidecar parses and the file matches its checksum and count."""
        path = Path(path)
        side = sidecar_path(path)
        if not path.exists() or not side.exists():
            raise CorruptFileError(f"index {path} or its sidecar is missing")
        try:
            meta = json.loads(side.read_text())
            expected = meta["sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptFileError(f"index sidecar {side} is unreadable ({e})") from e
        if sha256_file(path) != expected:
            raise CorruptFileError(f"index {path} does not match the checksum in {side.name}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise CorruptFileError(f"index {path} cannot be read by FAISS ({e})") from e
        if index.ntotal != meta.get("count") or index.d != meta.get("dim"):
            raise CorruptFileError(f"index {path} holds {index.ntotal}x{index.d}, sidecar says "
                                   f"{meta.get('count')}x{meta.get('dim')}")
        return cls(index, meta["factory"], meta["dim"], meta.get("params")), meta


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")
