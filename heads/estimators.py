"""Head models by name: scikit-learn estimators with defaults suited to frozen embeddings.

`make(name, params)` builds an unfitted estimator; `MODELS` lists what exists (and is what the CLI's
--model choices and "unknown model" errors show).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from embedstore.errors import InputError


def _logreg(params: dict) -> Any:
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(**{"C": 1.0, "max_iter": 2000, **params})


def _lightgbm(params: dict) -> Any:
    from lightgbm import LGBMClassifier
    return LGBMClassifier(**{"n_estimators": 400, "learning_rate": 0.05, "num_leaves": 31,
                             "colsample_bytree": 0.5, "subsample": 0.8, "subsample_freq": 1,
                             "verbose": -1, "n_jobs": 0, "random_state": 0, **params})


@dataclass(frozen=True)
class Model:
    factory: Callable[[dict], Any]
    format: str        # how it is saved: "sklearn" (json + npz) or "lightgbm" (booster text)
    help: str


MODELS: dict[str, Model] = {
    "logreg": Model(_logreg, "sklearn", "logistic regression (L2, C=1), multinomial; calibrated-ish probabilities"),
    "lightgbm": Model(_lightgbm, "lightgbm", "gradient-boosted trees (LightGBM), 400 rounds, lr 0.05"),
}


def make(name: str, params: dict | None = None) -> Any:
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    try:
        return MODELS[name].factory(dict(params or {}))
    except TypeError as e:
        raise InputError(f"model {name!r} does not take these parameters ({e})") from None


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
