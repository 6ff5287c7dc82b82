"""Long sequences: cut into windows of `window` units (tokens for hf-dna, bases for tiara) every `stride` units,
the last window ending at the sequence end (so it may be shorter); window vectors are averaged weighted by
window length (`window_pooling=length`, default) or plainly (`mean`). At most `max_windows` windows per strand
are used: a longer input is embedded from its start and marked `truncated`. `n_tokens` records the full input
length in those units, so its number of windows is 1 + ceil(max(n_tokens - window, 0) / stride).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.encoders.options import Option
from embedstore.errors import InputError

WINDOW_OPTIONS = (
    Option("window", "int", None, low=1, high=100_000_000, fingerprint=True, help="window length"),
    Option("stride", "int", None, low=1, high=100_000_000, fingerprint=True, help="window step"),
    Option("window_pooling", "choice", "length", ("length", "mean"), fingerprint=True,
           help="window vectors averaged weighted by length, or plainly"),
    Option("max_windows", "int", None, low=1, high=1_000_000, fingerprint=True,
           help="windows per strand; a longer input is cut and marked truncated"),
)


def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans covering 0..n: starts every `stride`, each `window` long, the last one ending at n."""
    spans, start = [], 0
    while True:
        end = min(start + window, n)
        spans.append((start, end))
        if end == n:
            return spans
        start += stride


def pool_windows(vectors: np.ndarray, owner: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Weighted mean of window vectors per owner (0..n-1): one sparse product, no Python loop."""
    from scipy import sparse
    p = sparse.csr_matrix((weights.astype(np.float64), (owner, np.arange(len(owner)))), shape=(n, len(owner)))
    total = np.asarray(p.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):  # an owner without weight gets NaN: recorded as a skip
        return (np.asarray(p @ vectors.astype(np.float64)) / total[:, None]).astype(np.float32)


@dataclass(frozen=True)
class Windows:
    """Window length and stride (in the encoder's units), how windows are pooled, and the cap per strand."""

    window: int
    stride: int
    pooling: str
    max_windows: int

    @classmethod
    def from_options(cls, spec: str, opts: dict[str, Any], window: int, stride: int | None,
                     max_windows: int) -> "Windows":
        """The parsed `window`/`stride`/... options over the encoder's defaults (stride: 3/4 of the window)."""
        window = opts["window"] or window
        stride = opts["stride"] or stride or max(1, window * 3 // 4)
        if stride > window:
            raise InputError(f"encoder {spec!r}: stride ({stride}) must not exceed window ({window}), or bases "
                             "between windows would never be seen")
        return cls(window, stride, opts["window_pooling"], opts["max_windows"] or max_windows)

    @staticmethod
    def identity_of(opts: dict[str, Any], default_window: Any, default_stride: Any, max_windows: int) -> dict:
        """The fingerprint's view, computable without loading a model (defaults may be descriptions)."""
        return {"window": opts["window"] or default_window, "stride": opts["stride"] or default_stride,
                "window_pooling": opts["window_pooling"], "max_windows": opts["max_windows"] or max_windows}

    def spans(self, n: int) -> tuple[list[tuple[int, int]], bool]:
        """The windows of an input n units long, and whether the cap cut it short."""
        spans = plan_windows(n, self.window, self.stride)
        return spans[:self.max_windows], len(spans) > self.max_windows

    def weight(self, a: int, b: int) -> int:
        return b - a if self.pooling == "length" else 1
