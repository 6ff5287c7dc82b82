"""A saved head: a fitted estimator from heads.estimators plus its provenance, loaded after its checksums match.

It follows scikit-learn where users expect it: `predict(X)` and `predict_proba(X)` take feature matrices of
the head's encoder(s). `predict_raw(inputs)` and `predict_proba_raw(inputs)` take raw inputs (texts,
sequences, image bytes) and embed them first through the store's cache (embedstore.ingest.cache): the one path
that loads an encoder, refusing any whose fingerprint differs from the one the head was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embedstore.encoders import get_encoder
from embedstore.errors import FingerprintMismatchError, InputError, NotFoundError
from embedstore.ingest.cache import embed_cached
from embedstore.store import catalog
from embedstore.store.catalog import check_name
from embedstore.store.layout import head_dir
from embedstore.store.queries import first
from embedstore.validate import as_inputs
from heads.persist import export_head_dir, read_head_dir

if TYPE_CHECKING:
    from embedstore.store.database import Database


@dataclass
class Head:
    """A fitted head (a heads.estimators model) plus its provenance (`meta`)."""

    name: str
    meta: dict
    model: Any
    train_hashes: np.ndarray
    db: "Database | None" = None
    path: Path | None = None  # the verified directory its files were read from

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.meta["classes"], dtype=object)

    @property
    def task(self) -> str:
        return self.meta.get("task", "classification")

    @property
    def fingerprints(self) -> list[str]:
        return list(self.meta["fingerprints"])

    def check_features(self, X: Any, fingerprints: Sequence[str] | None = None) -> np.ndarray:
        """X as float32 after checking its width (and, when given, the fingerprints it was made with)."""
        if fingerprints is not None and list(fingerprints) != self.fingerprints:
            raise FingerprintMismatchError(
                f"features come from encoder fingerprints {[f[:12] for f in fingerprints]}, but head {self.name!r} "
                f"was trained on {[f[:12] for f in self.fingerprints]}; embed them with {self.meta['encoders']}")
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"X must be a numeric feature matrix (use predict_raw for raw inputs): {e}") from None
        if X.ndim != 2 or X.shape[1] != self.meta["dim"]:
            found = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise InputError(f"X has {found} features, but head {self.name!r} expects {self.meta['dim']} "
                             f"({'+'.join(self.meta['encoders'])}); for raw inputs use predict_raw")
        if not np.isfinite(X).all():
            raise InputError(f"X holds NaN or infinite values (rows {np.flatnonzero(~np.isfinite(X).all(1))[:5]}); "
                             "a head predicts from finite features only")
        return X

    # -- on features (the scikit-learn contract) ------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"Head({self.name!r}, {self.meta.get('model')} {self.task} on {'+'.join(self.meta['encoders'])}, "
                f"{self.meta.get('n_train', 0):,} training items, {len(self.meta.get('classes') or [])} classes)")

    def predict_proba(self, X: Any, fingerprints: Sequence[str] | None = None) -> np.ndarray:
        """Class (or per-label) probabilities for features of this head's encoder(s)."""
        if self.task == "regression":
            raise InputError(f"head {self.name!r} is a regression head: it has no probabilities")
        X = self.check_features(X, fingerprints)
        if not len(X):
            return np.zeros((0, len(self.meta["classes"])))
        return self.model.predict_proba(X)

    def predict(self, X: Any, fingerprints: Sequence[str] | None = None) -> np.ndarray:
        """Labels (classification), values (regression) or label lists (multi-label) for features."""
        X = self.check_features(X, fingerprints)
        if not len(X):
            return np.zeros(0, dtype=object)
        out = self.model.predict(X)
        if self.task == "multilabel":
            return np.array([[c for c, on in zip(self.meta["classes"], row) if on] for row in out], dtype=object)
        return out

    # -- on raw inputs --------------------------------------------------------------------------------------------
    def embed(self, inputs: Sequence[Any]) -> tuple[np.ndarray, list[str | None]]:
        """Features for raw inputs with the head's own encoder(s), through the store's cache (nothing is written);
        (X, skip reasons). Rows of skipped inputs are zeros."""
        db = self._require_db()
        inputs = as_inputs(inputs)
        X = np.zeros((len(inputs), self.meta["dim"]), dtype=np.float32)
        reasons: list[str | None] = [None] * len(inputs)
        off = 0
        what = f"the vectors head {self.name!r} was trained on"
        for spec, fp, dim in zip(self.meta["encoders"], self.fingerprints, self.meta["dims"]):
            got = embed_cached(db, get_encoder(spec), catalog.encoder_record(db, fp), inputs, reasons=reasons,
                               fingerprint=fp, what=what)
            reasons = got.reasons
            for i, h in enumerate(got.hashes):
                if not reasons[i] and h in got.vectors:
                    X[i, off:off + dim] = got.vectors[h]
            off += dim
        return X, reasons

    def predict_raw(self, inputs: Sequence[Any]) -> list:
        """Predictions for raw inputs (None where an input was skipped, e.g. empty text)."""
        X, reasons = self.embed(inputs)
        return [None if r else p for p, r in zip(self.predict(X), reasons)]

    def predict_proba_raw(self, inputs: Sequence[Any]) -> np.ndarray:
        """Probabilities [n, classes] for raw inputs; NaN rows where an input was skipped."""
        X, reasons = self.embed(inputs)
        proba = np.asarray(self.predict_proba(X), dtype=np.float64)
        proba[[i for i, r in enumerate(reasons) if r]] = np.nan
        return proba

    def _require_db(self) -> "Database":
        if self.db is None:
            raise InputError("this head was loaded without a store; use heads.load(store, name) to embed raw "
                             "inputs (an exported head predicts from features: predict)")
        return self.db


def load(db: "Database", name: str) -> Head:
    """A saved head, after its files match the checksums the store holds for them."""
    check_name(name, "head")
    with db.connect() as con:  # held while the files are read: no writer can replace this version meanwhile
        row = first(con, "SELECT checksum FROM heads WHERE name = ?", [name])
        if row is None:
            names = [r[0] for r in con.execute("SELECT name FROM heads ORDER BY name").fetchall()]
            raise NotFoundError(f"no head {name!r} in {db.path}; heads: "
                                f"{names or 'none (fit one with heads fit)'}")
        path = head_dir(db.path, name, row[0])
        meta, model, hashes = read_head_dir(path, row[0], name)
    return Head(name, meta, model, hashes, db, path)


def load_dir(path: str | Path) -> Head:
    """An exported head directory (checked against its own manifest); predicts from features only."""
    path = Path(path)
    meta, model, hashes = read_head_dir(path, None, path.name)
    return Head(meta["name"], meta, model, hashes, None, path)


def export(db: "Database", name: str, dest: str | Path) -> Path:
    """Copy a verified head to a self-contained directory (see load_dir)."""
    head = load(db, name)  # verifies the checksums before anything is copied
    export_head_dir(head.path, Path(dest))
    return Path(dest)
