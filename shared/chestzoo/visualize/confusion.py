"""Confusion matrices as PNG: counts, with each row's share of its true class as the cell colour."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def plot_confusion_matrix(matrix, classes: Sequence[str], path: str, title: str = "confusion matrix (test)") -> str:
    """Draw ``matrix`` (rows: true class, columns: predicted class) with counts and row percentages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    if m.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {m.shape} for {n} classes")
    totals = m.sum(axis=1, keepdims=True)
    shares = np.divide(m, totals, out=np.zeros(m.shape, dtype=np.float64), where=totals > 0)
    size = 2.2 + 1.3 * n
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            colour = "white" if shares[i, j] > 0.6 else "black"
            ax.text(j, i, f"{m[i, j]}\n{100 * shares[i, j]:.0f}%", ha="center", va="center", color=colour, fontsize=10)
    ticks = np.arange(n)
    wrapped = [name.replace(" / ", " /\n") for name in classes]
    ax.set_xticks(ticks, wrapped, fontsize=8)
    ax.set_yticks(ticks, wrapped, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
