"""Score a saved head once on a dataset (e.g. the test split), and list the saved heads."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embedstore.fsutil import atomic_write_json
from heads.estimators import MODELS
from embedstore.features import features_of
from heads.head import load
from heads.select import METRICS, WeakHeadWarning, majority_baseline, score, weakness
from heads.targets import targets

if TYPE_CHECKING:
    from embedstore.store.database import Database


def per_class(y: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support of every class (scikit-learn's classification report, as rows)."""
    from sklearn.metrics import precision_recall_fscore_support
    labels = list(dict.fromkeys([*classes, *sorted(set(y) - set(classes))]))
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return [{"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(n[i])}
            for i, c in enumerate(labels)]


def roc_auc(y: Sequence[str], proba: np.ndarray, classes: Sequence[str]) -> float | None:
    """ROC-AUC where it applies: binary (positive = the second class), else one-vs-rest macro; None when fewer
    than two of the head's classes occur among the labels (items of unseen labels are left out)."""
    from sklearn.metrics import roc_auc_score
    y = np.asarray(y, dtype=object)
    known = np.isin(y, list(classes))
    present = [c for c in classes if (y[known] == c).any()]
    if len(present) < 2:
        return None
    if len(classes) == 2:
        return float(roc_auc_score(y[known] == classes[1], proba[known, 1]))
    if len(present) < len(classes):
        return None  # one-vs-rest AUC needs every class among the labels
    return float(roc_auc_score(y[known], proba[known], multi_class="ovr", average="macro", labels=list(classes)))


def evaluate(db: "Database", name: str, dataset: str, *, label: str = "label",
             report_dir: str | Path | None = None) -> dict:
    """Score a saved head on a dataset's cached vectors of the same encoder(s); flags train/test overlap.
    Classification adds a per-class report and ROC-AUC. Writes metrics.json (and a confusion-matrix PNG for
    classification) to `report_dir` when given."""
    head = load(db, name)
    fs = features_of(db, dataset, head.meta["encoders"], head.fingerprints, label)
    y, _ = targets(head.task, fs.y, dataset, label, head.meta["classes"] if head.task == "multilabel" else None)
    X = head.check_features(fs.X, fs.fingerprints)
    pred = head.model.predict(X)
    out: dict[str, Any] = score(head.task, y, pred)
    out["baseline"] = _baseline(head, y)
    if head.task == "classification":
        out["predicted_classes"] = int(len(np.unique(pred)))
    warning = weakness(head.task, out)
    if warning:
        out["warning"] = warning
        warnings.warn(warning, WeakHeadWarning, stacklevel=2)
    out.update(head=name, dataset=dataset,
               overlap_with_training=int(np.isin(fs.content_hashes, head.train_hashes).sum()))
    if head.task == "classification":
        classes = head.meta["classes"]
        out["unseen_labels"] = sorted(set(y) - set(classes))
        out["roc_auc"] = roc_auc(y, head.model.predict_proba(X), classes)
        out["per_class"] = per_class(list(y), list(pred), classes)
    if report_dir is not None:
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        if head.task == "classification":
            from heads.plots import confusion_png
            out["confusion_png"] = str(confusion_png(y, pred, head.meta["classes"], report_dir / "confusion.png",
                                                     f"{name} on {dataset}"))
        atomic_write_json(report_dir / "metrics.json", out)
    return out


def _baseline(head, y: np.ndarray) -> dict:
    """The majority baseline on these labels: the head's training majority class (or, for heads saved without
    class counts, the most frequent class among these labels, which flatters the baseline)."""
    counts = head.meta.get("class_counts")
    if head.task == "classification" and counts:
        train = np.asarray([max(counts, key=counts.get)])
        return {**majority_baseline(head.task, train, y), "from": "the training majority class"}
    if head.task == "regression" and "train_mean" in head.meta:
        return majority_baseline(head.task, np.asarray([head.meta["train_mean"]]), y)
    why = "the head predates class counts" if head.task == "classification" else "no training majority stored"
    return {**majority_baseline(head.task, y, y), "from": f"the evaluated labels ({why})"}


def list_heads(db: "Database") -> list[dict]:
    with db.connect() as con:
        rows = con.execute("SELECT name, model, encoder, dataset, label, metrics, created FROM heads "
                           "ORDER BY name").fetchall()
    out = []
    for name, model, enc, ds, label, m, created in rows:
        m = json.loads(m) if m else {}
        task = MODELS[model].task if model in MODELS else "classification"
        out.append({"name": name, "model": model, "encoder": enc, "dataset": ds, "label": label,
                    **{k: m.get(k) for k in METRICS[task][:2]}, "protocol": m.get("protocol"),
                    "created": str(created)[:19]})
    return out
