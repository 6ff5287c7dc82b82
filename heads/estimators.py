"""Heads: scikit-learn estimators with defaults suited to frozen embeddings.

Every head keeps its fitted state in plain arrays, strings and numbers (attributes ending in `_`), so that it can
be saved without pickle (heads/persist.py) and predict without the library object that fitted it. `__init__`
only stores parameters; `fit` returns self; a wrong input width is "X has 5 features, but LogisticHead is
expecting 384 features as input".

Preprocessing is declared per head (`normalize`): "l2" rescales each vector to unit length (cosine geometry,
what most sentence encoders are trained for), "standard" standardises each feature, "none" leaves them, "auto"
(the default of the linear heads and the MLP) decides from the data (heads/tuning.py); the fitted choice is
`normalize_`. Regularisation given as "auto" (the default: logreg's and the SVM's C, kNN's n_neighbors, the MLP's
alpha) is chosen by internal cross-validation on the training rows; what was tried is `tuning_`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from embedstore.errors import InputError
from heads.streaming import RowReader, blocks, in_chunks, shuffled_chunks
from heads.tuning import AUTO, Tuning, macro_f1, scalings, tune, tune_with_scaling

NORMALIZE = ("auto", "l2", "standard", "none")
# C grids for unit-length rows; standardised rows have squared norm ~dim, so their grid is divided by dim
LOGREG_CS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
SVM_CS = (0.001, 0.01, 0.1, 1.0, 10.0)


def c_grid(unit_grid: tuple) -> Callable[[str, int], tuple]:
    def grid(scaling: str, dim: int) -> tuple:
        return tuple(float(f"{c / dim:.3g}") for c in unit_grid) if scaling == "standard" else unit_grid
    return grid
KNN_KS = (1, 3, 5, 9, 15, 25, 45, 75)
MLP_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def feature_scale(var: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """Standard deviations to divide by, 1 where a feature is constant within the rounding of its own values
    (scikit-learn's StandardScaler bound). Not an absolute floor: all-MiniLM-L6-v2 has dimensions near 1e-33 whose
    variation carries signal (SMS spam macro-F1 0.974 with them standardised, 0.963 without)."""
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    return np.where(constant, 1.0, np.sqrt(var))


def _probabilities(z: np.ndarray) -> np.ndarray:
    """Class probabilities from decision values: one column (binary) through the sigmoid, else a softmax."""
    if z.shape[1] == 1:
        p = _sigmoid(z[:, 0])
        return np.column_stack([1 - p, p])
    return softmax(z)


class _Head(BaseEstimator):
    """Shared input checks and the declared preprocessing."""

    normalize: str

    def _scalings(self, X: np.ndarray, tuned: bool = False) -> list[str]:
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        return scalings(self.normalize, X, tuned)

    def _prep_fit(self, X: np.ndarray, normalize: str | None = None) -> np.ndarray:
        """X preprocessed as `normalize` says (default: the head's own rule), which becomes `normalize_`."""
        X = np.asarray(X, dtype=np.float64)
        self.normalize_ = normalize or self._scalings(X)[0]
        if self.normalize_ == "standard":
            self.mean_ = X.mean(axis=0)
            self.scale_ = feature_scale(X.var(axis=0), self.mean_, len(X))
        return self._transform(X)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        how = getattr(self, "normalize_", self.normalize)  # heads saved before `normalize_` existed
        if how == "l2":
            return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        if how == "standard":
            return (X - self.mean_) / self.scale_
        return X

    def _tuned(self, param: str, values: tuple, X: np.ndarray, codes: np.ndarray, fit_score_for,
               options: list[str] | None = None, folds: int | None = None,
               extend: bool = True) -> tuple[Any, np.ndarray]:
        """(the value of `param`, X preprocessed) with `param` chosen by internal CV when it is "auto"; the
        scaling is chosen along with it when it is "auto" too. Falls back to the middle of the grid when no
        split is possible (a class with a single item)."""
        X = np.asarray(X, dtype=np.float64)
        given = getattr(self, param)
        options = options or self._scalings(X, tuned=given == AUTO)
        if given != AUTO:
            return given, self._prep_fit(X, options[0])
        kw = {"seed": getattr(self, "random_state", 0) or 0, **({"folds": folds} if folds else {})}
        if len(options) == 1:
            Xp = self._prep_fit(X, options[0])
            grid = values(options[0], X.shape[1]) if callable(values) else values
            t = tune(param, grid, fit_score_for(Xp), codes, dim=Xp.shape[1], extend=extend, **kw)
        else:
            t = tune_with_scaling(param, values, options, lambda o: self._prep_fit(X, o), fit_score_for, codes, **kw)
            Xp = self._prep_fit(X, t.scaling if t else options[-1])
        if t is None:
            grid = values(self.normalize_, X.shape[1]) if callable(values) else values
            t = Tuning(param, grid[len(grid) // 2], None, 0, len(codes), [],
                       "not tuned: a class has a single item (the middle of the grid is used)")
        self.tuning_ = t.as_dict()
        return self.tuning_["value"], Xp

    def _check(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self._transform(validate_data(self, X, reset=False))


class _Classifier(ClassifierMixin, _Head):
    def _targets(self, X: Any, y: Any, prep: bool = True) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"a classifier needs at least 2 classes; y has 1 class: {self.classes_[0]!r}")
        return (self._prep_fit(X) if prep else np.asarray(X, dtype=np.float64)), codes

    def _weights(self, class_weight: Any) -> Any:
        """class_weight keyed by our label codes (the inner estimator sees codes, the user gives labels)."""
        if isinstance(class_weight, dict):
            return {i: class_weight.get(c, class_weight.get(str(c), 1.0)) for i, c in enumerate(self.classes_)}
        return class_weight

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._proba(self._check(X))

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks fitted first
        return self.classes_[proba.argmax(axis=1)]

    def _proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Linear(_Classifier):
    """Shared by linear classifiers: decision values from coef_ / intercept_."""

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_.T + self.intercept_


ONE_THREAD_CELLS = 10_000_000


def _quiet_fit(model: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """Fit without ConvergenceWarnings (a grid point that stops at max_iter is still scored honestly), on one BLAS
    thread for small problems: the solvers' many small products run several times slower when BLAS threads spin
    (measured 9x on 1,500 x 256 features, 2 cores)."""
    import warnings
    from contextlib import nullcontext

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits
    with warnings.catch_warnings(), (threadpool_limits(1) if X.size < ONE_THREAD_CELLS else nullcontext()):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def _fold_scorer(make_model: Callable[[Any], Any], codes: np.ndarray, warm: bool = False):
    """fit_score_for(Xp) for heads.tuning.tune: one model per fold (warm-started along the grid when `warm`),
    scored by macro-F1 on the fold's held-out rows."""
    def fit_score_for(Xp: np.ndarray):
        def fit_score(value: Any, fold: int, tr: np.ndarray, te: np.ndarray, state: dict) -> float:
            if "Xtr" not in state:
                state["Xtr"], state["Xte"] = Xp[tr], Xp[te]
            model = state.get("model") if warm else None
            model = make_model(value) if model is None else model.set_params(C=value)
            state["model"] = _quiet_fit(model, state["Xtr"], codes[tr])
            return macro_f1(codes[te], model.predict(state["Xte"]))
        return fit_score
    return fit_score_for


class LogisticHead(_Linear):
    """Multinomial logistic regression (L2). The default head: strong, fast, calibrated enough. C="auto" picks
    C (and, on features that are not unit length, l2 or standard scaling) by internal CV, warm-started."""

    def __init__(self, C: float | str = AUTO, class_weight: str | None = None, normalize: str = AUTO,
                 max_iter: int = 2000, random_state: int = 0):
        self.C = C
        self.class_weight = class_weight
        self.normalize = normalize
        self.max_iter = max_iter
        self.random_state = random_state

    def _model(self, C: float) -> Any:
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(C=C, class_weight=self._weights(self.class_weight), max_iter=self.max_iter,
                                  warm_start=True)

    def _tuning_model(self, C: float) -> Any:
        return self._model(C).set_params(max_iter=min(self.max_iter, 500))  # grid points need no last digit

    def fit(self, X: Any, y: Any) -> "LogisticHead":
        X, codes = self._targets(X, y, prep=False)
        self.C_, Xp = self._tuned("C", c_grid(LOGREG_CS), X, codes, _fold_scorer(self._tuning_model, codes, warm=True))
        lr = _quiet_fit(self._model(self.C_), Xp, codes)
        self.coef_, self.intercept_, self.n_iter_ = lr.coef_, lr.intercept_, int(np.max(lr.n_iter_))
        return self

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return _probabilities(self._decision(X))


class LinearSVMHead(_Linear):
    """Linear SVM with Platt-calibrated probabilities: sigmoids fitted on cross-validated decision values,
    weighted like the SVM (class_weight), so that predictions are the calibrated argmax. C="auto" as logreg's."""

    def __init__(self, C: float | str = AUTO, class_weight: str | None = "balanced", normalize: str = AUTO,
                 calibration_folds: int = 3, random_state: int = 0):
        self.C = C
        self.class_weight = class_weight
        self.normalize = normalize
        self.calibration_folds = calibration_folds
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "LinearSVMHead":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.svm import LinearSVC

        def model(C: float) -> Any:
            return LinearSVC(C=C, class_weight=self._weights(self.class_weight), random_state=self.random_state)
        X, codes = self._targets(X, y, prep=False)
        self.C_, Xp = self._tuned("C", c_grid(SVM_CS), X, codes, _fold_scorer(model, codes))
        svc = _quiet_fit(model(self.C_), Xp, codes)
        self.coef_, self.intercept_ = svc.coef_, svc.intercept_
        folds = min(self.calibration_folds, int(np.bincount(codes).min()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            d = cross_val_predict(svc, Xp, codes, cv=cv, method="decision_function")
        else:
            d = svc.decision_function(Xp)  # too few samples per class to cross-validate the calibration
        from sklearn.utils.class_weight import compute_sample_weight
        weight = compute_sample_weight(self._weights(self.class_weight), codes)
        d = d.reshape(len(codes), -1)
        targets = [codes] if d.shape[1] == 1 else [(codes == k).astype(int) for k in range(d.shape[1])]
        a, b = [], []
        for col, t in zip(d.T, targets):
            if len(np.unique(t)) < 2:
                a.append(1.0)
                b.append(0.0)
                continue
            platt = LogisticRegression(C=1e4).fit(col[:, None], t, sample_weight=weight)
            a.append(float(platt.coef_[0, 0]))
            b.append(float(platt.intercept_[0]))
        self.platt_a_, self.platt_b_ = np.asarray(a), np.asarray(b)
        return self

    def _proba(self, X: np.ndarray) -> np.ndarray:
        p = _sigmoid(self._decision(X) * self.platt_a_ + self.platt_b_)
        if p.shape[1] == 1:
            return np.column_stack([1 - p[:, 0], p[:, 0]])
        return p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)


def _knn_search(train: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k (similarities, indices); FAISS exact search above a few thousand vectors."""
    k = min(k, len(train))
    if len(train) * len(queries) > 4_000_000:
        import faiss
        index = faiss.IndexFlatIP(train.shape[1])
        index.add(np.ascontiguousarray(train, dtype=np.float32))
        sims, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims.astype(np.float64), idx
    sims = queries @ train.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def _votes(sims: np.ndarray, labels: np.ndarray, n_classes: int, weights: str) -> np.ndarray:
    """Class shares of the neighbours' (similarity-weighted) votes."""
    w = np.maximum(sims, 0) + 1e-6 if weights == "distance" else np.ones_like(sims)
    votes = np.zeros((len(sims), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(sims)), sims.shape[1]), labels.ravel()), w.ravel())
    return votes / votes.sum(axis=1, keepdims=True)


class KNNHead(_Classifier):
    """k nearest neighbours by cosine similarity, similarity-weighted votes (FAISS for large sets).
    n_neighbors="auto" picks k by internal CV (one neighbour search per fold serves every k)."""

    normalize = "l2"  # fixed: cosine geometry

    def __init__(self, n_neighbors: int | str = AUTO, weights: str = "distance"):
        self.n_neighbors = n_neighbors
        self.weights = weights

    def fit(self, X: Any, y: Any) -> "KNNHead":
        X, codes = self._targets(X, y, prep=False)
        k_max = max(KNN_KS)

        def fit_score_for(Xp: np.ndarray):
            def fit_score(k: int, fold: int, tr: np.ndarray, te: np.ndarray, state: dict) -> float:
                if "sims" not in state:  # every k's neighbours: the k_max nearest, most similar first
                    sims, idx = _knn_search(Xp[tr].astype(np.float32), Xp[te].astype(np.float32), k_max)
                    order = np.argsort(-sims, axis=1)
                    state["sims"] = np.take_along_axis(sims, order, axis=1)
                    state["labels"] = codes[tr][np.take_along_axis(idx, order, axis=1)]
                votes = _votes(state["sims"][:, :k], state["labels"][:, :k], len(self.classes_), self.weights)
                return macro_f1(codes[te], votes.argmax(axis=1))
            return fit_score
        self.n_neighbors_, Xp = self._tuned("n_neighbors", KNN_KS, X, codes, fit_score_for, options=["l2"],
                                              extend=False)
        self.X_train_ = Xp.astype(np.float32)
        self.y_train_ = codes
        return self

    def _proba(self, X: np.ndarray) -> np.ndarray:
        k = getattr(self, "n_neighbors_", self.n_neighbors)
        sims, idx = _knn_search(self.X_train_, X.astype(np.float32), k)
        return _votes(sims, self.y_train_[idx], len(self.classes_), self.weights)


def _mlp_forward(X: np.ndarray, coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> np.ndarray:
    h = X
    for W, b in zip(coefs[:-1], intercepts[:-1]):
        h = np.maximum(h @ W + b, 0)
    return h @ coefs[-1] + intercepts[-1]


class MLPHead(_Classifier):
    """A small one-hidden-layer MLP (ReLU, Adam, early stopping) on standardised features; alpha="auto" picks the
    L2 penalty on an internal hold-out split."""

    def __init__(self, hidden: int = 256, alpha: float | str = AUTO, max_iter: int = 200,
                 normalize: str = "standard", random_state: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.normalize = normalize
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "MLPHead":
        from sklearn.neural_network import MLPClassifier

        def model(alpha: float, n: int, counts: np.ndarray) -> Any:
            early = n >= 1000 and int(counts.min()) >= 10  # else every row is needed to train
            return MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=alpha, max_iter=self.max_iter,
                                 early_stopping=early, random_state=self.random_state)

        X, codes = self._targets(X, y, prep=False)

        def fit_score_for(Xp: np.ndarray):
            def fit_score(alpha: float, fold: int, tr: np.ndarray, te: np.ndarray, state: dict) -> float:
                m = _quiet_fit(model(alpha, len(tr), np.bincount(codes[tr])), Xp[tr], codes[tr])
                return macro_f1(codes[te], m.predict(Xp[te]))
            return fit_score
        # one internal hold-out split: an MLP fit costs many linear ones
        self.alpha_, Xp = self._tuned("alpha", MLP_ALPHAS, X, codes, fit_score_for, folds=1)
        mlp = _quiet_fit(model(self.alpha_, len(codes), np.bincount(codes)), Xp, codes)
        self.coefs_, self.intercepts_, self.n_iter_ = list(mlp.coefs_), list(mlp.intercepts_), int(mlp.n_iter_)
        return self

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return _probabilities(_mlp_forward(X, self.coefs_, self.intercepts_))


@lru_cache(maxsize=8)
def _booster_from(model_str: str):
    import lightgbm as lgb
    return lgb.Booster(model_str=model_str)


class _Booster:
    """LightGBM fitted state as its own text format (model_str_); Boosters are rebuilt from it, cached."""

    model_str_: str
    normalize = "none"  # trees need no rescaling

    def _booster(self):
        return _booster_from(self.model_str_)

    def _lgb_fit(self, model: Any, X: np.ndarray, y: np.ndarray, stratify: bool) -> None:
        """Fit with early stopping on a validation split of the training data (when there is enough of it)."""
        import lightgbm as lgb
        from sklearn.model_selection import train_test_split
        fit_kw: dict = {}
        strat = y if stratify and int(np.bincount(y).min()) >= 2 else None
        if self.early_stopping_rounds and len(y) >= 100:
            tr, va = train_test_split(np.arange(len(y)), test_size=self.validation_fraction, stratify=strat,
                                      random_state=self.random_state)
            fit_kw = {"callbacks": [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]}
            if "eval_X" in inspect.signature(model.fit).parameters:  # LightGBM >= 4.6
                fit_kw.update(eval_X=(X[va],), eval_y=(y[va],))
            else:
                fit_kw["eval_set"] = [(X[va], y[va])]
            X, y = X[tr], y[tr]
        model.fit(X, y, **fit_kw)
        self.best_iteration_ = int(model.best_iteration_ or model.n_estimators)
        self.model_str_ = model.booster_.model_to_string(num_iteration=self.best_iteration_)


def _lgb_params(head: Any) -> dict:
    return {"n_estimators": head.n_estimators, "learning_rate": head.learning_rate, "num_leaves": head.num_leaves,
            "colsample_bytree": 0.5, "subsample": 0.8, "subsample_freq": 1, "min_child_samples": 5,
            "verbose": -1, "n_jobs": 0, "random_state": head.random_state}


class LightGBMHead(_Booster, _Classifier):
    """Gradient-boosted trees; early stopping on a validation split of the training data."""

    def __init__(self, n_estimators: int = 1000, learning_rate: float = 0.05, num_leaves: int = 31,
                 early_stopping_rounds: int = 50, validation_fraction: float = 0.1,
                 class_weight: str | None = None, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "LightGBMHead":
        from lightgbm import LGBMClassifier
        Xp, codes = self._targets(X, y)
        self._lgb_fit(LGBMClassifier(class_weight=self._weights(self.class_weight), **_lgb_params(self)), Xp, codes,
                      True)
        return self

    def _proba(self, X: np.ndarray) -> np.ndarray:
        p = np.asarray(self._booster().predict(X))
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p


SGD_ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SGD_TUNE_ROWS = 100_000
SGD_SEEN = 1_000_000   # epochs="auto": passes enough to see about this many rows (SGD's usual rule), 5 to 50


def sgd_epochs(n: int) -> int:
    return int(min(50, max(5, -(-SGD_SEEN // max(n, 1)))))


class SGDLogisticHead(_Linear):
    """Logistic regression by stochastic gradient descent (scikit-learn's SGDClassifier, log loss, partial_fit)
    over chunks of rows: the head for features larger than memory. It reads X a chunk at a time, so that a
    np.memmap (store.features(..., memmap=PATH); `heads fit --model sgd` makes one) stays on disk and the fit's
    memory does not grow with the rows. Features are standardised by default (means and scales from one streamed
    pass); alpha="auto" is chosen on a sample of up to 100k rows by a 25% hold-out, then `epochs` shuffled passes
    over every row fit the head (epochs="auto": enough to see about a million rows, from 5 to 50 passes)."""

    def __init__(self, alpha: float | str = AUTO, epochs: int | str = AUTO, normalize: str = "standard",
                 class_weight: str | None = None, random_state: int = 0):
        self.alpha = alpha
        self.epochs = epochs
        self.normalize = normalize
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "SGDLogisticHead":
        return self.fit_rows(X, y, None)

    def fit_rows(self, X: Any, y: Any, rows: np.ndarray | None) -> "SGDLogisticHead":
        """Fit on X[rows] (default: every row) without copying them out of X first. An in-memory X is checked
        whole as every head's is; a memory-mapped one by shape here and for finite values chunk by chunk."""
        if isinstance(X, np.memmap):
            if X.ndim != 2 or len(y) != len(X):
                raise ValueError(f"expected a 2-D feature matrix and one label per row, got X {X.shape}, "
                                 f"{len(y)} labels")
            self.n_features_in_ = X.shape[1]
        else:
            X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        if self.normalize not in ("standard", "l2", "none"):
            raise ValueError(f"normalize must be one of ('standard', 'l2', 'none'), got {self.normalize!r}")
        if self.epochs != AUTO and not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs must be an integer >= 1 or 'auto', got {self.epochs!r}")
        # in file order: scattered rows (a split's shuffled indices) would map most of a memory-mapped file
        rows = np.arange(len(X)) if rows is None else np.sort(np.asarray(rows))
        y = np.asarray(y)[rows]
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"a classifier needs at least 2 classes; y has 1 class: {self.classes_[0]!r}")
        reader, parts = RowReader(X), blocks(len(rows))
        rng = np.random.default_rng(self.random_state)
        self.normalize_ = self.normalize
        if self.normalize_ == "standard":  # one streamed pass: sums in float64
            total, squares = np.zeros(X.shape[1]), np.zeros(X.shape[1])
            for a in range(0, len(rows), 65_536):
                x = self._finite(reader.read(rows[a:a + 65_536]))
                total += x.sum(axis=0)
                squares += (x * x).sum(axis=0)
            self.mean_ = total / len(rows)
            self.scale_ = feature_scale(np.maximum(squares / len(rows) - self.mean_ ** 2, 0), self.mean_, len(rows))
        weights = self._weights(self.class_weight)
        if weights == "balanced":  # partial_fit takes no "balanced": the same weights from the class counts
            counts = np.bincount(codes, minlength=len(self.classes_))
            weights = {k: len(codes) / (len(counts) * c) for k, c in enumerate(counts)}
        self.alpha_ = self._alpha(reader, rows, parts, codes, weights, rng) if self.alpha == AUTO else \
            float(self.alpha)
        sgd = self._model(self.alpha_, weights)
        self.epochs_ = sgd_epochs(len(rows)) if self.epochs == AUTO else self.epochs
        for _ in range(self.epochs_):
            for chunk in shuffled_chunks(parts, rng):
                x = self._transform(self._finite(reader.read(rows[chunk])))
                mix = rng.permutation(len(chunk))
                sgd.partial_fit(x[mix], codes[chunk][mix], classes=np.arange(len(self.classes_)))
        self.coef_, self.intercept_, self.n_iter_ = sgd.coef_, sgd.intercept_, self.epochs_
        return self

    def _model(self, alpha: float, weights: Any) -> Any:
        from sklearn.linear_model import SGDClassifier
        return SGDClassifier(loss="log_loss", alpha=alpha, class_weight=weights, random_state=self.random_state)

    def _alpha(self, reader: Any, rows: np.ndarray, parts: list[np.ndarray], codes: np.ndarray, weights: Any,
               rng: np.random.Generator) -> float:
        """alpha by a 25% hold-out on a sample of up to SGD_TUNE_ROWS rows, random blocks of `parts` (scattered
        single rows of a memory-mapped matrix would map most of the file; each grid value is fitted to
        convergence there): larger data needs less regularisation, which the full passes then get too."""
        import time
        pick = next(shuffled_chunks(parts, rng, SGD_TUNE_ROWS))
        x = self._transform(self._finite(reader.read(rows[pick])))
        c = codes[pick]
        held = rng.random(len(pick)) < 0.25
        path, best = [], (-1.0, SGD_ALPHAS[len(SGD_ALPHAS) // 2])
        if held.all() or not held.any() or len(np.unique(c[~held])) < 2:
            self.tuning_ = Tuning("alpha", best[1], None, 0, len(pick), [], "not tuned: too few rows").as_dict()
            return best[1]
        for alpha in SGD_ALPHAS:
            t0 = time.perf_counter()
            model = _quiet_fit(self._model(alpha, weights).set_params(max_iter=50, tol=1e-4), x[~held], c[~held])
            f1 = macro_f1(c[held], model.predict(x[held]))
            path.append({"value": alpha, "score": round(f1, 4), "seconds": round(time.perf_counter() - t0, 3)})
            best = max(best, (f1, alpha), key=lambda b: b[0])
        self.tuning_ = Tuning("alpha", best[1], round(best[0], 4), 1, len(pick), path, "grid done").as_dict()
        return best[1]

    @staticmethod
    def _finite(x: np.ndarray) -> np.ndarray:
        if not np.isfinite(x).all():
            raise ValueError("Input X contains NaN or infinity")
        return x

    def predict_proba(self, X: Any) -> np.ndarray:
        """Chunk by chunk: a memory-mapped X is never copied whole."""
        check_is_fitted(self)
        if not isinstance(X, np.memmap):
            X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        elif X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[-1]} features, but SGDLogisticHead is expecting "
                             f"{self.n_features_in_} features as input")
        return in_chunks(lambda x: self._proba(self._transform(self._finite(x))), X)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        return _probabilities(self._decision(X))


class _Regressor(RegressorMixin, _Head):
    def _xy(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, y_numeric=True)
        return self._prep_fit(X), np.asarray(y, dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        return self._predict(self._check(X))


class RidgeHead(_Regressor):
    """Ridge regression; alpha="auto" picks it by leave-one-out CV (RidgeCV)."""

    def __init__(self, alpha: float | str = AUTO, normalize: str = "standard"):
        self.alpha = alpha
        self.normalize = normalize

    def fit(self, X: Any, y: Any) -> "RidgeHead":
        from sklearn.linear_model import Ridge, RidgeCV
        Xp, y = self._xy(X, y)
        if self.alpha == AUTO:  # efficient leave-one-out over a log grid
            r = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(Xp, y)
            self.alpha_ = float(r.alpha_)
            self.tuning_ = Tuning("alpha", self.alpha_, None, 0, len(y),
                                  [{"value": float(a)} for a in np.logspace(-3, 4, 15)],
                                  "chosen by leave-one-out CV (RidgeCV)").as_dict()
        else:
            self.alpha_ = self.alpha
            r = Ridge(alpha=self.alpha).fit(Xp, y)
        self.coef_, self.intercept_ = np.atleast_1d(r.coef_), float(r.intercept_)
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_ + self.intercept_


class KNNRegressorHead(_Regressor):
    """Similarity-weighted mean of the k most cosine-similar training targets."""

    normalize = "l2"  # fixed: cosine geometry

    def __init__(self, n_neighbors: int = 15):
        self.n_neighbors = n_neighbors

    def fit(self, X: Any, y: Any) -> "KNNRegressorHead":
        Xp, y = self._xy(X, y)
        self.X_train_, self.y_train_ = Xp.astype(np.float32), y
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        sims, idx = _knn_search(self.X_train_, X.astype(np.float32), self.n_neighbors)
        w = np.maximum(sims, 0) + 1e-6
        return (self.y_train_[idx] * w).sum(axis=1) / w.sum(axis=1)


class LightGBMRegressorHead(_Booster, _Regressor):
    """Gradient-boosted regression trees with early stopping."""

    def __init__(self, n_estimators: int = 1000, learning_rate: float = 0.05, num_leaves: int = 31,
                 early_stopping_rounds: int = 50, validation_fraction: float = 0.1, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "LightGBMRegressorHead":
        from lightgbm import LGBMRegressor
        Xp, y = self._xy(X, y)
        self._lgb_fit(LGBMRegressor(**_lgb_params(self)), Xp, y, False)
        return self

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster().predict(X))


class MultiLabelHead(_Head):
    """One logistic regression per label for multi-label targets (an indicator matrix, see MultiLabelBinarizer)."""

    def __init__(self, C: float = 1.0, normalize: str = AUTO, threshold: float = 0.5):
        self.C = C
        self.normalize = normalize
        self.threshold = threshold

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        tags.target_tags.required = True
        return tags

    def fit(self, X: Any, Y: Any) -> "MultiLabelHead":
        from sklearn.linear_model import LogisticRegression
        X, Y = validate_data(self, X, Y, multi_output=True)
        Y = np.asarray(Y)
        if Y.ndim != 2:
            raise ValueError("MultiLabelHead expects a 2-D indicator matrix Y (one column per label)")
        Xp = self._prep_fit(X)
        coef, icpt = np.zeros((Y.shape[1], X.shape[1])), np.zeros(Y.shape[1])
        for j in range(Y.shape[1]):
            col = Y[:, j].astype(int)
            if col.min() == col.max():  # a label always on or always off: a constant score
                icpt[j] = 20.0 if col[0] else -20.0
                continue
            lr = LogisticRegression(C=self.C, max_iter=2000).fit(Xp, col)
            coef[j], icpt[j] = lr.coef_[0], lr.intercept_[0]
        self.coef_, self.intercept_ = coef, icpt
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return _sigmoid(self._check(X) @ self.coef_.T + self.intercept_)

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X) >= self.threshold).astype(int)


@dataclass(frozen=True)
class Model:
    cls: type
    task: str          # classification | regression | multilabel
    help: str
    grid: dict         # a small search space for `--search`


MODELS: dict[str, Model] = {
    "logreg": Model(LogisticHead, "classification", "logistic regression (L2; C and scaling chosen by internal CV)",
                    {"C": [0.01, 0.1, 1.0, 10.0, 100.0], "normalize": ["l2", "standard"]}),
    "svm": Model(LinearSVMHead, "classification", "linear SVM, Platt-calibrated probabilities (C chosen by CV)",
                 {"C": [0.001, 0.01, 0.1, 1.0], "normalize": ["l2", "standard"]}),
    "knn": Model(KNNHead, "classification", "cosine k-nearest neighbours (k chosen by CV; FAISS for large sets)",
                 {"n_neighbors": [5, 15, 45]}),
    "mlp": Model(MLPHead, "classification", "one-hidden-layer MLP, early stopping",
                 {"hidden": [128, 512], "alpha": [1e-4, 1e-2]}),
    "lightgbm": Model(LightGBMHead, "classification", "gradient-boosted trees (LightGBM), early stopping",
                      {"num_leaves": [15, 31, 63], "learning_rate": [0.03, 0.1]}),
    "sgd": Model(SGDLogisticHead, "classification", "logistic regression by SGD over chunks of rows: for "
                 "features larger than memory (streamed from a file; alpha chosen on a sample)",
                 {"alpha": [1e-5, 1e-4, 1e-3, 1e-2]}),
    "ridge": Model(RidgeHead, "regression", "ridge regression", {"alpha": [0.1, 1.0, 10.0, 100.0]}),
    "knn-reg": Model(KNNRegressorHead, "regression", "cosine kNN regression", {"n_neighbors": [5, 15, 45]}),
    "lightgbm-reg": Model(LightGBMRegressorHead, "regression", "LightGBM regression, early stopping",
                          {"num_leaves": [15, 31, 63]}),
    "multilabel": Model(MultiLabelHead, "multilabel", "one logistic regression per label (label lists)",
                        {"C": [0.1, 1.0, 10.0]}),
}

HEAD_CLASSES: dict[str, type] = {m.cls.__name__: m.cls for m in MODELS.values()}


def make(name: str, params: dict | None = None) -> Any:
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    try:
        return MODELS[name].cls(**dict(params or {}))
    except TypeError as e:
        raise InputError(f"model {name!r} does not take these parameters ({e}); it takes "
                         f"{sorted(MODELS[name].cls().get_params())}") from None


def parse_params(pairs: list[str] | None) -> dict:
    """`C=0.5 max_iter=100` -> {"C": 0.5, "max_iter": 100} (numbers, true/false, none, else strings)."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--param expects NAME=VALUE, got {pair!r}")
        low = raw.lower()
        value: Any = {"true": True, "false": False, "none": None}.get(low, raw)
        if value is raw:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        out[key] = value
    return out

