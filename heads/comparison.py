"""Which encoder and which head? `compare` ranks encoders x models under one CV protocol; `curve` shows the score
against the number of labelled examples. Both read cached vectors only."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from embedstore.errors import InputError
from embedstore.features import features_for, features_of
from embedstore.validate import split_names
from heads.estimators import MODELS, make
from heads.select import (METRICS, PRIMARY, Protocol, evaluate_splits, majority_baseline, score, scored,
                          split_groups, weakness)
from heads.targets import targets
from heads.training import LIGHTGBM_AUTO_CELLS, check_model, declared_scaling
from embedstore.store import catalog

if TYPE_CHECKING:
    from embedstore.store.database import Database

DEFAULT_MODELS = ("logreg", "svm", "knn", "mlp", "lightgbm")
BASELINE = "majority-baseline"
Progress = Callable[[dict, int, int, float], None]  # (row just finished, rows done, rows planned, seconds so far)


class Budget:
    """Seconds a comparison may spend: once they are spent no new row starts (the first always runs); the rows
    not run are listed."""

    def __init__(self, seconds: float | None):
        if seconds is not None and not seconds > 0:
            raise InputError(f"budget must be a positive number of seconds, not {seconds}")
        self.seconds, self.start = seconds, time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed > self.seconds


class Comparison(list):
    """The ranked rows (a list of dicts, best first), plus `baseline`: the majority-class baseline scored on the same
    folds (and test set), and `notes`: models left out of the default list, rows the budget did not run."""

    def __init__(self, rows: list[dict], baseline: dict | None, notes: list[str]):
        super().__init__(rows)
        self.baseline = baseline
        self.notes = notes


def default_models(n: int, dim: int, n_classes: int) -> tuple[list[str], str | None]:
    """DEFAULT_MODELS, less LightGBM where its fits would dominate (a minute or more each), with the reason."""
    if n * dim * max(n_classes - 1, 1) <= LIGHTGBM_AUTO_CELLS:
        return list(DEFAULT_MODELS), None
    return [m for m in DEFAULT_MODELS if m != "lightgbm"], (
        f"lightgbm left out of the default list on {n:,} x {dim}-d features (each fit would take minutes); "
        "name it in --model to include it")


def compare(db: "Database", dataset: str, *, encoder: str | Sequence[str] = "", label: str = "label",
            model: str | Sequence[str] | None = None, cv: int = 5, test_dataset: str | None = None,
            group: str | None = None, seed: int = 0, budget: float | None = None,
            progress: Progress | None = None) -> Comparison:
    """Every (encoder or a+b concatenation, model) under one protocol: the same CV folds on the training items
    common to all encoders, and (if given) one score on the test dataset. Rows are ranked by the CV primary metric,
    never by the test score (choosing by test would make it a validation set). `encoder` and `model` take one
    name, a comma-separated list, or a sequence ('' = the dataset's only encoder; model None = DEFAULT_MODELS,
    without LightGBM on large wide feature sets). `.baseline` is the majority-class baseline under the same
    folds; a row whose head does not beat it carries a `warning`. `budget` (seconds) stops starting new rows once
    spent (those not run are listed in `.notes`); `progress` is called after each row."""
    encoders = split_names(encoder, "encoders") if encoder else [""]
    models = ([check_model(m) for m in split_names(model, "models")] if model is not None
              else list(DEFAULT_MODELS))
    tasks = {MODELS[m].task for m in models}
    if len(tasks) != 1:
        raise InputError(f"compare scores models of one task under one protocol; {models} mix "
                         f"{', '.join(sorted(tasks))}: compare them in separate runs")
    task = tasks.pop()
    clock = Budget(budget)
    sets = {e: features_for(db, dataset, e, label, group) for e in encoders}
    common = set.intersection(*(set(fs.content_hashes) for fs in sets.values()))
    plan, notes = [], []
    for enc, fs in sets.items():
        chosen = models
        if model is None:
            chosen, note = default_models(len(common), fs.X.shape[1], len(np.unique(fs.y.astype(str))))
            if note:
                notes.append(f"{enc or fs.specs[0]}: {note}")
        plan += [(enc, m) for m in chosen]
    rows: list[dict] = []
    baseline_row = None
    for enc, fs in sets.items():
        keep = np.array([h in common for h in fs.content_hashes])
        order = np.argsort(np.asarray(fs.item_ids)[keep], kind="stable")
        X, yraw = fs.X[keep][order], fs.y[keep][order]
        groups, grouped_by = split_groups(db, dataset, fs, group)
        if groups is not None and not group and not any("inside longer rows" in n for n in notes):
            notes.append(f"CV folds grouped by {grouped_by}: a sentence and its phrases are never scored against "
                         "each other; give --group-column to group otherwise")
        groups = groups[keep][order] if groups is not None else None
        y, names = targets(task, yraw, dataset, label)
        splits = Protocol(task, cv=cv, seed=seed).splits(y, groups)
        records = [catalog.resolve_encoder(db, f"fp:{fp}") for fp in fs.fingerprints]
        test = None
        if test_dataset:
            tfs = features_of(db, test_dataset, fs.specs, fs.fingerprints, label)
            test = (tfs.X, targets(task, tfs.y, test_dataset, label, names)[0])
        if baseline_row is None:
            baseline_row = _baseline_row(task, y, splits, test)
        for m in [m for e, m in plan if e == enc]:
            if rows and clock.spent():  # the first row always runs
                break
            params = declared_scaling(m, {}, records)
            res = evaluate_splits(m, params, X, y, task, splits)
            row = {"encoder": enc, "model": m, "dim": X.shape[1],
                   **{f"cv_{k}": res[k] for k in METRICS[task]}, "fit_seconds": res["fit_seconds"]}
            if test is not None:
                est = make(m, params).fit(X, y)
                row.update({f"test_{k}": v for k, v in scored(task, y, test[1], est.predict(test[0])).items()
                            if k in METRICS[task]})
            warn = weakness(task, res)
            if warn:
                row["warning"] = warn.split(";")[0]
            rows.append(row)
            if progress:
                progress(row, len(rows), len(plan), clock.elapsed)
    rows.sort(key=lambda r: -r[f"cv_{PRIMARY[task]}"])  # ranked on training data only; test is a column
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    done = {(r["encoder"], r["model"]) for r in rows}
    left = [f"{e or '-'}/{m}" for e, m in plan if (e, m) not in done]
    if left:
        notes.append(f"budget of {budget:g} s spent: not run: {', '.join(left)}")
    return Comparison(rows, baseline_row, notes)


def _baseline_row(task: str, y: np.ndarray, splits: list, test) -> dict:
    """The majority-class baseline scored like every model: the same folds (and the test set)."""
    per = [majority_baseline(task, y[tr], y[te]) for tr, te in splits]
    row = {"encoder": "", "model": BASELINE, "dim": 0, "rank": None,
           **{f"cv_{k}": float(np.mean([p[k] for p in per])) for k in METRICS[task]}, "fit_seconds": 0.0}
    if test is not None:
        row.update({f"test_{k}": v for k, v in majority_baseline(task, y, test[1]).items() if k in METRICS[task]})
    return row


def curve(db: "Database", dataset: str, *, encoder: str | Sequence[str] = "", label: str = "label", model: str = "logreg",
          sizes: Sequence[int] = (16, 64, 256, 1024), test_dataset: str | None = None, repeats: int = 3,
          seed: int = 0, budget: float | None = None, progress: Progress | None = None) -> list[dict]:
    """Test score vs number of labelled training examples (stratified subsamples, several seeds for small
    sizes), per encoder (one spec, a comma-separated list, or a sequence). Without a test dataset, 20% of the
    training items are held out once. Each row has the majority baseline's accuracy on the same test items;
    `budget` and `progress` as in `compare` (rows not run once the budget is spent are left out)."""
    task = MODELS[check_model(model)].task
    if task != "classification":
        raise InputError("learning curves are for classification heads")
    if not 1 <= repeats <= 100 or any(not 1 <= s <= 1_000_000_000 for s in sizes):
        raise InputError(f"curve: repeats must be from 1 to 100 (got {repeats:,}) and every size at least 1 "
                         f"(got {list(sizes)[:5]})")
    from sklearn.model_selection import train_test_split
    clock = Budget(budget)
    encoders = split_names(encoder, "encoders") if encoder else [""]
    planned = len(encoders) * (len(set(sizes)) + 1)  # an upper bound: sizes above the pool are skipped
    rows: list[dict] = []
    for enc in encoders:
        fs = features_for(db, dataset, enc, label)
        y, _ = targets(task, fs.y, dataset, label)
        X = fs.X
        if test_dataset:
            tfs = features_of(db, test_dataset, fs.specs, fs.fingerprints, label)
            Xte, yte = tfs.X, tfs.y.astype(str)
            pool = np.arange(len(y))
        else:
            pool, held = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
            Xte, yte = X[held], y[held]
        n_classes = len(np.unique(y))
        for size in [s for s in sizes if s < len(pool)] + [len(pool)]:
            if rows and clock.spent():
                return rows
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
            rows.append({"encoder": enc, "n_train": int(len(take)), "repeats": reps,
                         **{k: float(np.mean([s[k] for s in scores])) for k in METRICS[task]},
                         "accuracy_std": float(np.std([s["accuracy"] for s in scores])),
                         "baseline_accuracy": majority_baseline(task, y[take], yte)["accuracy"]})
            if progress:
                progress(rows[-1], len(rows), planned, clock.elapsed)
    return rows
