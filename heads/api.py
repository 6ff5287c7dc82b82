"""Fit, evaluate, compare, load and apply heads on cached features.

Fitting, evaluating and comparing read vectors from the store only: they never import torch or load an encoder.
`Head.predict` on raw inputs is the one path that loads the head's encoder(s), and it refuses any whose
fingerprint differs from the one the head was trained on.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embedstore.errors import FingerprintMismatchError, InputError, NotFoundError, resource_errors_as_clear
from embedstore.faults import fault_point
from embedstore.fsutil import atomic_write_json, remove_other_versions
from embedstore.store.db import first
from embedstore.store.features import FeatureSet, load_features
from embedstore.store.store import check_name, head_dir
from heads.estimators import MODELS, make
from heads.persist import export_head_dir, read_head_dir, write_head_dir
from heads.select import METRICS, PRIMARY, Protocol, evaluate_splits, score, search

if TYPE_CHECKING:
    from embedstore.store.store import EncoderRecord, Store


def _versions() -> dict:
    import lightgbm
    import sklearn
    import embedstore
    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "lightgbm": lightgbm.__version__, "embedstore": embedstore.__version__}


# -- targets -----------------------------------------------------------------------------------------------------
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


# -- the head ----------------------------------------------------------------------------------------------------
@dataclass
class Head:
    """A fitted head (a heads.estimators model) plus its provenance (`meta`)."""

    name: str
    meta: dict
    model: Any
    train_hashes: np.ndarray
    store: "Store | None" = None
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

    def _check(self, X: np.ndarray, fingerprints: Sequence[str] | None) -> np.ndarray:
        if fingerprints is not None and list(fingerprints) != self.fingerprints:
            raise FingerprintMismatchError(
                f"features come from encoder fingerprints {[f[:12] for f in fingerprints]}, but head {self.name!r} "
                f"was trained on {[f[:12] for f in self.fingerprints]}; embed them with {self.meta['encoders']}")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.meta["dim"]:
            found = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise InputError(f"X has {found} features, but head {self.name!r} expects {self.meta['dim']} "
                             f"({'+'.join(self.meta['encoders'])})")
        return X

    def predict_proba_features(self, X: np.ndarray, fingerprints: Sequence[str] | None = None) -> np.ndarray:
        """Class (or per-label) probabilities for features of this head's encoder(s)."""
        if self.task == "regression":
            raise InputError(f"head {self.name!r} is a regression head: it has no probabilities")
        return self.model.predict_proba(self._check(X, fingerprints))

    def predict_features(self, X: np.ndarray, fingerprints: Sequence[str] | None = None) -> np.ndarray:
        """Labels (classification), values (regression) or label lists (multi-label)."""
        out = self.model.predict(self._check(X, fingerprints))
        if self.task == "multilabel":
            return np.array([[c for c, on in zip(self.meta["classes"], row) if on] for row in out], dtype=object)
        return out

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
                if h and v is None:  # the encoder failed on it: ask why (e.g. an undecodable image)
                    reasons[i] = enc.skip_reason(inputs[i]) or "the encoder produced non-finite values (NaN/inf)"
                if v is not None:
                    X[i, off:off + dim] = v
            off += dim
        return X, reasons

    def predict(self, inputs: Sequence[str], *, no_cache: bool = False) -> list:
        """Predictions for raw inputs (None where an input was skipped, e.g. empty text)."""
        X, reasons = self.embed(inputs, no_cache=no_cache)
        return [None if r else p for p, r in zip(self.predict_features(X), reasons)]

    def _require_store(self) -> "Store":
        if self.store is None:
            raise InputError("this head was loaded without a store; use heads.load(store, name) to embed raw "
                             "inputs (an exported head predicts from features: predict_features)")
        return self.store


def _record_for(store: "Store", fp: str, spec: str, dim: int) -> "EncoderRecord | None":
    from embedstore.store.store import EncoderRecord
    with store.connect() as con:
        row = first(con, "SELECT table_name, modality FROM encoders WHERE fingerprint = ?", [fp])
    return EncoderRecord(fp, spec, dim, row[1], row[0]) if row else None


def _unregistered(enc) -> "EncoderRecord":
    from embedstore.store.store import EncoderRecord
    return EncoderRecord(enc.fingerprint, enc.spec, enc.dim, enc.modality, "")


