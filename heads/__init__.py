"""Heads: classical estimators fitted on cached embeddings (no encoder runs, no torch import)."""

from heads.api import Head, compare, curve, evaluate, export, fit, list_heads, load, load_dir
from heads.estimators import MODELS
from heads.select import score

__all__ = ["Head", "MODELS", "compare", "curve", "evaluate", "export", "fit", "list_heads", "load", "load_dir",
           "score"]
