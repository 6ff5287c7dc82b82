"""Rows of a feature matrix read a chunk at a time, for heads that learn from features larger than memory.

A matrix from `store.features(..., memmap=PATH)` is a np.memmap: reading it through the mapping would leave every
page it touched in this process's memory (RSS), and the kernel's read-ahead around each touched page makes a
sample of 100k scattered rows map most of a 2.4 GB file. The reader copies each chunk out and drops the
mapping's pages after every read; the page cache still serves re-reads.
"""

from __future__ import annotations

import mmap
from typing import Any, Callable

import numpy as np

CHUNK_ROWS = 65_536    # rows per chunk a streaming head reads (64-d: 32 MB as float64)
BLOCK_ROWS = 1_024     # rows kept together when a pass is shuffled: reads stay sequential within a block


class RowReader:
    """`read(index)` -> X[index] as a float64 array in memory (index: a slice or sorted row numbers)."""

    def __init__(self, X: Any):
        self.X = X
        self.mapping = getattr(X, "_mmap", None) if isinstance(X, np.memmap) else None

    def read(self, index: Any) -> np.ndarray:
        out = np.array(self.X[index], dtype=np.float64)
        if self.mapping is not None:
            self.mapping.madvise(mmap.MADV_DONTNEED)  # a chunk is tens of MB: the call costs far less than it
        return out


def blocks(n: int) -> list[np.ndarray]:
    """Positions 0..n-1 in blocks of BLOCK_ROWS: a shuffled pass permutes blocks, then rows within a chunk."""
    return [np.arange(a, min(a + BLOCK_ROWS, n)) for a in range(0, n, BLOCK_ROWS)]


def shuffled_chunks(parts: list[np.ndarray], rng: np.random.Generator, chunk_rows: int = CHUNK_ROWS):
    """Chunks of positions for one pass: blocks in a random order, about chunk_rows per chunk, each chunk's
    positions sorted for reading (the caller shuffles the rows it has read)."""
    per = max(1, chunk_rows // BLOCK_ROWS)
    order = rng.permutation(len(parts))
    for c in range(0, len(order), per):
        yield np.sort(np.concatenate([parts[j] for j in order[c:c + per]]))


def in_chunks(fn: Callable[[np.ndarray], np.ndarray], X: Any, rows: np.ndarray | None = None,
              chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """fn applied to X[rows] (default every row) a chunk at a time, results concatenated in order."""
    reader = RowReader(X)
    n = len(X) if rows is None else len(rows)
    out = [fn(reader.read(slice(a, min(a + chunk_rows, n)) if rows is None else rows[a:a + chunk_rows]))
           for a in range(0, n, chunk_rows)]
    return np.concatenate(out) if out else np.empty(0)
