"""PNG figures for plots/ and TensorBoard (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str, normalize: bool = False) -> Figure:
    values = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(values, cmap="Blues", vmin=0)
    k = len(classes)
    for i in range(k):
        for j in range(k):
            text = f"{values[i, j]:.2f}" if normalize else str(cm[i, j])
            dark = values[i, j] > values.max() / 2
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def curves_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    legend_loc: str,
    diagonal: bool = False,
) -> Figure:
    """One line per class; the legend labels (e.g. with AUC) are the mapping's keys."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, drawstyle="steps-post" if not diagonal else "default")
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc=legend_loc, fontsize=9)
    fig.tight_layout()
    return fig


def calibration_figure(rows: Sequence[Mapping[str, float]], ece: float, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
    conf = [r["confidence"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    ax.plot(conf, acc, marker="o", label=f"model (ECE {ece:.3f})")
    for r in rows:
        ax.annotate(
            str(r["count"]), (r["confidence"], r["accuracy"]), fontsize=7, xytext=(3, -10), textcoords="offset points"
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    return fig


def history_figure(history: Sequence[Mapping[str, float]], best_epoch: int) -> Figure:
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [r[f"{split}_loss"] for r in history], label=split)
        acc_ax.plot(epochs, [r[f"{split}_accuracy"] for r in history], label=split)
    for ax, name in ((loss_ax, "cross-entropy loss"), (acc_ax, "accuracy")):
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend(fontsize=9)
    fig.suptitle("Training curves", fontsize=11)
    fig.tight_layout()
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], colors: Sequence[str], cols: int = 4) -> Figure:
    """Images (HxWx3, uint8 or float in [0, 1]) with a coloured title each."""
    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.7, rows * 3.0), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, title, color in zip(axes.ravel(), images, titles, colors):
        ax.imshow(img)
        ax.set_title(title, color=color, fontsize=8)
    fig.tight_layout()
    return fig
