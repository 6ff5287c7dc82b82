"""Fit a head on a dataset's cached vectors and save it in the store (never imports torch or loads an encoder)."""

from __future__ import annotations

import hashlib
import json
import platform
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from embedstore.errors import InputError, resource_errors_as_clear
from embedstore.faults import fault_point
from embedstore.features import features_for, features_of
from embedstore.fsutil import remove_other_versions
from embedstore.store import catalog
from embedstore.store.catalog import check_name
from embedstore.store.layout import head_dir, scratch_root
from embedstore.validate import expect
from heads.estimators import MODELS, make
from heads.head import Head, load
from heads.persist import write_head_dir
from heads.select import (METRICS, PRIMARY, Protocol, WeakHeadWarning, evaluate_splits, paired_difference, scored,
                          search, split_groups, weakness)
from heads.targets import targets

if TYPE_CHECKING:
    from embedstore.store.database import Database


def auto_choices(est) -> dict:
    """What the estimator decided for itself: its scaling and any parameter it tuned, as stored with the head."""
    out: dict = {}
    if hasattr(est, "normalize_"):
        out["normalize"] = est.normalize_
    tuning = getattr(est, "tuning_", None)
    if tuning:
        out["tuned"] = tuning
        out[tuning["param"]] = tuning["value"]
    if getattr(est, "epochs", None) == "auto" and hasattr(est, "epochs_"):
        out["epochs"] = est.epochs_
    return out


def _versions() -> dict:
    from importlib.metadata import version

    import lightgbm
    import sklearn
    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "lightgbm": lightgbm.__version__, "embedstore": version("embedstore")}


AUTO_MODELS = ("logreg", "svm", "knn")
LEAD_SE = 1.96  # standard errors of the paired difference by which another head must beat logreg for auto to pick it
LIGHTGBM_AUTO_CELLS = 5_000_000  # rows x dims x classes up to which `auto` also tries LightGBM (~a minute a fit)


def check_model(model: str, auto: bool = False) -> str:
    if not isinstance(model, str) or (model not in MODELS and not (auto and model == "auto")):
        raise InputError(f"unknown model {model!r}; available: {', '.join(MODELS)}" + (", auto" if auto else ""))
    return model


def check_auto_labels(labels: np.ndarray, label: str) -> None:
    """`--model auto` ranks classification heads: refuse labels that look numeric (regression) or like lists."""
    values = np.unique(labels.astype(str))
    if any(v.startswith("[") for v in values[:100]):
        raise InputError(f"--model auto picks a classification head, but {label!r} holds label lists: use --model "
                         "multilabel")
    try:
        numeric = np.asarray(values, dtype=float)
    except ValueError:
        return
    if len(values) > 20 and not np.allclose(numeric, np.round(numeric)):
        raise InputError(f"--model auto picks a classification head, but {label!r} holds {len(values):,} distinct "
                         "numbers (a regression target): use --model ridge, knn-reg or lightgbm-reg")


def auto_models(n: int, dim: int, n_classes: int) -> list[str]:
    """The cheap heads `--model auto` ranks; LightGBM joins when its fits are affordable."""
    extra = ["lightgbm"] if n * dim * max(n_classes - 1, 1) <= LIGHTGBM_AUTO_CELLS else []
    return [*AUTO_MODELS, *extra]


def declared_scaling(model: str, params: dict, records: list) -> dict:
    """The encoders' unit-length declaration, where the head would otherwise measure it: with C given (not tuned),
    vectors declared unit length (every block of a concatenation, whose rows are then not unit length) are left as
    they are instead of standardised. With C tuned the head tries both anyway."""
    defaults = MODELS[model].cls().get_params()
    if defaults.get("normalize") != "auto" or "normalize" in params or params.get("C", "auto") == "auto":
        return params
    if records and all(r.unit_norm for r in records):
        return {**params, "normalize": "none"}
    return params


