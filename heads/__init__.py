"""Heads: classical estimators fitted on cached embeddings (no encoder runs, no torch import).

    estimators.py  the estimators (scikit-learn contract, no pickle)   training.py fit and save a head
    head.py        a saved head: predict(X) / predict_raw(inputs)       report.py   evaluate, list
    comparison.py  encoders x models, learning curves                   select.py   splits, metrics, search
    targets.py     labels -> estimator targets                          persist.py  checksummed head files
    zeroshot.py    CLIP zero-shot labels                                plots.py    PNG reports
"""

from heads.comparison import compare, curve
from heads.estimators import MODELS
from heads.training import fit
from heads.head import Head, export, load, load_dir
from heads.report import evaluate, list_heads
from heads.select import WeakHeadWarning, score
from heads.zeroshot import zero_shot

__all__ = ["Head", "MODELS", "WeakHeadWarning", "compare", "curve", "evaluate", "export", "fit", "list_heads", "load", "load_dir",
           "score", "zero_shot"]
