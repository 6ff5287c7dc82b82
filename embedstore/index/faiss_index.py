"""A cosine FAISS index keyed by item id, saved crash-safely with a JSON sidecar (autofaiss-style).

The sidecar `<fp16>.json` is the index's name: it names the data file `<fp16>.<sha16>.faiss` and records
the factory string, its parameters, dim, metric, count, the file's sha256, and the
database state the index reflects (`state`), which the store compares to DuckDB on open to decide between
"up to date", "catch up" and "rebuild".
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np

from embedstore import config
from embedstore.errors import CorruptFileError, InputError
from embedstore.faults import fault_point
from embedstore.fsutil import atomic_write_json, remove_other_versions, sha256_file, write_versioned

SIDECAR_VERSION = 2  # 2: the sidecar checksums its own fields
TARGET_RECALL = 0.97  # nprobe is raised until held-out recall@10 reaches this on a sample


NLIST_MAX = 4096      # k-means of more lists costs minutes per build on a few cores; 10M / 4096 = 2.4k per list
ID_BYTES = 8          # an IVF list stores each vector's int64 id beside its code


EXACT = "IDMap,Flat"   # exact search over float32 vectors (older stores hold "IDMap2,Flat": the same search)


def code_bytes(factory: str, dim: int) -> int:
    """Bytes per vector of a factory's codes (without ids): Flat 4*dim, SQ8 dim, PQm m."""
    kind = factory.split(",")[-1]
    return 4 * dim if kind == "Flat" else dim if kind == "SQ8" else int(kind[2:].split("x")[0])


def shape(factory: str) -> tuple[bool, str]:
    """What a factory string means for memory and search: (inverted lists?, code kind "Flat"/"SQ8"/"PQmx8")."""
    return factory.startswith("IVF"), factory.split(",")[-1]


def choose_factory(n: int, dim: int, clustered: bool = True) -> str:
    """The index for n vectors of dim (autofaiss-style, from n, dim and EMBEDSTORE_INDEX_MEMORY alone):
    exact search up to `exact_index_max` vectors; above it IVF with ~4*sqrt(n) lists (a power of two, at most
    NLIST_MAX), or, for data on which IVF was measured not to pay (`clustered=False`: no cluster structure, so
    that it would scan most lists anyway), a plain scan of every code. The codes are float32 (Flat) when they fit
    the memory budget, else SQ8 (one byte per dimension, recall close to Flat), else PQ with the most one-byte
    sub-quantisers that fit (m divides dim)."""
    if n <= config.number("exact_index_max", int):
        return EXACT
    budget = config.size("index_memory") / max(n, 1) - ID_BYTES  # bytes per vector left for its code
    if budget >= 4 * dim:
        codes = "Flat"
    elif budget >= dim:
        codes = "SQ8"
    else:
        fits = [m for m in range(1, dim + 1) if dim % m == 0 and m <= budget]
        codes = f"PQ{max(fits) if fits else 1}x8"
    if not clustered:
        return f"IDMap,{codes}"
    nlist = 2 ** min(round(math.log2(NLIST_MAX)), max(6, round(math.log2(4 * math.sqrt(n)))))
    return f"IVF{nlist},{codes}"


def exact_neighbours(queries: np.ndarray, query_ids: np.ndarray, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                     k: int = 10, keep: int = 64) -> list[set | None]:
    """Each query's true k nearest (cosine) ids among the streamed (ids, vectors) batches, its own id excluded,
    computed by brute force one batch at a time: the ground truth recall is measured against. Ids tied with
    the k-th score (duplicate contents) are all in the set, so that any of them counts as found; None for a
    query whose `keep` best all tie (a crowd of duplicates: any answer among them is as good, and which ones
    the crowd holds is not known), which recall then leaves out."""
    q = _normalized(queries)
    keep = max(keep, k)
    best_s = np.full((len(q), keep), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), keep), -1, dtype=np.int64)
    for ids, x in batches:
        s = q @ _normalized(x).T
        s[ids[None, :] == np.asarray(query_ids)[:, None]] = -np.inf
        cand_s, cand_i = np.hstack([best_s, s]), np.hstack([best_i, np.broadcast_to(ids, s.shape)])
        top = np.argpartition(-cand_s, keep - 1, axis=1)[:, :keep]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    kth = -np.partition(-best_s, k - 1, axis=1)[:, k - 1:k]
    tied = best_s >= kth - 1e-5
    return [None if t.all() and len(i) > k else set(i[t & (i >= 0)].tolist()) for i, t in zip(best_i, tied)]


