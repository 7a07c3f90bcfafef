"""ROC curves of a multi-label classifier as one PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ..metrics.classification import auroc


def plot_roc_curves(scores, labels, names: Sequence[str], path: str, title: str = "ROC curves (test)") -> str:
    """One curve per class (classes with a single label value are left out and named in the legend title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    skipped = []
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        auc = auroc(s[:, i], y[:, i])
        if math.isnan(auc):
            skipped.append(name)
            continue
        fpr, tpr, _ = roc_curve(y[:, i], s[:, i])
        ax.plot(fpr, tpr, color=cmap(i % 20), lw=1.5, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    legend_title = "AUROC" + (f"; no AUROC: {', '.join(skipped)}" if skipped else "")
    ax.legend(loc="lower right", fontsize=7, title=legend_title, title_fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
