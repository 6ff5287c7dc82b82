"""Model selection on cached features: one splitting protocol, task-aware metrics, a budgeted search,
encoder x model comparison and learning curves. Selection uses train (and dev) only; a test set is scored once.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from embedstore.errors import InputError, WeakHeadWarning  # noqa: F401 (re-exported)
from heads.estimators import MODELS, make
from heads.streaming import CHUNK_ROWS, RowReader


# -- metrics -----------------------------------------------------------------------------------------------------
def score(task: str, y_true: Any, y_pred: Any) -> dict:
    """Classification: accuracy, macro-F1, MCC. Regression: R2, MAE, RMSE. Multi-label: micro/macro-F1, exact."""
    from sklearn import metrics as m
    n = int(len(y_true))
    if task == "regression":
        return {"r2": float(m.r2_score(y_true, y_pred)), "mae": float(m.mean_absolute_error(y_true, y_pred)),
                "rmse": float(np.sqrt(m.mean_squared_error(y_true, y_pred))), "n": n}
    if task == "multilabel":
        return {"micro_f1": float(m.f1_score(y_true, y_pred, average="micro", zero_division=0)),
                "macro_f1": float(m.f1_score(y_true, y_pred, average="macro", zero_division=0)),
                "subset_accuracy": float(m.accuracy_score(y_true, y_pred)), "n": n}
    return {"accuracy": float(m.accuracy_score(y_true, y_pred)),
            "macro_f1": float(m.f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "mcc": float(m.matthews_corrcoef(y_true, y_pred)), "n": n}


def majority_baseline(task: str, y_train: Any, y_true: Any) -> dict:
    """The scores of the head that ignores its input: the training majority class (classification), the
    training mean (regression), each label's training majority (multi-label). Chance MCC and R2 are 0."""
    y_train, y_true = np.asarray(y_train), np.asarray(y_true)
    if task == "regression":
        pred = np.full(len(y_true), float(np.mean(y_train)))
    elif task == "multilabel":
        pred = np.tile((y_train.mean(axis=0) > 0.5).astype(y_true.dtype), (len(y_true), 1))
    else:
        values, counts = np.unique(y_train, return_counts=True)
        pred = np.full(len(y_true), values[counts.argmax()], dtype=values.dtype)
    out = score(task, y_true, pred)
    if task == "classification":
        out["predicts"] = str(values[counts.argmax()])
    return out


def scored(task: str, y_train: Any, y_true: Any, y_pred: Any) -> dict:
    """`score`, with the majority baseline beside it and how many classes the head predicted."""
    out = score(task, y_true, y_pred)
    out["baseline"] = majority_baseline(task, y_train, y_true)
    if task == "classification":
        out["predicted_classes"] = int(len(np.unique(np.asarray(y_pred))))
    return out


ADVICE = ("try: scaled features (--param normalize=standard), a parameter search (--search), or another head "
          "(--model auto, or heads compare)")


def weakness(task: str, scores: dict) -> str | None:
    """Why a head's scores say it learned nothing useful (None when it beat the majority baseline).
    Classification: one predicted class, or MCC under 0.05 (chance is 0) without a macro-F1 above the baseline's;
    regression: R2 <= 0 (the training mean's); multi-label: macro-F1 not above the baseline's."""
    base = scores.get("baseline")
    if not base or "n" not in scores:
        return None
    if task == "classification":
        if scores.get("predicted_classes") == 1:
            return (f"the head predicts a single class for every scored item: it is the majority-class baseline "
                    f"(accuracy {base['accuracy']:.3f}, MCC 0) in disguise; {ADVICE}")
        if scores["mcc"] < 0.05 and scores["macro_f1"] <= base["macro_f1"] + 0.02:
            return (f"the head does not beat chance: MCC {scores['mcc']:.3f} (chance 0), macro-F1 "
                    f"{scores['macro_f1']:.3f} vs {base['macro_f1']:.3f} for always answering "
                    f"{base.get('predicts')!r}; {ADVICE}")
        return None
    if task == "regression":
        if scores["r2"] <= 0:
            return (f"the head is no better than predicting the training mean (R2 {scores['r2']:.3f}; the mean's is "
                    f"{base['r2']:.3f}); {ADVICE}")
        return None
    if scores["macro_f1"] <= base["macro_f1"] + 0.01:
        return f"the head does not beat each label's majority (macro-F1 {scores['macro_f1']:.3f} vs {base['macro_f1']:.3f}); {ADVICE}"
    return None