# -- fit -------------------------------------------------------------------------------------------------------
def _feature_set(store: "Store", dataset: str, encoder: str, label: str, group: str | None = None,
                 records: list | None = None) -> FeatureSet:
    records = records or store.resolve_feature_set(encoder, dataset)
    return load_features(store, dataset, records, label, group)


def _records_in(store: "Store", dataset: str, specs: Sequence[str], fingerprints: Sequence[str]) -> list:
    """The same encoders (by fingerprint) in another dataset, e.g. dev or test for a head trained on train."""
    out = []
    for spec, fp in zip(specs, fingerprints):
        try:
            out.append(store.resolve_encoder(f"fp:{fp}", dataset))
        except NotFoundError:
            raise NotFoundError(f"dataset {dataset!r} has no vectors of encoder {spec!r} (fp:{fp[:12]}); "
                                f"ingest it with --encoder {spec}") from None
    return out


@resource_errors_as_clear()
def fit(store: "Store", dataset: str, label: str = "label", model: str = "logreg", encoder: str = "",
        name: str | None = None, params: dict | None = None, cv: int | None = None, test_size: float = 0.2,
        seed: int = 0, group: str | None = None, search_params: bool = False, budget: float | None = None,
        dev_dataset: str | None = None) -> tuple[Head, dict]:
    """Fit `model` on the dataset's cached vectors and save it in the store. Returns (head, metrics).

    Scoring: a stratified hold-out split of the training data (or `cv` folds; grouped by `group`), or the
    `dev_dataset` when given. `search_params` tries the model's small grid (under `budget` seconds) and keeps the
    best by macro-F1 (R2 for regression). The final model is refitted on all training rows; a test set is never
    touched here (score it once with `evaluate`)."""
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}; available: {', '.join(MODELS)}")
    task = MODELS[model].task
    name = check_name(name or f"{dataset}-{model}", "head")
    fs = _feature_set(store, dataset, encoder, label, group)
    X = fs.X
    y, label_names = targets(task, fs.y, dataset, label)
    unscored = not cv and not dev_dataset and test_size == 0  # fit once, on every row, and report no score
    if unscored and search_params:
        raise InputError("a parameter search needs a score: give a hold-out fraction (test_size > 0), cv or a "
                         "dev dataset")
    protocol = Protocol(task, cv=cv, test_size=test_size, seed=seed)
    splits = [] if unscored else protocol.splits(y, fs.groups)
    dev = None
    if dev_dataset:
        dfs = load_features(store, dev_dataset, _records_in(store, dev_dataset, fs.specs, fs.fingerprints), label)
        dev = (dfs.X, targets(task, dfs.y, dev_dataset, label, label_names)[0])
    chosen, tried = dict(params or {}), []
    t0 = time.perf_counter()
    if search_params:
        chosen, tried = search(model, dict(params or {}), X, y, task, splits, budget, dev)
    if dev is not None:
        est = make(model, chosen).fit(X, y)
        scores = {**score(task, dev[1], est.predict(dev[0])), "protocol": f"dev dataset {dev_dataset}"}
    elif unscored:
        est = make(model, chosen).fit(X, y)
        scores = {"protocol": "none (test_size=0: fitted once on all rows, not scored)"}
    else:
        scores = {**evaluate_splits(model, chosen, X, y, task, splits),
                  "protocol": protocol.describe(fs.groups is not None)}
        est = make(model, chosen).fit(X, y)
    scores["fit_seconds"] = round(time.perf_counter() - t0, 3)
    train_digest = hashlib.sha256("\n".join(f"{h}\t{v}" for h, v in sorted(zip(fs.content_hashes, fs.y.astype(str))))
                                  .encode()).hexdigest()
    classes = label_names if task == "multilabel" else (
        [str(c) for c in est.classes_] if task == "classification" else [])
    meta = {"name": name, "model": model, "task": task, "class": type(est).__name__, "params": est.get_params(),
            "dataset": dataset, "label": label, "group": group, "encoders": fs.specs,
            "fingerprints": fs.fingerprints, "dims": [int(d) for d in _dims(store, fs)], "dim": int(X.shape[1]),
            "classes": classes, "n_train": int(len(y)), "train_data_sha256": train_digest, "metrics": scores,
            "search": tried, "seed": seed, "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    checksum = write_head_dir(store.path / "heads", name, meta, est, fs.content_hashes)
    with store.transaction() as con:
        con.execute("DELETE FROM heads WHERE name = ?", [name])
        con.execute("INSERT INTO heads (name, fingerprints, encoder, dataset, label, model, params, metrics, "
                    "checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [name, json.dumps(fs.fingerprints), "+".join(fs.specs), dataset, label, model,
                     json.dumps(meta["params"], default=str), json.dumps(scores), checksum])
        fault_point("head.save.before_commit")
    fault_point("head.save.after_commit")
    current = head_dir(store.path / "heads", name, checksum)
    remove_other_versions(current.parent, "head", "", keep=current.name)
    return load(store, name), scores


