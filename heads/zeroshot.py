"""Zero-shot labels from a CLIP encoder: no training data, only the label names.

Each label becomes one or more text prompts ("a photo of a {}."), embedded by the text tower of the very
checkpoint whose image tower made the stored vectors; an image's label is the prompt it is most similar to, and
softmax(logit_scale * cosine) gives probabilities. The image vectors come from the store (no image is
re-embedded); only the prompts run the model. When the dataset's items carry labels that match the given names,
the predictions are scored on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from embedstore.errors import InputError
from embedstore.features import column_expr, label_column, load_features
from embedstore.ingest.cache import text_tower
from embedstore.store import catalog
from heads.estimators import softmax
from heads.select import score

if TYPE_CHECKING:
    from embedstore.store.database import Database

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class ZeroShotResult:
    labels: list[str]
    keys: list[str]
    predictions: np.ndarray      # str [n]
    probabilities: np.ndarray    # float32 [n, len(labels)]
    metrics: dict | None         # accuracy, macro_f1, mcc, n on items whose label is one of `labels`
    n_unmatched: int             # labelled items whose label is none of `labels` (not scored)


def prompt_vectors(enc, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One unit vector per label: the mean of its prompts' text vectors (prompt ensembling), renormalised."""
    prompts = [t.format(label) for label in labels for t in templates]
    T = enc.embed_text(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-12)


def zero_shot(db: "Database", dataset: str, labels: Sequence[str], *, encoder: str = "",
              templates: Sequence[str] = DEFAULT_TEMPLATES, label: str | None = "label") -> ZeroShotResult:
    """Label every item of `dataset` with one of `labels` by its CLIP image vector (see the module docstring)."""
    labels = [str(x).strip() for x in labels if str(x).strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InputError(f"zero-shot needs two or more distinct labels, found {labels}")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise InputError(f"each template needs a {{}} where the label goes, e.g. 'a photo of a {{}}.'; found {bad}")
    record = catalog.resolve_encoder(db, encoder, dataset)
    enc = text_tower(record, "give zero-shot labels: ingest the images with a clip: encoder")
    fs = load_features(db, dataset, [record], None)
    X = fs.X / np.maximum(np.linalg.norm(fs.X, axis=1, keepdims=True), 1e-12)
    proba = softmax(enc.logit_scale * (X @ prompt_vectors(enc, labels, templates).T))
    pred = np.asarray(labels, dtype=object)[proba.argmax(axis=1)]
    metrics, unmatched = None, 0
    if label:
        with db.connect() as con:
            expr, params = column_expr(label, label_column(con, dataset))
            truth = dict(con.execute(f"SELECT i.key, {expr} FROM items i WHERE i.dataset = ? "
                                     f"AND {expr} IS NOT NULL", [*params, dataset, *params]).fetchall())
        y = [truth.get(k) for k in fs.keys]
        known = np.array([v in labels for v in y], dtype=bool)
        unmatched = sum(v is not None for v in y) - int(known.sum())
        if known.any():
            metrics = score("classification", np.asarray(y, dtype=object)[known], pred[known])
    return ZeroShotResult(labels, fs.keys.tolist(), pred, proba.astype(np.float32), metrics, unmatched)
