"""PNG figures: confusion matrix, learning curve, 2-D map of embeddings. matplotlib's Agg backend (no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from embedstore.errors import InputError
from embedstore.fsutil import atomic_write


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> None:
    """Write the PNG under a temporary name and rename it: a crash never leaves half an image."""
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    _plt().close(fig)


def confusion_png(y_true: Sequence, y_pred: Sequence, classes: Sequence[str], out: Path, title: str) -> Path:
    from sklearn.metrics import confusion_matrix
    classes = list(dict.fromkeys([*classes, *sorted(set(map(str, y_true)) - set(classes))]))  # unseen ones too
    plt = _plt()
    cm = confusion_matrix(y_true, y_pred, labels=list(classes))
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    fig.tight_layout()
    _save(fig, out)
    return out


def curve_png(rows: list[dict], out: Path, title: str, metric: str = "accuracy") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for enc in dict.fromkeys(r["encoder"] for r in rows):
        pts = [r for r in rows if r["encoder"] == enc]
        ax.errorbar([r["n_train"] for r in pts], [r[metric] for r in pts],
                    yerr=[r.get(f"{metric}_std", 0) for r in pts], marker="o", capsize=3, label=enc)
    ax.set_xscale("log")
    sizes = sorted({r["n_train"] for r in rows})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, out)
    return out


LEGEND_MAX = 60


def class_colours(n: int) -> list[tuple]:
    """n distinct colours: matplotlib's 60 qualitative ones (tab20, tab20b, tab20c), then evenly spaced hues."""
    import matplotlib
    base = [c for name in ("tab20", "tab20b", "tab20c") for c in matplotlib.colormaps[name].colors]
    if n <= len(base):
        return [tuple(c) for c in base[:n]]
    import colorsys
    return [colorsys.hsv_to_rgb(i / n, 0.65 + 0.35 * (i % 2), 0.75 + 0.25 * (i % 3 == 0)) for i in range(n)]


def map_png(X: np.ndarray, labels: Sequence | None, out: Path, title: str, method: str = "pca",
            max_points: int = 20_000, seed: int = 0) -> tuple[Path, str]:
    """A 2-D projection coloured by label: PCA, or UMAP when asked for and installed."""
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(X), size=min(len(X), max_points), replace=False))
    X = X[take]
    used = method
    if method == "umap":
        try:
            import umap  # type: ignore
        except ImportError:
            raise InputError("--method umap needs umap-learn: pip install umap-learn (or use --method pca)") from None
        P = umap.UMAP(n_components=2, random_state=seed).fit_transform(X)
    else:
        from sklearn.decomposition import PCA
        P = PCA(n_components=2, random_state=seed).fit_transform(X)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6))
    if labels is None:
        ax.scatter(P[:, 0], P[:, 1], s=3, alpha=0.5)
    else:
        lab = np.asarray(labels, dtype=object)[take].astype(str)
        values, counts = np.unique(lab, return_counts=True)
        colours = class_colours(len(values))
        shown = set(values[np.argsort(-counts, kind="stable")[:LEGEND_MAX]])
        for value, colour in zip(values, colours):  # every class is drawn, each in its own colour
            m = lab == value
            ax.scatter(P[m, 0], P[m, 1], s=3, alpha=0.5, color=colour, label=value if value in shown else None)
        more = f" (legend: the {LEGEND_MAX} largest of {len(values)} classes)" if len(values) > LEGEND_MAX else ""
        ax.legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  ncol=max(1, -(-min(len(values), LEGEND_MAX) // 25)), title=f"{len(values)} classes{more}",
                  title_fontsize=7)
    ax.set_xlabel(f"{used.upper()} 1")
    ax.set_ylabel(f"{used.upper()} 2")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, out)
    return out, used
