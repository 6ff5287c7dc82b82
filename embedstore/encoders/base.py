"""Encoder base class and the one batching loop every family shares.

An encoder turns raw contents (text, later image bytes or sequences) into float32 vectors. Subclasses say how to
prepare a batch (tokenise, decode: runs in a prefetch thread, overlapping the model) and how to run it; the
loop here sorts by length, batches (fixed count on CPU, token budget on CUDA), restores input order and checks
that every vector is finite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from embedstore.fsutil import sha256_file
from embedstore.encoders.options import Option, parse_options

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Vectors for a list of inputs, in input order, plus per-input facts the store records."""

    vectors: np.ndarray                  # float32 [n, dim]
    n_tokens: np.ndarray | None = None   # int [n] input length in model units before truncation
    truncated: np.ndarray | None = None  # bool [n]
    devices: np.ndarray | None = None    # str [n] where each vector was made, when rows differ (vectors carried
    dtypes: np.ndarray | None = None     # from Ray workers or an export); None: the encoder's ran_on and dtype


class Encoder(ABC):
    """Lazy: constructing one reads no weights; `fingerprint` and `dim` may load what they need.

    `OPTIONS` declares the spec options the class takes (encoders/options.py); `self.opts` holds their parsed
    values (defaults filled in)."""

    scheme: ClassVar[str]
    modality: ClassVar[str]
    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    batch_size: int = 32
    first_chunk: int = 1024     # rows in an ingest's first transaction; slow encoders (images, audio) start smaller
    token_budget: int = 65_536  # on CUDA: padded length per batch, in the units of `length()`

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        self.spec = spec
        self.name = name
        self.revision = revision
        self.opts: dict[str, Any] = parse_options(spec, self.scheme, options, self.OPTIONS)
        if self.opts.get("batch_size"):
            self.batch_size = self.opts["batch_size"]

    # -- identity ------------------------------------------------------------------------------------------
    @abstractmethod
    def identity(self) -> dict:
        """Everything that changes the vectors (weights hash, preprocessing, pooling...), never the device."""

    @cached_property
    def fingerprint(self) -> str:
        blob = json.dumps({"scheme": self.scheme, **self.identity()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    def unit_norm(self) -> bool:
        """Whether every vector has L2 norm 1 (cosine-ready). Recorded at ingest: heads leave such features as they
        are and standardise the others, whose scale would otherwise decide the regularisation (heads/tuning.py)."""
        return False

    def versions(self) -> dict:
        import numpy
        return {"numpy": numpy.__version__}

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"

    @property
    def ran_on(self) -> str:
        """Where the vectors were computed, recorded with each: the device, plus the runtime where it is not the
        family's own ("cpu/onnxruntime")."""
        return self.device

    # -- per-item checks -----------------------------------------------------------------------------------
    def skip_reason(self, content: Any) -> str | None:
        """Why this input cannot be embedded (recorded with the item), or None."""
        return None

    def length(self, content: Any) -> int:
        """Sort key for batching: inputs of similar length share a batch (less padding)."""
        return 0

    # -- the batching loop ---------------------------------------------------------------------------------
    def prepare(self, contents: list) -> Any:
        """CPU-side work for one batch (tokenise, decode); runs in a prefetch thread."""
        return contents

    @abstractmethod
    def run(self, prepared: Any) -> Embedded:
        """The model on one prepared batch; returns vectors on the CPU, in batch order."""

    def plan_batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices into the inputs, longest first; on CUDA batches are cut by a padded-token budget."""
        order = np.argsort(-lengths, kind="stable")
        if not self.device.startswith("cuda") or not lengths.any():
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches, start = [], 0
        while start < len(order):
            longest = max(int(lengths[order[start]]), 1)
            size = max(1, self.token_budget // longest)
            batches.append(order[start:start + size])
            start += size
        return batches

    def embed(self, contents: Sequence, progress: Callable[[int], None] | None = None) -> Embedded:
        """Embed in length-sorted batches, tokenising the next batch while the model runs this one."""
        n = len(contents)
        if n == 0:
            return Embedded(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))
        lengths = np.fromiter((self.length(c) for c in contents), dtype=np.int64, count=n)
        batches = self.plan_batches(lengths)
        vectors = np.empty((n, self.dim), dtype=np.float32)
        n_tokens = np.full(n, -1, dtype=np.int64)
        truncated = np.zeros(n, dtype=bool)
        per_row: dict[str, np.ndarray] = {}  # devices/dtypes, once a batch gives them
        for idx, out in zip(batches, self._pipelined(contents, batches)):
            vectors[idx] = out.vectors
            if out.n_tokens is not None:
                n_tokens[idx] = out.n_tokens
            if out.truncated is not None:
                truncated[idx] = out.truncated
            for field, own in (("devices", "ran_on"), ("dtypes", "dtype")):
                if getattr(out, field) is not None:
                    per_row.setdefault(field, np.full(n, getattr(self, own), object))[idx] = getattr(out, field)
            if progress:
                progress(len(idx))
        return Embedded(vectors, n_tokens if (n_tokens >= 0).any() else None, truncated, **per_row)

    def _pipelined(self, contents: Sequence, batches: list[np.ndarray]) -> Iterator[Embedded]:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedstore-prepare") as pool:
            pending = [pool.submit(self.prepare, [contents[i] for i in idx]) for idx in batches[:2]]
            for b in range(len(batches)):
                prepared = pending[b].result()
                if b + 2 < len(batches):
                    idx = batches[b + 2]
                    pending.append(pool.submit(self.prepare, [contents[i] for i in idx]))
                pending[b] = None  # free the prepared batch once consumed
                box, prepared = [prepared], None  # _run_or_halve holds the only reference: it can free it
                yield self._run_or_halve(box, [contents[i] for i in batches[b]],
                                         lambda items: pool.submit(self.prepare, items).result())

    def _run_or_halve(self, box: list, items: list, prepare: Callable[[list], Any]) -> Embedded:
        """`run` on the prepared batch in `box`, and when the device runs out of memory, the two halves of the
        batch (prepared again, in the prefetch thread: tokenizers are not safe to call from two threads) in turn,
        down to single items: a batch too large for the GPU costs time, never items. Later CUDA plans keep under
        half the padded size of the largest batch that did not fit."""
        prepared = box.pop()
        try:
            return self.run(prepared)
        except Exception as e:  # torch.cuda.OutOfMemoryError, without importing torch here
            if not _out_of_memory(e):
                raise
            if len(items) < 2:
                from embedstore.errors import EncoderUnavailableError
                raise EncoderUnavailableError(
                    f"encoder {self.spec!r}: one input does not fit in the device's memory even alone "
                    f"({str(e).strip().splitlines()[0][:200]}); lower max_length, or use device=cpu") from None
        del prepared
        _free_device_cache()
        log.warning("encoder %s: the device ran out of memory on a batch of %d; running it in halves",
                    self.spec, len(items))
        padded = len(items) * max(max(self.length(c) for c in items), 1)  # what this batch asked of the device
        self.token_budget = max(1, min(self.token_budget, padded // 2))  # later CUDA plans stay under half of it
        half = len(items) // 2
        parts = [self._run_or_halve([prepare(p)], p, prepare) for p in (items[:half], items[half:])]
        return Embedded(np.concatenate([p.vectors for p in parts]),
                        *(None if any(getattr(p, f) is None for p in parts) else
                          np.concatenate([getattr(p, f) for p in parts])
                          for f in ("n_tokens", "truncated", "devices", "dtypes")))


def _out_of_memory(e: BaseException) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def _free_device_cache() -> None:
    import sys
    torch = sys.modules.get("torch")  # only a torch encoder can have filled a device cache
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def hash_files(root: str | os.PathLike, skip: Callable[[str], bool] = lambda rel: False) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest), so the same weights anywhere agree."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root)
            if fn.startswith(".") or skip(rel):
                continue
            out[rel] = sha256_file(full)
    return out

