"""Labels as the store holds them (strings; JSON lists for multi-label) -> what an estimator takes, per task."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from embedstore.errors import InputError


def _label_lists(y: np.ndarray) -> list[list[str]] | None:
    """Labels that all hold JSON lists (e.g. ["sports", "politics"]) -> lists; else None."""
    out = []
    for v in y:
        if not isinstance(v, str) or not v.startswith("["):
            return None
        try:
            parsed = json.loads(v)
        except ValueError:
            return None
        if not isinstance(parsed, list):
            return None
        out.append([str(x) for x in parsed])
    return out


def targets(task: str, y: np.ndarray, dataset: str, label: str, classes: Sequence[str] | None = None
            ) -> tuple[np.ndarray, list | None]:
    """The estimator's y for a task, plus class names (label names for multi-label)."""
    if task == "regression":
        try:
            return y.astype(np.float64), None
        except ValueError:
            bad = next(v for v in y if not _is_number(v))
            raise InputError(f"dataset {dataset!r}: label {label!r} must be numeric for a regression head; "
                             f"found {bad!r}") from None
    if task == "multilabel":
        lists = _label_lists(y)
        if lists is None:
            raise InputError(f"dataset {dataset!r}: a multi-label head needs labels that are JSON lists, e.g. "
                             f'["a", "b"]; found {y[0]!r}')
        from sklearn.preprocessing import MultiLabelBinarizer
        mlb = MultiLabelBinarizer(classes=list(classes) if classes is not None else None)
        Y = mlb.fit_transform(lists) if classes is None else mlb.fit(lists).transform(lists)
        return Y, [str(c) for c in mlb.classes_]
    y = y.astype(str)
    found = np.unique(y)
    if classes is None and len(found) < 2:
        raise InputError(f"dataset {dataset!r}: label {label!r} has {len(found)} distinct value(s) "
                         f"{list(found)}; a classifier needs at least 2")
    return y, None


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
