"""Heads: classical estimators fitted on cached embeddings (no encoder runs, no torch import)."""

from heads.api import Head, evaluate, fit, list_heads, load, metrics
from heads.estimators import MODELS

__all__ = ["Head", "MODELS", "evaluate", "fit", "list_heads", "load", "metrics"]