def mean_scores(task: str, per: list[dict]) -> dict:
    """Mean of each metric over splits (std too when there are several), the baseline's mean, and the fewest
    classes any split's predictions held."""
    out = {k: float(np.mean([p[k] for p in per])) for k in METRICS[task]}
    if len(per) > 1:
        out.update({f"{k}_std": float(np.std([p[k] for p in per])) for k in METRICS[task]})
    out["n"] = int(sum(p["n"] for p in per))
    out["baseline"] = {k: float(np.mean([p["baseline"][k] for p in per])) for k in METRICS[task]}
    if "predicts" in per[0]["baseline"]:
        out["baseline"]["predicts"] = per[0]["baseline"]["predicts"]
    if task == "classification":
        out["predicted_classes"] = min(p["predicted_classes"] for p in per)
    return out


PRIMARY = {"classification": "macro_f1", "multilabel": "macro_f1", "regression": "r2"}
METRICS = {"classification": ("accuracy", "macro_f1", "mcc"), "multilabel": ("micro_f1", "macro_f1",
           "subset_accuracy"), "regression": ("r2", "mae", "rmse")}


# -- splits ------------------------------------------------------------------------------------------------------
OVERLAP_SPAN = 4  # words: a row this long or longer that lies inside another row is scored on its side of a split
OVERLAP_CANDIDATES = 64  # rows looked at per opening run (a run common to more rows is checked against these)
OVERLAP_MAX_ROWS = 2_000_000  # above it rows are not grouped: the runs' table would take GBs (said in the protocol)


def overlap_groups(texts: list[str | None], span: int = OVERLAP_SPAN) -> np.ndarray | None:
    """Groups of text rows joined (transitively) when one row's words, `span` or more of them, appear as a
    contiguous run inside another row; None when no row lies inside another.

    Why: datasets such as SST-2 hold every phrase of a parse tree as its own row, so a random split puts a
    sentence's sub-phrases on both sides, and a memorising head (kNN) scores 0.85 on a hold-out split against
    logistic regression's 0.84, then 0.68 against its 0.81 on real test sentences; grouped, the hold-out says 0.79
    against 0.84, as the test does. Containment, not any shared run: templated messages (spam) share runs without
    being phrases of each other, and grouping them would hide what a head must generalise across."""
    norm = [f" {' '.join(t.lower().split())} " if t else "" for t in texts]
    runs: dict[str, list[int]] = {}
    for i, t in enumerate(norm):
        words = t.split()
        for j in range(len(words) - span + 1):
            rows = runs.setdefault(" ".join(words[j:j + span]), [])
            if len(rows) < OVERLAP_CANDIDATES:
                rows.append(i)
    parent = np.arange(len(texts))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    joined = False
    for i, t in enumerate(norm):
        words = t.split()
        if len(words) < span:
            continue
        for k in runs.get(" ".join(words[:span]), ()):
            if k != i and len(norm[k]) >= len(t) and t in norm[k] and (a := root(i)) != (b := root(k)):
                parent[a] = b
                joined = True
    return np.array([root(i) for i in range(len(texts))]) if joined else None


def split_groups(db: Any, dataset: str, fs: Any, group: str | None) -> tuple[np.ndarray | None, str | None]:
    """What a dataset's splits keep together, and its name: the `group` column when given; else, for text rows,
    `overlap_groups` (None, None when rows share nothing)."""
    if group:
        return fs.groups, f"column {group!r}"
    if len(fs.item_ids) > OVERLAP_MAX_ROWS:
        with db.connect() as con:
            if con.execute("SELECT 1 FROM items WHERE dataset = ? AND text IS NOT NULL LIMIT 1",
                           [dataset]).fetchall() == []:
                return None, None  # no text (images, audio, vectors imported without it): nothing to group by
        import logging
        logging.getLogger("embedstore").warning(
            "%s rows are too many to group by containment (at most %s): splits are not grouped; give "
            "--group-column to keep related rows together", f"{len(fs.item_ids):,}", f"{OVERLAP_MAX_ROWS:,}")
        return None, None
    from embedstore.features import texts_of
    groups = overlap_groups(texts_of(db, dataset, fs.item_ids))
    return (groups, f"containment ({OVERLAP_SPAN}+ word phrases inside longer rows)") if groups is not None else (None, None)


