"""Validation of what users hand the library directly (vectors, k, sizes): one message shape everywhere."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from embedstore.errors import InputError


def as_float32_matrix(vectors: Any, dim: int | None = None) -> np.ndarray:
    """Validate a vector or matrix from a user: 2-D, numbers, finite, of the expected dimension."""
    try:
        x = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:  # numpy's own message for non-numbers or ragged lists
        raise InputError(f"query vector must be numbers: {e}") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"expected a vector or a 2-D matrix, found an array of shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"query vector has {x.shape[1]} dimensions, but this encoder's vectors have {dim}")
    if not np.isfinite(x).all():
        raise InputError("query vector contains NaN or infinite values")
    return x


def split_names(value: str | Sequence[str], what: str = "names") -> list[str]:
    """One name, a comma-separated list, or a sequence of names, as a list (blank entries dropped)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    out = [str(p).strip() for p in parts if p and str(p).strip()]
    if not out:
        raise InputError(f"expected one or more {what}, found {value!r}")
    return out


def counted(n: int, noun: str) -> str:
    """`1 row`, `3,000 rows`: counts in messages and summaries."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
