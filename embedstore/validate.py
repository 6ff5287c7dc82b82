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


def as_inputs(inputs: Any) -> list:
    """Raw inputs as a list: texts or sequences (str) or encoded images (bytes); a lone str or bytes is one input
    (never its characters), a numpy array is refused (features go to `predict`, vectors to `vector=`)."""
    if isinstance(inputs, (str, bytes)):
        return [inputs]
    if type(inputs).__name__ == "ndarray":
        raise InputError("raw inputs are texts, sequences or image bytes, not a numpy array: pass features to "
                         "predict(X) (heads) or a query vector as vector= (search)")
    try:
        out = list(inputs)
    except TypeError:
        raise InputError(f"expected a list of texts, sequences or image bytes, found {type(inputs).__name__}") \
            from None
    bad = next((x for x in out if not isinstance(x, (str, bytes, bytearray)) and x is not None), None)
    if bad is not None:
        raise InputError(f"expected texts, sequences (str) or encoded images (bytes), found a {type(bad).__name__}: "
                         f"{str(bad)[:40]!r}")
    return out


def expect(value: Any, types: type | tuple, what: str, hint: str = "") -> Any:
    """`value` if it is of `types` (bool is no int here), else a TypeError naming what was expected."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                                                 else (types,))):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise InputError(f"{what} must be a {names}, not {type(value).__name__} {str(value)[:40]!r}{hint}")
    return value


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
