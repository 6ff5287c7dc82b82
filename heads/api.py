"""Fit, evaluate, load and apply heads on cached features.

Fitting and evaluating read vectors from the store only: they never import torch or load an encoder.
`Head.predict` on raw inputs is the one path that loads the head's encoder(s), and it refuses any whose
fingerprint differs from the one the head was trained on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embedstore.errors import FingerprintMismatchError, InputError, NotFoundError
from embedstore.store.db import first
from embedstore.store.features import FeatureSet, load_features
from heads.estimators import MODELS, make
from heads.persist import load_head_files, save_head

if TYPE_CHECKING:
    from embedstore.store.store import EncoderRecord, Store


def metrics(y_true: Sequence, y_pred: Sequence) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
            "mcc": float(matthews_corrcoef(y_true, y_pred)), "n": int(len(y_true))}


def _versions() -> dict:
    import lightgbm
    import sklearn
    import embedstore
    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "lightgbm": lightgbm.__version__, "embedstore": embedstore.__version__}


def _check_labels(fs: FeatureSet, dataset: str, label: str) -> None:
    classes, counts = np.unique(fs.y.astype(str), return_counts=True)
    if len(classes) < 2:
        raise InputError(f"dataset {dataset!r}: label {label!r} has {len(classes)} distinct value(s) "
                         f"{list(classes)}; a classifier needs at least 2")


@dataclass
class Head:
    """A fitted head: the model plus its provenance (`meta`)."""

    name: str
    meta: dict
    model: Any
    train_hashes: np.ndarray
    store: "Store | None" = None

    @property
    def classes_(self) -> np.ndarray:
        return np.asarray(self.meta["classes"], dtype=object)

    @property
    def fingerprints(self) -> list[str]:
        return list(self.meta["fingerprints"])

    def _check_dim(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.meta["dim"]:
            found = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise InputError(f"X has {found} features, but head {self.name!r} expects {self.meta['dim']} "
                             f"({'+'.join(self.meta['encoders'])})")
        return X

    def predict_proba_features(self, X: np.ndarray, fingerprints: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities (columns in `classes_` order) for features of this head's encoder(s)."""
        if fingerprints is not None and list(fingerprints) != self.fingerprints:
            raise FingerprintMismatchError(
                f"features come from encoder fingerprints {[f[:12] for f in fingerprints]}, but head {self.name!r} "
                f"was trained on {[f[:12] for f in self.fingerprints]}; embed them with {self.meta['encoders']}")
        X = self._check_dim(X)
        if self.meta["format"] == "lightgbm":
            p = np.asarray(self.model.predict(X))
            return np.column_stack([1 - p, p]) if p.ndim == 1 else p
        return self.model.predict_proba(X)

    def predict_features(self, X: np.ndarray, fingerprints: Sequence[str] | None = None) -> np.ndarray:
        return self.classes_[self.predict_proba_features(X, fingerprints).argmax(axis=1)]

    def embed(self, inputs: Sequence[str], *, no_cache: bool = False) -> tuple[np.ndarray, list[str | None]]:
        """Features for raw inputs with the head's own encoders, through the store's cache; (X, skip reasons).
        Rows of skipped inputs are zeros; `no_cache` reads the cache but writes nothing."""
        from embedstore.encoders import get_encoder
        from embedstore.ingest.hashing import content_hash
        from embedstore.ingest.pipeline import embed_missing, insert_embeddings, lookup_cached
        store = self._require_store()
        inputs = list(inputs)
        X = np.zeros((len(inputs), self.meta["dim"]), dtype=np.float32)
        reasons: list[str | None] = [None] * len(inputs)
        off = 0
        for spec, fp, dim in zip(self.meta["encoders"], self.fingerprints, self.meta["dims"]):
            enc = get_encoder(spec)
            if enc.fingerprint != fp:
                raise FingerprintMismatchError(
                    f"encoder {spec!r} now has fingerprint {enc.fingerprint[:12]}, but head {self.name!r} was "
                    f"trained on {fp[:12]} (weights or settings changed); refit the head on re-ingested data")
            for i, text in enumerate(inputs):
                reasons[i] = reasons[i] or enc.skip_reason(text)
            hashes = [content_hash(t) if not reasons[i] else None for i, t in enumerate(inputs)]
            wanted = sorted({h for h in hashes if h})
            record = _record_for(store, fp, spec, dim)
            with store.connect() as con:
                vec_of, trunc_of = lookup_cached(con, record, wanted) if record else ({}, {})
            todo = [h for h in wanted if h not in vec_of]
            if todo:
                content_of = {h: t for h, t in zip(hashes, inputs) if h}
                rows = embed_missing(enc, record or _unregistered(enc), todo, content_of, vec_of, trunc_of)
                if not no_cache:
                    record = store.register_encoder(enc)
                    with store.transaction() as con:
                        insert_embeddings(con, record, rows)
            for i, h in enumerate(hashes):
                v = vec_of.get(h) if h else None
                if h and v is None:
                    reasons[i] = "the encoder produced non-finite values (NaN/inf)"
                if v is not None:
                    X[i, off:off + dim] = v
            off += dim
        return X, reasons

    def predict(self, inputs: Sequence[str], *, no_cache: bool = False) -> list:
        """Labels for raw inputs (None where an input was skipped, e.g. empty text)."""
        X, reasons = self.embed(inputs, no_cache=no_cache)
        labels = self.predict_features(X)
        return [None if r else lab for lab, r in zip(labels, reasons)]

    def _require_store(self) -> "Store":
        if self.store is None:
            raise InputError("this head was loaded without a store; use heads.load(store, name)")
        return self.store


