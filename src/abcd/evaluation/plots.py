"""The evaluate stage's plot data and figures: curves, calibration bins, the worst mistakes (no torch)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from abcd.data.images import load_thumbnail
from abcd.evaluation import figures
from abcd.evaluation.metrics import (
    confusion,
    precision_recall_curve,
    roc_curve,
)
from abcd.evaluation.predictions import Predictions


def curve_points(pred: Predictions, kind: str) -> dict[str, list[dict[str, float]]]:
    """One-vs-rest ROC (``kind="roc"``) or precision-recall (``"pr"``) points per class."""
    out = {}
    for i, name in enumerate(pred.classes):
        positives = pred.labels == i
        if not 0 < positives.sum() < len(positives):
            continue  # undefined without both positives and negatives
        if kind == "roc":
            fpr, tpr, thr = roc_curve(positives, pred.probs[:, i])
            thr = np.minimum(thr, 1.0)  # +inf comes first; keep the CSV numeric
            out[name] = [{"fpr": float(a), "tpr": float(b), "threshold": float(t)} for a, b, t in zip(fpr, tpr, thr)]
        else:
            precision, recall, thr = precision_recall_curve(positives, pred.probs[:, i])
            thr = np.append(thr, 1.0)  # the last (recall 0) point has no threshold
            out[name] = [
                {"recall": float(r), "precision": float(p), "threshold": float(t)}
                for r, p, t in zip(recall, precision, thr)
            ]
    return out


def worst_mistakes(pred: Predictions, count: int) -> list[int]:
    """Indices of wrong predictions, most confident first."""
    wrong = np.flatnonzero(pred.predicted != pred.labels)
    confidence = pred.probs[wrong, pred.predicted[wrong]]
    return [int(i) for i in wrong[np.argsort(-confidence, kind="stable")][:count]]


def _write_csv(path: Path, rows: Sequence[Mapping[str, object]], fields: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def write_plots(pred: Predictions, report: dict, calibration: list[dict], out: Path, worst: int) -> None:
    classes = pred.classes
    per_class = report["per_class"]
    _write_csv(
        out / "confusion.csv",
        [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(pred.labels, pred.predicted)],
        ("actual", "predicted"),
    )
    cm = confusion(pred.labels, pred.predicted, len(classes))
    title = f"test, n={report['n']}, accuracy {report['accuracy']:.3f}"
    figures.save(figures.confusion_figure(cm, classes, f"Confusion matrix ({title})"), out / "confusion.png")
    figures.save(
        figures.confusion_figure(cm, classes, "Confusion matrix, normalised by true class", normalize=True),
        out / "confusion_normalized.png",
    )

    roc = curve_points(pred, "roc")
    pr = curve_points(pred, "pr")
    for name in roc:
        _write_csv(out / "roc" / f"{name}.csv", roc[name], ("fpr", "tpr", "threshold"))
        _write_csv(out / "pr" / f"{name}.csv", pr[name], ("recall", "precision", "threshold"))
    figures.save(
        figures.curves_figure(
            {
                f"{n} (AUC {per_class[n]['roc_auc']:.3f})": ([r["fpr"] for r in v], [r["tpr"] for r in v])
                for n, v in roc.items()
            },
            title="ROC curves, one vs rest (test)",
            xlabel="false positive rate",
            ylabel="true positive rate",
            legend_loc="lower right",
            diagonal=True,
        ),
        out / "roc.png",
    )
    figures.save(
        figures.curves_figure(
            {
                f"{n} (AP {per_class[n]['average_precision']:.3f})": (
                    [r["recall"] for r in v],
                    [r["precision"] for r in v],
                )
                for n, v in pr.items()
            },
            title="Precision-recall curves, one vs rest (test)",
            xlabel="recall",
            ylabel="precision",
            legend_loc="lower left",
        ),
        out / "pr.png",
    )

    _write_csv(out / "calibration.csv", calibration, ("bin", "confidence", "accuracy", "count"))
    figures.save(
        figures.calibration_figure(calibration, report["ece"], "Calibration (reliability) curve, test"),
        out / "calibration.png",
    )

    picks = worst_mistakes(pred, worst)
    # The grid is illustration: an unreadable file is a grey tile, not a failed evaluation.
    images = [load_thumbnail(pred.images[i], 192) for i in picks]
    titles = []
    for i in picks:
        p = pred.predicted[i]
        name = Path(pred.images[i]).name
        titles.append(f"pred {classes[p]} {pred.probs[i, p]:.2f}\ntrue {classes[pred.labels[i]]}\n{name[:28]}")
    if not picks:
        titles, images = ["no mistakes"], [np.full((8, 8, 3), 255, np.uint8)]
    figures.save_image(figures.image_grid(images, titles, ["red"] * len(titles)), out / "worst_mistakes.png")
