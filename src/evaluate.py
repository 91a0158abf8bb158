"""Stage `evaluate`: metrics and plots from the predictions CSV alone (no torch).

python -m src.evaluate --predictions data/predictions/test.csv --metrics metrics/test.json --plots plots
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from src.predictions import Predictions, read_predictions


def compute_metrics(pred: Predictions) -> dict:
    """Accuracy, macro/micro F1, log loss and one-vs-rest ROC-AUC per class and macro."""
    k = len(pred.classes)
    labels = list(range(k))
    # Rows are written rounded; renormalise so log loss sees proper distributions.
    probs = pred.probs / pred.probs.sum(axis=1, keepdims=True)
    out = {
        "n": len(pred.labels),
        "accuracy": float(skm.accuracy_score(pred.labels, pred.predicted)),
        "f1_macro": float(skm.f1_score(pred.labels, pred.predicted, labels=labels, average="macro", zero_division=0)),
        "f1_micro": float(skm.f1_score(pred.labels, pred.predicted, labels=labels, average="micro", zero_division=0)),
        "log_loss": float(skm.log_loss(pred.labels, probs, labels=labels)),
    }
    aucs = {}
    for i, name in enumerate(pred.classes):
        positives = pred.labels == i
        # AUC is undefined when a class has no positives (or no negatives) in this split.
        aucs[name] = float(skm.roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(positives) else None
    out["roc_auc"] = aucs
    defined = [v for v in aucs.values() if v is not None]
    out["roc_auc_macro"] = float(np.mean(defined)) if defined else None
    return out


def roc_points(pred: Predictions) -> dict[str, list[dict[str, float]]]:
    """One-vs-rest ROC curve per class as rows of fpr, tpr, threshold."""
    curves = {}
    for i, name in enumerate(pred.classes):
        positives = pred.labels == i
        if not 0 < positives.sum() < len(positives):
            continue
        fpr, tpr, thr = skm.roc_curve(positives, pred.probs[:, i])
        thr = np.minimum(thr, 1.0)  # sklearn puts +inf first; keep the CSV numeric
        curves[name] = [{"fpr": float(f), "tpr": float(t), "threshold": float(h)} for f, t, h in zip(fpr, tpr, thr)]
    return curves


def save_png_plots(pred: Predictions, scores: dict, curves: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(pred.classes)
    cm = skm.confusion_matrix(pred.labels, pred.predicted, labels=list(range(k)))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_xticks(range(k), pred.classes)
    ax.set_yticks(range(k), pred.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (test, n={len(pred.labels)}, accuracy {scores['accuracy']:.3f})")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, rows in curves.items():
        ax.plot([r["fpr"] for r in rows], [r["tpr"] for r in rows], label=f"{name} (AUC {scores['roc_auc'][name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves, one vs rest (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="directory for plot data and PNGs")
    args = parser.parse_args(argv)

    pred = read_predictions(args.predictions)
    scores = compute_metrics(pred)
    curves = roc_points(pred)

    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(scores, indent=2) + "\n")
    args.plots.mkdir(parents=True, exist_ok=True)
    with (args.plots / "confusion.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("actual", "predicted"))
        writer.writerows((pred.classes[a], pred.classes[p]) for a, p in zip(pred.labels, pred.predicted))
    roc_dir = args.plots / "roc"
    roc_dir.mkdir(exist_ok=True)
    for name, rows in curves.items():
        with (roc_dir / f"{name}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["fpr", "tpr", "threshold"])
            writer.writeheader()
            writer.writerows(rows)
    save_png_plots(pred, scores, curves, args.plots)
    print(
        f"evaluate: accuracy {scores['accuracy']:.4f}  macro F1 {scores['f1_macro']:.4f}  "
        f"log loss {scores['log_loss']:.4f}  macro ROC-AUC {scores['roc_auc_macro']:.4f}"
    )


if __name__ == "__main__":
    main()