@contextmanager
def estimator_errors_as_clear(model: str) -> Iterator[None]:
    """scikit-learn's refusal of a parameter value (InvalidParameterError) as one line naming it."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if type(e).__name__ != "InvalidParameterError":
            raise
        raise InputError(f"model {model}: {e}; set it with --param NAME=VALUE (see --search for the usual "
                         "range)") from None


def _fit(model, chosen, X, y, task, splits, budget, dev, dev_dataset, unscored, search_params, protocol,
         grouped_by):
    """The estimator and its score under the protocol (parameters searched first when asked). A score that also
    chose the parameters is a selection score, and says so."""
    tried: list = []
    if search_params:
        chosen, tried = search(model, chosen, X, y, task, splits, budget, dev)
    if dev is not None:
        est = make(model, chosen).fit(X, y)
        scores = {**scored(task, y, dev[1], est.predict(dev[0])), "protocol": f"dev dataset {dev_dataset}"}
    elif unscored:
        est = make(model, chosen).fit(X, y)
        scores = {"protocol": "none (test_size=0: fitted once on all rows, not scored)"}
    else:
        scores = {**evaluate_splits(model, chosen, X, y, task, splits),
                  "protocol": protocol.describe(grouped_by)}
        est = make(model, chosen).fit(X, y)
    if tried and "n" in scores:
        scores["selection"] = (f"best of {len(tried)} settings tried on these same items: a selection score, "
                               "optimistic; score the head once on a test set (heads eval) for an honest figure")
    return est, scores, tried


def params_for(model: str, params: dict) -> dict:
    """The given parameters this model takes (`--model auto --param C=1`: logreg and svm get C, knn does not)."""
    takes = MODELS[model].cls().get_params()
    return {k: v for k, v in params.items() if k in takes}


def _pick_model(models: list[str], X, y, task, splits, fixed: dict, records: list) -> tuple[str, list[dict]]:
    """`--model auto`: every candidate (with its automatic choices) under the protocol's splits, best first. The
    best is kept when its lead over the default head (the first candidate: logreg) is significant: more than
    LEAD_SE standard errors of their paired difference on the held-out rows (one-sided p < 0.025). A lead the
    particular rows could explain does not justify leaving the calibrated, fast default."""
    table, held_out = [], {}
    for m in models:
        with estimator_errors_as_clear(m):
            held_out[m] = []
            res = evaluate_splits(m, declared_scaling(m, params_for(m, fixed), records), X, y, task, splits,
                                  held_out[m])
        table.append({"model": m, **{k: res[k] for k in METRICS[task]}, "fit_seconds": res["fit_seconds"]})
    table.sort(key=lambda r: -r[PRIMARY[task]])
    best, default = table[0]["model"], models[0]
    if best == default:
        return best, table
    rows = np.concatenate([te for te, _ in held_out[default]])
    lead, se = paired_difference(np.asarray(y)[rows], np.concatenate([p for _, p in held_out[best]]),
                                 np.concatenate([p for _, p in held_out[default]]))
    keep = best if lead > LEAD_SE * se else default
    for r in table:
        if r["model"] == best:
            r["lead_over_default"], r["lead_se"] = round(lead, 6), round(se, 6)
            r["decision"] = (f"kept: {best} leads {default} by {lead:.4f} macro-F1, {lead / max(se, 1e-12):.1f} "
                             f"standard errors ({se:.4f})") if keep == best else (
                             f"not kept: its lead over {default}, {lead:.4f} macro-F1, is {lead / max(se, 1e-12):.1f} "
                             f"standard errors ({se:.4f}) of the paired difference on {len(rows):,} held-out rows, "
                             f"not the {LEAD_SE} a significant lead takes")
    return keep, table


@resource_errors_as_clear()
def fit(db: "Database", dataset: str, *, encoder: str = "", label: str = "label", model: str = "logreg",
        name: str | None = None, params: dict | None = None, cv: int | None = None, test_size: float = 0.2,
        seed: int = 0, group: str | None = None, search_params: bool = False, budget: float | None = None,
        dev_dataset: str | None = None) -> tuple[Head, dict]:
    """Fit `model` on the dataset's cached vectors and save it in the store. Returns (head, metrics).

    Scoring: a stratified hold-out split of the training data (or `cv` folds; grouped by `group`), or the
    `dev_dataset` when given. `search_params` tries the model's small grid (under `budget` seconds) and keeps the
    best by macro-F1 (R2 for regression). The final model is refitted on all training rows; a test set is never
    touched here (score it once with `evaluate`). The database is released while the estimator fits, so
    readers are not kept waiting by a long fit."""
    if not hasattr(db, "connect"):
        raise InputError(f"heads.fit takes an open store (embedstore.open(path)), not {type(db).__name__} {db!r}")
    expect(dataset, str, "dataset")
    expect(encoder, str, "encoder", " (one spec; a+b concatenates several)")
    if cv is not None:
        expect(cv, int, "cv")
    if not 0 <= seed < 2 ** 32:
        raise InputError(f"seed must be from 0 to 2**32 - 1, not {seed}")
    if budget is not None and budget <= 0:
        raise InputError(f"budget must be a positive number of seconds, not {budget}")
    if budget is not None and not search_params:
        raise InputError("a budget bounds a parameter search: pass search_params=True (--search) with it")
    check_model(model, auto=True)
    task = "classification" if model == "auto" else MODELS[model].task
    if model == "auto" and (search_params or dev_dataset or (not cv and test_size == 0)):
        raise InputError("--model auto ranks heads by CV or a hold-out split of the training data: it takes no "
                         "--search, --dev-dataset or test_size=0")
    name = check_name(name or f"{dataset}-{model}", "head")
    with scratch_file(db, "features.npy", enabled=model != "auto" and hasattr(MODELS[model].cls, "fit_rows")) as path:
        return _fit_head(db, dataset, encoder, label, model, name, params, cv, test_size, seed, group,
                         search_params, budget, dev_dataset, task, path)


@contextmanager
def scratch_file(db: "Database", filename: str, enabled: bool = True) -> Iterator[Path | None]:
    """A path in the store's scratch folder for this command (None when not `enabled`), removed afterwards; what
    killed commands left there (folders named by a process id that no longer runs) is removed first."""
    if not enabled:
        yield None
        return
    db.require_writable()
    import os
    import shutil
    import tempfile
    root = scratch_root(db.path)
    root.mkdir(exist_ok=True)
    for old in root.glob("pid*-*"):
        pid = old.name[3:].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f"pid{os.getpid()}-"))
    try:
        yield folder / filename
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fit_head(db, dataset, encoder, label, model, name, params, cv, test_size, seed, group, search_params, budget,
              dev_dataset, task, memmap) -> tuple[Head, dict]:
    fs = features_for(db, dataset, encoder, label, group, memmap=memmap)
    X = fs.X
    if model == "auto":
        check_auto_labels(fs.y, label)
    y, label_names = targets(task, fs.y, dataset, label)
    unscored = not cv and not dev_dataset and test_size == 0  # fit once, on every row, and report no score
    if unscored and search_params:
        raise InputError("a parameter search needs a score: give a hold-out fraction (test_size > 0), cv or a "
                         "dev dataset")
    protocol = Protocol(task, cv=cv, test_size=test_size, seed=seed)
    groups, grouped_by = split_groups(db, dataset, fs, group) if not (unscored or dev_dataset) else (None, None)
    splits = [] if unscored else protocol.splits(y, groups)
    dev = None
    if dev_dataset:
        dfs = features_of(db, dev_dataset, fs.specs, fs.fingerprints, label)
        dev = (dfs.X, targets(task, dfs.y, dev_dataset, label, label_names)[0])
    records = [catalog.resolve_encoder(db, f"fp:{fp}") for fp in fs.fingerprints]
    dims = [r.dim for r in records]
    db.release()  # everything is read: readers may open the database while the estimator fits
    t0 = time.perf_counter()
    ranked: list[dict] = []
    if model == "auto":
        model, ranked = _pick_model(auto_models(len(y), X.shape[1], len(np.unique(y))), X, y, task, splits,
                                    dict(params or {}), records)
        params = params_for(model, dict(params or {}))
    with estimator_errors_as_clear(model):
        est, scores, tried = _fit(model, declared_scaling(model, dict(params or {}), records), X, y, task, splits,
                                  budget, dev, dev_dataset, unscored, search_params, protocol, grouped_by)
    if ranked:
        scores["selection"] = (f"best of {len(ranked)} heads ({', '.join(r['model'] for r in ranked)}) on these "
                               "same items: a selection score, optimistic; heads eval on a test set is the honest "
                               "figure")
    warning = weakness(task, scores)
    if warning:
        scores["warning"] = warning
        warnings.warn(warning, WeakHeadWarning, stacklevel=3)
    scores["fit_seconds"] = round(time.perf_counter() - t0, 3)
    train_digest = training_digest(fs.content_hashes, fs.y.astype(str))
    classes = label_names if task == "multilabel" else (
        [str(c) for c in est.classes_] if task == "classification" else [])
    values, counts = np.unique(y, return_counts=True) if task == "classification" else ([], [])
    meta = {"name": name, "model": model, "task": task, "class": type(est).__name__, "params": est.get_params(),
            "auto": auto_choices(est), "models_ranked": ranked,
            "class_counts": {str(v): int(c) for v, c in zip(values, counts)},
            **({"train_mean": float(np.mean(y))} if task == "regression" else {}),
            "dataset": dataset, "label": label, "group": group, "encoders": fs.specs,
            "fingerprints": fs.fingerprints, "dims": [int(d) for d in dims], "dim": int(X.shape[1]),
            "classes": classes, "n_train": int(len(y)), "train_data_sha256": train_digest, "metrics": scores,
            "search": tried, "seed": seed, "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with db.writing():
        return _save(db, name, meta, est, fs, scores)


def training_digest(hashes: np.ndarray, labels: np.ndarray, chunk: int = 100_000) -> str:
    """sha256 of the sorted "hash-hex<TAB>label" lines, one per training row, computed a chunk at a time."""
    order = np.lexsort((labels, hashes))  # by hash, then label: the order of the hex lines
    digest = hashlib.sha256()
    for a in range(0, len(order), chunk):
        rows = order[a:a + chunk]
        hexes = hashes[rows].tobytes().hex()  # the whole buffer: element access would drop trailing zero bytes
        lines = "\n".join(f"{hexes[32 * j:32 * j + 32]}\t{v}" for j, v in enumerate(labels[rows]))
        digest.update((("\n" if a else "") + lines).encode())
    return digest.hexdigest()


def _save(db: "Database", name: str, meta: dict, est, fs, scores: dict) -> tuple[Head, dict]:
    """The head's files, then the database row that names them, then the old version removed (lock held)."""
    dataset, label, model = meta["dataset"], meta["label"], meta["model"]
    checksum = write_head_dir(db.path, name, meta, est, fs.content_hashes)
    with db.transaction() as con:
        con.execute("DELETE FROM heads WHERE name = ?", [name])
        con.execute("INSERT INTO heads (name, fingerprints, encoder, dataset, label, model, params, metrics, "
                    "checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [name, json.dumps(fs.fingerprints), "+".join(fs.specs), dataset, label, model,
                     json.dumps(meta["params"], default=str), json.dumps(scores), checksum])
        fault_point("head.save.before_commit")
    fault_point("head.save.after_commit")
    current = head_dir(db.path, name, checksum)
    remove_other_versions(current.parent, "head", "", keep=current.name)
    return load(db, name), scores