def _dims(store: "Store", fs: FeatureSet) -> list[int]:
    return [r.dim for r in (store.resolve_encoder(f"fp:{fp}") for fp in fs.fingerprints)]


def load(store: "Store", name: str) -> Head:
    """A saved head, after its files match the checksums the store holds for them."""
    check_name(name, "head")
    with store.connect() as con:  # held while the files are read: no writer can replace this version meanwhile
        row = first(con, "SELECT checksum FROM heads WHERE name = ?", [name])
        if row is None:
            names = [r[0] for r in con.execute("SELECT name FROM heads ORDER BY name").fetchall()]
            raise NotFoundError(f"no head {name!r} in {store.path}; heads: "
                                f"{names or 'none (fit one with heads fit)'}")
        path = head_dir(store.path / "heads", name, row[0])
        meta, model, hashes = read_head_dir(path, row[0], name)
    return Head(name, meta, model, hashes, store, path)


def load_dir(path: str | Path) -> Head:
    """An exported head directory (checked against its own manifest); predicts from features only."""
    path = Path(path)
    meta, model, hashes = read_head_dir(path, None, path.name)
    return Head(meta["name"], meta, model, hashes, None, path)


def export(store: "Store", name: str, dest: str | Path) -> Path:
    """Copy a verified head to a self-contained directory (see load_dir)."""
    head = load(store, name)  # verifies the checksums before anything is copied
    export_head_dir(head.path, Path(dest))
    return Path(dest)


# -- evaluate ----------------------------------------------------------------------------------------------------
def evaluate(store: "Store", name: str, dataset: str, label: str = "label", report_dir: Path | None = None
             ) -> dict:
    """Score a saved head on a dataset's cached vectors of the same encoder(s); flags train/test overlap.
    Writes metrics.json (and a confusion-matrix PNG for classification) to `report_dir` when given."""
    head = load(store, name)
    fs = load_features(store, dataset, _records_in(store, dataset, head.meta["encoders"], head.fingerprints), label)
    y, _ = targets(head.task, fs.y, dataset, label, head.meta["classes"] if head.task == "multilabel" else None)
    pred = head.model.predict(head._check(fs.X, fs.fingerprints))
    out = score(head.task, y, pred)
    mine = np.array([bytes.fromhex(h) for h in fs.content_hashes], dtype="S16")
    out.update(head=name, dataset=dataset, overlap_with_training=int(np.isin(mine, head.train_hashes).sum()))
    if head.task == "classification":
        out["unseen_labels"] = sorted(set(y) - set(head.meta["classes"]))
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        if head.task == "classification":
            from heads.plots import confusion_png
            out["confusion_png"] = str(confusion_png(y, pred, head.meta["classes"], report_dir / "confusion.png",
                                                     f"{name} on {dataset}"))
        atomic_write_json(report_dir / "metrics.json", out)
    return out


def list_heads(store: "Store") -> list[dict]:
    with store.connect() as con:
        rows = con.execute("SELECT name, model, encoder, dataset, label, metrics, created FROM heads "
                           "ORDER BY name").fetchall()
    out = []
    for name, model, enc, ds, label, m, created in rows:
        m = json.loads(m) if m else {}
        task = MODELS[model].task if model in MODELS else "classification"
        out.append({"name": name, "model": model, "encoder": enc, "dataset": ds, "label": label,
                    **{k: m.get(k) for k in METRICS[task][:2]}, "protocol": m.get("protocol"),
                    "created": str(created)[:19]})
    return out


