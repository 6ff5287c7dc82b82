"""Which encoder and which head? `compare` ranks encoders x models under one CV protocol; `curve` shows the score
against the number of labelled examples. Both read cached vectors only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from embedstore.errors import InputError
from heads.estimators import MODELS, make
from embedstore.features import features_for, features_of
from heads.training import check_model
from heads.select import METRICS, PRIMARY, Protocol, evaluate_splits, score
from heads.targets import targets
from embedstore.validate import split_names

if TYPE_CHECKING:
    from embedstore.store.database import Database

DEFAULT_MODELS = ("logreg", "svm", "knn", "mlp", "lightgbm")


def compare(db: "Database", dataset: str, *, encoder: str | Sequence[str] = "", label: str = "label",
            model: str | Sequence[str] = DEFAULT_MODELS, cv: int = 5, test_dataset: str | None = None,
            group: str | None = None, seed: int = 0) -> list[dict]:
    """Every (encoder or a+b concatenation, model) under one protocol: the same CV folds on the training items
    common to all encoders, and (if given) one score on the test dataset. Rows are ranked by the CV primary metric,
    never by the test score (choosing by test would make it a validation set). `encoder` and `model` take one
    name, a comma-separated list, or a sequence ('' = the dataset's only encoder)."""
    encoders = split_names(encoder, "encoders") if encoder else [""]
    models = [check_model(m) for m in split_names(model, "models")]
    tasks = {MODELS[m].task for m in models}
    if len(tasks) != 1:
        raise InputError(f"compare scores models of one task under one protocol; {models} mix "
                         f"{', '.join(sorted(tasks))}: compare them in separate runs")
    task = tasks.pop()
    sets = {e: features_for(db, dataset, e, label, group) for e in encoders}
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
            tfs = features_of(db, test_dataset, fs.specs, fs.fingerprints, label)
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


def curve(db: "Database", dataset: str, *, encoder: str | Sequence[str] = "", label: str = "label", model: str = "logreg",
          sizes: Sequence[int] = (16, 64, 256, 1024), test_dataset: str | None = None, repeats: int = 3,
          seed: int = 0) -> list[dict]:
    """Test score vs number of labelled training examples (stratified subsamples, several seeds for small
    sizes), per encoder (one spec, a comma-separated list, or a sequence). Without a test dataset, 20% of the
    training items are held out once."""
    task = MODELS[check_model(model)].task
    if task != "classification":
        raise InputError("learning curves are for classification heads")
    if not 1 <= repeats <= 100 or any(not 1 <= s <= 1_000_000_000 for s in sizes):
        raise InputError(f"curve: repeats must be from 1 to 100 (got {repeats:,}) and every size at least 1 "
                         f"(got {list(sizes)[:5]})")
    from sklearn.model_selection import train_test_split
    rows = []
    for enc in (split_names(encoder, "encoders") if encoder else [""]):
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
                         "accuracy_std": float(np.std([s["accuracy"] for s in scores]))})
    return rows