def _meta_digest(meta: dict) -> str:
    """The sidecar's checksum of its own fields: a flipped bit in the factory or params is caught too."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


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
        if shape(self.factory) != (False, "Flat") or n <= self.ntotal:
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

    def tune(self, sample: np.ndarray, sample_ids: np.ndarray, exact: list[set | None], k: int = 10,
             target: float = TARGET_RECALL) -> None:
        """IVF: the smallest power-of-two nprobe whose recall@k against `exact` (the true neighbours of each
        query among the indexed vectors, from `exact_neighbours`) reaches `target`, for stored vectors used as
        held-out queries (each query's own id is dropped, so that a query is not found trivially in its own
        cell: it then stands for a new item from the same distribution). Quantised codes (SQ8, PQ) may never
        reach it: the recall at the largest nprobe is then what is recorded. A quantised scan without lists
        only has its recall measured; exact search needs neither."""
        ivf, codes = shape(self.factory)
        if not ivf and codes == "Flat":
            return
        nlist = self.index.nlist if ivf else 1

        known = [j for j, e in enumerate(exact) if e is not None] or list(range(len(exact)))
        sample, sample_ids, exact = sample[known], sample_ids[known], [exact[j] or set() for j in known]

        def neighbours(nprobe: int) -> list[set]:
            _, ids = self.search(sample, k + 1, nprobe=nprobe)
            return [set([i for i in row if i != own][:k]) for row, own in zip(ids, sample_ids)]

        quantised = codes != "Flat"
        nprobe, recall, before = 1, 0.0, -1.0
        while True:
            recall = float(np.mean([min(len(a & b), k) / k for a, b in zip(exact, neighbours(nprobe))]))
            if recall >= target or nprobe >= nlist or (quantised and recall - before < 0.005):
                break  # reached; or every list; or the codes, not nprobe, limit recall (it stopped rising)
            before, nprobe = recall, min(nprobe * 2, nlist)
        self.params.update(tuned_recall_at_10=round(recall, 4), tuned_queries=len(sample), **(
            {"nprobe": nprobe} if ivf else {}))

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, sidecar: Path, state: dict) -> None:
        """Data file under a new content-derived name, then the sidecar naming it (replaced atomically), then
        the old data file is removed: a crash at any step leaves a sidecar that names a complete file."""
        sidecar = Path(sidecar)
        stem = sidecar.stem
        data, digest = write_versioned(sidecar.parent, stem, ".faiss", lambda tmp: faiss.write_index(self.index,
                                                                                                     str(tmp)))
        fault_point("index.save.before_sidecar")
        meta = {
            "version": SIDECAR_VERSION,
            "file": data.name,
            "factory": self.factory,
            "params": self.params,
            "dim": self.dim,
            "metric": "cosine (inner product on L2-normalised vectors)",
            "count": self.ntotal,
            "sha256": digest,
            "state": state,
        }
        atomic_write_json(sidecar, {**meta, "sidecar_sha256": _meta_digest(meta)})
        fault_point("index.save.after_sidecar")
        remove_other_versions(sidecar.parent, stem, ".faiss", keep=data.name)

    @classmethod
    def load(cls, sidecar: Path) -> tuple["VectorIndex", dict]:
        """Raise CorruptFileError unless the sidecar parses, names a data file beside it, and that file matches
        its checksum, count and dim. Nothing is read from a path the sidecar could point outside the store."""
        sidecar = Path(sidecar)
        if not sidecar.exists():
            raise CorruptFileError(f"index sidecar {sidecar} is missing")
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("version") != SIDECAR_VERSION:
                raise ValueError(f"format version {meta.get('version')!r}, this embedstore writes {SIDECAR_VERSION}")
            if meta.pop("sidecar_sha256", None) != _meta_digest(meta):
                raise ValueError("its fields do not match its own checksum")
            expected, name = meta["sha256"], meta["file"]
            if not re.fullmatch(re.escape(sidecar.stem) + r"\.[0-9a-f]{16}\.faiss", name) or \
                    not name.startswith(f"{sidecar.stem}.{expected[:16]}"):
                raise ValueError(f"it names {name!r}, not a data file of this index")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptFileError(f"index sidecar {sidecar} is unreadable ({e})") from e
        path = sidecar.with_name(name)
        if not path.is_file() or sha256_file(path) != expected:
            raise CorruptFileError(f"index file {path} is missing or does not match the checksum in {sidecar.name}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise CorruptFileError(f"index {path} cannot be read by FAISS ({e})") from e
        if index.ntotal != meta.get("count") or index.d != meta.get("dim"):
            raise CorruptFileError(f"index {path} holds {index.ntotal}x{index.d}, sidecar says "
                                   f"{meta.get('count')}x{meta.get('dim')}")
        return cls(index, meta["factory"], meta["dim"], meta.get("params")), meta