# -- compare and curve -------------------------------------------------------------------------------------------
def compare(store: "Store", dataset: str, encoders: Sequence[str], models: Sequence[str], label: str = "label",
            cv: int = 5, seed: int = 0, test_dataset: str | None = None, group: str | None = None) -> list[dict]:
    """Every (encoder or a+b concatenation, model) under one protocol: the same CV folds on the training items
    common to all encoders, and (if given) one score on the test dataset. Rows are ranked by the CV primary metric,
never by the test score (choosing by test would make it a validation set)."""
    tasks = {MODELS[m].task for m in models if m in MODELS}
    unknown = [m for m in models if m not in MODELS]
    if unknown or len(tasks) != 1:
        raise InputError(f"models must be known and of one task; got {list(models)} "
                         f"(available: {', '.join(MODELS)})")
    task = tasks.pop()
    sets = {e: _feature_set(store, dataset, e, label, group) for e in encoders}
    common = set.intersection(*(set(fs.content_hashes) for fs in sets.values()))
    rows = []
    for enc, fs in sets.items():
        keep = np.array([h in common for h in fs.content_hashes])
        order = np.argsort(np.asarray(fs.item_ids)[keep], kind="stable")
        X, yraw = fs.X[keep][order], fs.y[keep][order]
        groups = fs.groups[keep][order] if fs.groups is not None else None
        y, names = targets(task, yraw, dataset, label)
        splits = Protocol(task, cv=cv, seed=seed).splits(y, groups)
        test = None
        if test_dataset:
            tfs = load_features(store, test_dataset, _records_in(store, test_dataset, fs.specs, fs.fingerprints),
                                label)
            test = (tfs.X, targets(task, tfs.y, test_dataset, label, names)[0])
        for model in models:
            res = evaluate_splits(model, {}, X, y, task, splits)
            row = {"encoder": enc, "model": model, "dim": X.shape[1],
                   **{f"cv_{k}": res[k] for k in METRICS[task]}, "fit_seconds": res["fit_seconds"]}
            if test is not None:
                est = make(model, {}).fit(X, y)
                row.update({f"test_{k}": v for k, v in score(task, test[1], est.predict(test[0])).items()
                            if k != "n"})
            rows.append(row)
    rows.sort(key=lambda r: -r[f"cv_{PRIMARY[task]}"])  # ranked on training data only; test is a column
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def curve(store: "Store", dataset: str, encoders: Sequence[str], label: str = "label", model: str = "logreg",
          sizes: Sequence[int] = (16, 64, 256, 1024), test_dataset: str | None = None, repeats: int = 3,
          seed: int = 0) -> list[dict]:
    """Test score vs number of labelled training examples (stratified subsamples, several seeds for small
    sizes), per encoder. Without a test dataset, 20% of the training items are held out once."""
    task = MODELS[model].task
    if task != "classification":
        raise InputError("learning curves are for classification heads")
    from sklearn.model_selection import train_test_split
    rows = []
    for enc in encoders:
        fs = _feature_set(store, dataset, enc, label)
        y, _ = targets(task, fs.y, dataset, label)
        X = fs.X
        if test_dataset:
            tfs = load_features(store, test_dataset, _records_in(store, test_dataset, fs.specs, fs.fingerprints),
                                label)
            Xte, yte = tfs.X, tfs.y.astype(str)
            pool = np.arange(len(y))
        else:
            pool, held = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
            Xte, yte = X[held], y[held]
        n_classes = len(np.unique(y))
        for size in [s for s in sizes if s < len(pool)] + [len(pool)]:
            reps = repeats if size < len(pool) else 1
            scores = []
            for r in range(reps):
                if size < len(pool):
                    take, _ = train_test_split(pool, train_size=max(size, n_classes), stratify=y[pool],
                                               random_state=seed + r)
                else:
                    take = pool
                est = make(model, {}).fit(X[take], y[take])
                scores.append(score(task, yte, est.predict(Xte)))
            rows.append({"encoder": enc, "n_train": int(size), "repeats": reps,
                         **{k: float(np.mean([s[k] for s in scores])) for k in METRICS[task]},
                         "accuracy_std": float(np.std([s["accuracy"] for s in scores]))})
    return rows