@dataclass
class Protocol:
    """How a model is scored on training data: K folds (stratified, grouped when groups are given) or one
    stratified hold-out split. The same Protocol gives every model and encoder identical splits."""

    task: str
    cv: int | None = 5
    test_size: float = 0.2
    seed: int = 0
    small_classes: list = field(default_factory=list)  # classes too small to stratify a hold-out split by

    def splits(self, y: np.ndarray, groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The folds (or the one hold-out split). A hold-out split is stratified unless a class has a single
        item, which no split can put on both sides: then it is a plain shuffled split, and `describe` says so."""
        import warnings

        from sklearn import model_selection as ms
        n = len(y)
        if self.cv is not None and not 2 <= self.cv <= n:
            raise InputError(f"cv={self.cv}: K-fold CV needs K from 2 to the number of training items ({n:,})")
        if not self.cv and not 0 < self.test_size < 1:
            raise InputError(f"test_size={self.test_size}: the hold-out fraction must be between 0 and 1 (0 alone "
                             "means: fit once on every row, without a score)")
        idx = np.arange(n)
        strat = y if self.task == "classification" else None
        if strat is not None:
            names, counts = np.unique(strat, return_counts=True)
            self.small_classes = [str(c) for c in names[counts < 2]]
        if self.cv:
            with warnings.catch_warnings():  # classes with fewer items than folds: sklearn warns, the folds still work
                warnings.simplefilter("ignore", UserWarning)
                return self._folds(ms, idx, strat, groups)
        if groups is not None:
            splitter = ms.GroupShuffleSplit(n_splits=1, test_size=self.test_size, random_state=self.seed)
            return list(splitter.split(idx, y, groups))
        if self.small_classes:
            strat = None
        try:
            tr, te = ms.train_test_split(idx, test_size=self.test_size, stratify=strat, random_state=self.seed)
        except ValueError as e:
            k = len(np.unique(strat)) if strat is not None else 1
            raise InputError(f"test_size={self.test_size}: {e}; a stratified hold-out needs at least one item per "
                             f"class on each side: use test_size >= {k / n:.3g} (and <= {1 - k / n:.3g}), or "
                             "--cv K") from None
        return [(tr, te)]

    def _folds(self, ms, idx: np.ndarray, strat: np.ndarray | None, groups: np.ndarray | None) -> list:
        if groups is not None:
            k = ms.StratifiedGroupKFold if strat is not None else ms.GroupKFold
            kw = {"shuffle": True, "random_state": self.seed} if strat is not None else {}
            if len(np.unique(groups)) < self.cv:
                raise InputError(f"cv={self.cv}: grouped CV needs at least {self.cv} groups, found "
                                 f"{len(np.unique(groups))}")
            return list(k(n_splits=self.cv, **kw).split(idx, strat, groups))
        if strat is not None and np.unique(strat, return_counts=True)[1].max() < self.cv:
            strat = None  # no class has K items: stratified K-fold cannot run; plain K-fold can
        k = ms.StratifiedKFold if strat is not None else ms.KFold
        return list(k(n_splits=self.cv, shuffle=True, random_state=self.seed).split(idx, strat))

    def describe(self, grouped_by: str | None = None) -> str:
        """The protocol in words; `grouped_by` says what the splits were grouped by, if anything."""
        stratified = self.task == "classification" and (self.cv or not (grouped_by or self.small_classes))
        kind = "stratified " if stratified else ""
        by = f", grouped by {grouped_by}" if grouped_by else ""
        if self.cv:
            return f"{self.cv}-fold {kind}CV (seed {self.seed}{by})"
        why = (f"; not stratified: {len(self.small_classes)} class(es) have a single item, e.g. "
               f"{self.small_classes[:3]}") if self.small_classes and not stratified and not grouped_by else ""
        return f"{kind}hold-out {self.test_size:.0%} (seed {self.seed}{by}{why})"


def predict_rows(est: Any, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """est.predict(X[rows]); a streaming head's a chunk at a time, in file order (X may be a memory-mapped
    matrix on disk: see heads.streaming), returned in the order of `rows`."""
    if not hasattr(est, "fit_rows"):
        return est.predict(X[rows])
    order = np.argsort(rows, kind="stable")
    reader, ordered = RowReader(X), rows[order]
    predicted = np.concatenate([est.predict(reader.read(ordered[a:a + CHUNK_ROWS]))
                                for a in range(0, len(rows), CHUNK_ROWS)])
    out = np.empty_like(predicted)
    out[order] = predicted
    return out


def evaluate_splits(model: str, params: dict, X: np.ndarray, y: np.ndarray, task: str,
                    splits: list[tuple[np.ndarray, np.ndarray]], predictions: list | None = None) -> dict:
    """Mean (and std over folds) of each metric with the majority baseline's, plus mean fit seconds. Each split's
    (held-out rows, predictions) are appended to `predictions` when given."""
    per, fit_s = [], []
    for tr, te in splits:
        est = make(model, params)
        t0 = time.perf_counter()
        if hasattr(est, "fit_rows"):  # a streaming head reads the rows from X itself (X may be on disk)
            est.fit_rows(X, y, tr)
        else:
            est.fit(X[tr], y[tr])
        fit_s.append(time.perf_counter() - t0)
        pred = predict_rows(est, X, te)
        if predictions is not None:
            predictions.append((te, pred))
        per.append(scored(task, y[tr], y[te], pred))
    return {**mean_scores(task, per), "fit_seconds": float(np.mean(fit_s))}


def _macro_f1_counts(confusion: np.ndarray) -> np.ndarray:
    """Macro-F1 of each [.., k, k] confusion matrix (rows true, columns predicted); a class absent from both
    the truth and the predictions is left out, as scikit-learn's labels=None does."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    true, pred = confusion.sum(axis=-1), confusion.sum(axis=-2)
    present = (true + pred) > 0
    f1 = np.where(present, 2 * tp / np.maximum(true + pred, 1), 0.0)
    return f1.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def paired_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 400,
                      seed: int = 0) -> tuple[float, float]:
    """(macro-F1 of predictions `a` minus that of `b` on the same held-out rows, its standard error by the paired
    bootstrap): how far apart two heads are, and how much of that the particular rows could explain."""
    classes, codes = np.unique(np.concatenate([y, a, b]).astype(str), return_inverse=True)
    k, n = len(classes), len(y)
    ty, ta, tb = codes[:n], codes[n:2 * n], codes[2 * n:]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=n_boot)  # [n_boot, n] row counts of each resample

    def f1s(pred: np.ndarray) -> np.ndarray:
        cells = ty * k + pred
        conf = np.stack([np.bincount(cells, weights=w, minlength=k * k) for w in weights]).reshape(n_boot, k, k)
        return _macro_f1_counts(conf)
    full = lambda pred: float(_macro_f1_counts(np.bincount(ty * k + pred, minlength=k * k).reshape(k, k)))  # noqa: E731
    return full(ta) - full(tb), float(np.std(f1s(ta) - f1s(tb)))


