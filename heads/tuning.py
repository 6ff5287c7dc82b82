"""The choices a careful user makes by hand, made from the data when the user gave none ("auto").

Scaling: unit-length vectors (what most sentence and CLIP encoders emit, `Encoder.unit_norm`) are scored as they
are, other features (k-mer spectra, pooled CNN activations, tiara's hidden layer) rescaled to unit length, and both
standardised too; the better wins, so that no encoder's scale silently decides the regularisation.

Regularisation (logistic regression's and the SVM's C, kNN's k, the MLP's alpha): `tune` scores a small grid by
internal stratified cross-validation on the training rows only, strongest regularisation first, so each fold's
model warm-starts from the previous value's; it stops past the peak (two values in a row below the best) or when
its time budget is spent. The budget grows with the number of rows, and above `MAX_TUNE_ROWS` rows (or
`MAX_TUNE_CELLS` rows x dims) the grid is scored on a stratified sample of them. Every value tried is kept (`Tuning.path`), so the head records why it chose.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

AUTO = "auto"
MAX_TUNE_ROWS = 20_000
MAX_TUNE_CELLS = 20_000_000  # rows x dims the grid is scored on (4,096-d k-mer spectra: about 4,900 rows)
TUNE_FOLDS = 3


def tune_budget(n: int, dim: int = 1) -> float:
    """Seconds the automatic choice may spend: 20 s, plus 2 ms per training row, plus 5 s per million cells scored
    (rows x dims, up to MAX_TUNE_CELLS): 5k x 384: 40 s; 4.5k x 4,096: 2 min; 60k x 384: 3 min."""
    return 20.0 + 0.002 * n + 5e-6 * min(n * dim, MAX_TUNE_CELLS)


def unit_rows(X: np.ndarray) -> bool:
    norms = np.linalg.norm(X, axis=1)
    return bool(len(norms)) and bool(np.all(np.abs(norms - 1) < 1e-3))


def scalings(normalize: str, X: np.ndarray, tuned: bool) -> list[str]:
    """The preprocessing to try. A given one is kept. 'auto' with the regularisation tuned too: the rows as they are
    (unit-length rows) or rescaled to unit length (l2: the usual treatment of spectra and pooled CNN features),
    and standardised per feature (what a StandardScaler script does); the better by internal CV wins. Without
    tuning: none for unit-length rows, else standard."""
    if normalize != AUTO:
        return [normalize]
    unit = unit_rows(X)
    if not tuned:
        return ["none" if unit else "standard"]
    return ["none" if unit else "l2", "standard"]


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(y_true, y_pred, average="macro"))


@dataclass
class Tuning:
    """What an automatic choice tried and kept (stored with the head)."""

    param: str
    value: Any
    score: float | None                         # mean internal-CV macro-F1 of the kept value (None: not tuned)
    folds: int
    rows: int                                   # training rows the grid was scored on
    path: list[dict] = field(default_factory=list)   # {value, score, seconds} per value tried, in order
    stopped: str = "grid done"                  # or "past the peak", "budget"

    def as_dict(self) -> dict:
        return asdict(self)

    scaling: str = ""                           # the preprocessing it was scored with (when that was chosen too)

    def describe(self) -> str:
        if self.score is None:
            return f"{self.param}={self.value:g} ({self.stopped})"
        how = f"{self.folds}-fold internal CV" if self.folds > 1 else "an internal 25% hold-out"
        also = f", scaling {self.scaling}" if self.scaling else ""
        return (f"{self.param}={self.value:g}{also} by {how} on {self.rows:,} rows (macro-F1 {self.score:.4f}; "
                f"{len(self.path)} values tried, {self.stopped})")


def tuning_splits(codes: np.ndarray, folds: int, seed: int, dim: int = 1) -> tuple[np.ndarray, list]:
    """(rows scored, [(train, test)...]) for the internal CV: stratified, on at most MAX_TUNE_ROWS rows (fewer for
    wide features). A class too small for `folds` folds means a stratified 25% hold-out instead (as does folds=1)."""
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit, train_test_split
    rows = np.arange(len(codes))
    cap = max(1_000, min(MAX_TUNE_ROWS, MAX_TUNE_CELLS // max(dim, 1)))
    if len(rows) > cap:
        rows, _ = train_test_split(rows, train_size=cap, stratify=codes, random_state=seed)
        rows = np.sort(rows)
    counts = np.bincount(codes[rows])
    smallest, n_classes = int(counts[counts > 0].min()), int((counts > 0).sum())
    if smallest < 2:
        return rows, []
    if folds > 1:
        split = StratifiedKFold(min(folds, smallest), shuffle=True, random_state=seed)
    elif len(rows) // 4 >= n_classes and len(rows) - len(rows) // 4 >= n_classes:
        split = StratifiedShuffleSplit(1, test_size=len(rows) // 4, random_state=seed)
    else:
        split = StratifiedKFold(2, shuffle=True, random_state=seed)  # too few rows for a 25% hold-out
        return rows, list(split.split(rows, codes[rows]))[:1]
    return rows, list(split.split(rows, codes[rows]))


def _outward(path: list[dict], best: dict, ratio: float | None, tries: dict, most: int = 2) -> Any:
    """The next value beyond the grid's end (at most `most` per side) when the best is the smallest or the largest
    value tried and beats its neighbour (a flat end is not followed); else None."""
    if not ratio or len(path) < 2:
        return None
    ordered = sorted(path, key=lambda p: p["value"])
    for side, end, neighbour, step in (("low", ordered[0], ordered[1], 1 / ratio),
                                       ("high", ordered[-1], ordered[-2], ratio)):
        if end is best and neighbour["score"] < best["score"] - 1e-9 and tries[side] < most:
            tries[side] += 1
            return float(f"{end['value'] * step:.3g}")
    return None


def tune(param: str, values: Sequence[Any], fit_score: Callable[[Any, int, np.ndarray, np.ndarray, dict], float],
         codes: np.ndarray, *, folds: int = TUNE_FOLDS, seed: int = 0, budget: float | None = None,
         patience: int = 2, dim: int = 1, extend: bool = True, refine: bool = True) -> Tuning | None:
    """Score `values` in order with `fit_score(value, fold, train_rows, test_rows, state)` (state: a dict per fold
    for warm starts and shared work) and keep the best mean. With `extend` (a log-spaced numeric grid), a best value
    at either end of the grid is followed outwards, up to two more steps of the grid's ratio, and `refine` then
    scores the two half-steps around the best (grid ratio 10: a half-decade resolution). None when no split is
    possible (a class with one item): the caller falls back to its fixed default."""
    rows, splits = tuning_splits(codes, folds, seed, dim)
    if not splits:
        return None
    budget = tune_budget(len(codes), dim) if budget is None else budget
    start = time.perf_counter()
    states: list[dict] = [{} for _ in splits]
    path: list[dict] = []

    def scored(value: Any) -> dict:
        t0 = time.perf_counter()
        scores = [fit_score(value, f, rows[tr], rows[te], states[f]) for f, (tr, te) in enumerate(splits)]
        path.append({"value": value, "score": float(np.mean(scores)), "seconds": round(time.perf_counter() - t0, 3)})
        return path[-1]

    def in_budget() -> bool:
        return time.perf_counter() - start <= budget

    best, worse, stopped = None, 0, "grid done"
    values = list(values)
    ratio = values[1] / values[0] if extend and len(values) > 1 and values[0] > 0 else None
    tries = {"low": 0, "high": 0}
    i = 0
    while i < len(values):
        now = scored(values[i])
        i += 1
        if best is None or now["score"] > best["score"] + 1e-9:
            best, worse = now, 0
        elif now["score"] < best["score"] - 1e-9:
            worse += 1
        if worse >= patience or i == len(values):
            further = _outward(path, best, ratio, tries) if in_budget() else None
            if further is not None:  # the best is at an end of what was tried, above its neighbour: look beyond
                values[i:] = [further]
                worse = 0
                continue
        if worse >= patience and i < len(values):
            stopped = "past the peak"
            break
        if not in_budget() and i < len(values):
            stopped = f"budget {budget:.0f} s"
            break
    if refine and ratio and in_budget():  # the two half-steps around the best, where the grid is coarse
        half = ratio ** 0.5
        for v in (float(f"{best['value'] / half:.3g}"), float(f"{best['value'] * half:.3g}")):
            if all(abs(v - p["value"]) > 1e-9 * v for p in path) and in_budget():
                now = scored(v)
                if now["score"] > best["score"] + 1e-9:
                    best = now
    return Tuning(param, best["value"], best["score"], len(splits) if len(splits) > 1 else 1, len(rows), path, stopped)


def tune_with_scaling(param: str, values: Callable[[str, int], Sequence[Any]] | Sequence[Any], options: list[str], prepare: Callable[[str], np.ndarray],
                      fit_score_for: Callable[[np.ndarray], Callable], codes: np.ndarray, *, seed: int = 0,
                      budget: float | None = None, folds: int = TUNE_FOLDS) -> Tuning | None:
    """`tune` once per scaling option (each on its own share of the budget); the best (scaling, value) wins and
    the other paths are kept in the record (path entries carry their scaling)."""
    budget = tune_budget(len(codes), prepare(options[0]).shape[1]) if budget is None else budget
    results = []
    for option in options:
        Xp = prepare(option)
        grid = values(option, Xp.shape[1]) if callable(values) else values
        t = tune(param, grid, fit_score_for(Xp), codes, folds=folds, seed=seed, budget=budget / len(options),
                 dim=Xp.shape[1])
        if t is None:
            return None
        results.append(replace(t, scaling=option if len(options) > 1 else "",
                               path=[{**p, "scaling": option} for p in t.path] if len(options) > 1 else t.path))
    best = max(results, key=lambda t: t.score)
    return replace(best, path=[p for t in results for p in t.path])