def _record_for(store: "Store", fp: str, spec: str, dim: int) -> "EncoderRecord | None":
    from embedstore.store.store import EncoderRecord
    with store.connect() as con:
        row = first(con, "SELECT table_name, modality FROM encoders WHERE fingerprint = ?", [fp])
    return EncoderRecord(fp, spec, dim, row[1], row[0]) if row else None


def _unregistered(enc) -> "EncoderRecord":
    from embedstore.store.store import EncoderRecord
    return EncoderRecord(enc.fingerprint, enc.spec, enc.dim, enc.modality, "")


def fit(store: "Store", dataset: str, label: str = "label", model: str = "logreg", encoder: str = "",
        name: str | None = None, params: dict | None = None, cv: int | None = None, test_size: float = 0.2,
        seed: int = 0) -> tuple[Head, dict]:
    """Fit `model` on the dataset's cached vectors; score it on a stratified held-out split (or `cv` folds);
    refit on everything and save it in the store. Returns (head, metrics)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, train_test_split
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}; available: {', '.join(MODELS)}")
    name = name or f"{dataset}-{model}"
    records = store.resolve_feature_set(encoder, dataset)
    fs = load_features(store, dataset, records, label)
    _check_labels(fs, dataset, label)
    X, y = fs.X, fs.y.astype(str)
    est = make(model, params)
    t0 = time.perf_counter()
    if cv:
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        per = [metrics(y[te], clone(est).fit(X[tr], y[tr]).predict(X[te])) for tr, te in folds.split(X, y)]
        scores = {k: float(np.mean([m[k] for m in per])) for k in ("accuracy", "macro_f1", "mcc")}
        scores.update({f"{k}_std": float(np.std([m[k] for m in per])) for k in ("accuracy", "macro_f1", "mcc")})
        scores.update(protocol=f"{cv}-fold stratified CV", n=len(y))
    else:
        tr, te = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
        scores = metrics(y[te], clone(est).fit(X[tr], y[tr]).predict(X[te]))
        scores["protocol"] = f"stratified hold-out {test_size:.0%} (seed {seed})"
    est.fit(X, y)
    scores["fit_seconds"] = round(time.perf_counter() - t0, 3)
    train_digest = hashlib.sha256("\n".join(f"{h}\t{v}" for h, v in sorted(zip(fs.content_hashes, y)))
                                  .encode()).hexdigest()
    meta = {"name": name, "model": model, "format": MODELS[model].format, "params": est.get_params(),
            "dataset": dataset, "label": label, "encoders": fs.specs, "fingerprints": fs.fingerprints,
            "dims": [r.dim for r in records], "dim": int(X.shape[1]), "classes": [str(c) for c in est.classes_],
            "n_train": int(len(y)), "train_data_sha256": train_digest, "metrics": scores, "seed": seed,
            "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    checksum = save_head(store.path / "heads", name, meta, est, MODELS[model].format, fs.content_hashes)
    with store.transaction() as con:
        con.execute("DELETE FROM heads WHERE name = ?", [name])
        con.execute("INSERT INTO heads (name, fingerprints, encoder, dataset, label, model, params, metrics, "
                    "checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [name, json.dumps(fs.fingerprints), "+".join(fs.specs), dataset, label, model,
                     json.dumps(meta["params"], default=str), json.dumps(scores), checksum])
    return load(store, name), scores


def load(store: "Store", name: str) -> Head:
    """A saved head, after its files match the checksums the database holds for them."""
    with store.connect() as con:
        row = first(con, "SELECT checksum FROM heads WHERE name = ?", [name])
        names = [r[0] for r in con.execute("SELECT name FROM heads ORDER BY name").fetchall()] if row is None else []
    if row is None:
        raise NotFoundError(f"no head {name!r} in {store.path}; heads: {names or 'none (fit one with heads fit)'}")
    meta, model, hashes = load_head_files(store.path / "heads", name, row[0])
    return Head(name, meta, model, hashes, store)


def evaluate(store: "Store", name: str, dataset: str, label: str = "label") -> dict:
    """Score a saved head on a dataset's cached vectors of the same encoder(s); flags train/test overlap."""
    head = load(store, name)
    records = []
    for spec, fp in zip(head.meta["encoders"], head.fingerprints):
        try:
            records.append(store.resolve_encoder(f"fp:{fp}", dataset))
        except NotFoundError:
            raise NotFoundError(f"dataset {dataset!r} has no vectors of head {name!r}'s encoder {spec!r} "
                                f"(fp:{fp[:12]}); ingest it with --encoder {spec}") from None
    fs = load_features(store, dataset, records, label)
    pred = head.predict_features(fs.X, fs.fingerprints)
    out = metrics(fs.y.astype(str), pred)
    mine = np.array([bytes.fromhex(h) for h in fs.content_hashes], dtype="S16")
    overlap = int(np.isin(mine, head.train_hashes).sum())
    out.update(head=name, dataset=dataset, overlap_with_training=overlap,
               unseen_labels=sorted(set(fs.y.astype(str)) - set(head.meta["classes"])))
    return out


def list_heads(store: "Store") -> list[dict]:
    with store.connect() as con:
        rows = con.execute("SELECT name, model, encoder, dataset, label, metrics, created FROM heads "
                           "ORDER BY name").fetchall()
    out = []
    for name, model, enc, ds, label, m, created in rows:
        m = json.loads(m) if m else {}
        out.append({"name": name, "model": model, "encoder": enc, "dataset": ds, "label": label,
                    "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"), "mcc": m.get("mcc"),
                    "protocol": m.get("protocol"), "created": str(created)[:19]})
    return out