# -- search ------------------------------------------------------------------------------------------------------
def candidates(model: str, fixed: dict) -> Iterator[dict]:
    """The model's small grid, with explicitly given parameters held fixed; defaults first."""
    grid = {k: v for k, v in MODELS[model].grid.items() if k not in fixed}
    yield dict(fixed)
    for combo in itertools.product(*grid.values()):
        yield {**fixed, **dict(zip(grid, combo))}


def search(model: str, fixed: dict, X: np.ndarray, y: np.ndarray, task: str,
           splits: list[tuple[np.ndarray, np.ndarray]], budget: float | None,
           dev: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict, list[dict]]:
    """Try candidates (by CV on train, or fit-on-train / score-on-dev) until `budget` seconds are spent;
    return the best parameters by the task's primary metric and the table of everything tried."""
    key = PRIMARY[task]
    start, tried, seen = time.perf_counter(), [], set()
    for params in candidates(model, fixed):
        sig = tuple(sorted(params.items()))
        if sig in seen:
            continue
        seen.add(sig)
        if dev is not None:
            est = make(model, params)
            t0 = time.perf_counter()
            est.fit(X, y)
            res = {**scored(task, y, dev[1], est.predict(dev[0])), "fit_seconds": time.perf_counter() - t0}
        else:
            res = evaluate_splits(model, params, X, y, task, splits)
        tried.append({"params": params, **res})
        if budget is not None and time.perf_counter() - start > budget:
            break
    best = max(tried, key=lambda r: r[key])
    return best["params"], tried
