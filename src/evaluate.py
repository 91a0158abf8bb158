"""Stage `evaluate`: metrics and plots from the predictions CSVs (no torch).

Classification (test split): the full report (bootstrap confidence intervals, per-class
scores) as JSON, plot data files for `dvc plots` (confusion, ROC and precision-recall per
class, calibration), the same plots as PNGs, and a grid of the most confident mistakes.
Unknown detection (test split against the OOD set): see src/unknown_metrics.py.

The metrics files DVC compares hold only the numbers that decide between experiments
(:func:`deciding_test_metrics`, :func:`src.unknown_metrics.deciding_unknown_metrics`), so that
`dvc exp show` and `dvc metrics diff` stay readable; everything else goes to the reports beside them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from src import figures
from src.cli import run, stage_args
from src.data import load_thumbnail
from src.errors import InvalidFileError, MissingFileError
from src.fileio import atomic_dir, atomic_write_text
from src.metrics import calibration_bins, classification_report, confusion, precision_recall_curve, roc_curve
from src.ood_data import read_ood_manifest
from src.ood_photos import PHOTOS
from src.params import load_params
from src.predictions import Predictions, read_predictions
from src.unknown_metrics import deciding_unknown_metrics, unknown_report, write_unknown_plots


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


# The classification numbers `dvc exp show` / `dvc metrics diff` compare; the rest stays in the report.
DECIDING_TEST = ("f1_macro", "log_loss", "accuracy", "roc_auc_macro", "ece")


def deciding_test_metrics(report: Mapping[str, object], ci_level: float) -> dict[str, float]:
    """Macro F1, log loss, accuracy, macro ROC-AUC, ECE and the CI bounds of the first two, flat."""
    ci = report[f"ci{round(ci_level * 100)}"]
    out = {key: report[key] for key in DECIDING_TEST}
    for key in ("f1_macro", "log_loss"):
        out[f"{key}_low"], out[f"{key}_high"] = ci[key]["low"], ci[key]["high"]
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


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "predictions": "test predictions CSV",
            "ood-predictions": "OOD predictions CSV",
            "detectors": "JSON written by the test stage",
            "ood": "OOD set (its manifest: which images are whole photos)",
        },
        writes={
            "metrics": "classification metrics JSON: the deciding numbers (a DVC metric)",
            "report": "classification report JSON: every number, per class too",
            "unknown-metrics": "unknown-detection metrics JSON: the chosen detector's rates (a DVC metric)",
            "unknown-report": "unknown-detection report JSON: every detector, its threshold and numbers",
            "plots": "directory for plot data and PNGs",
            "unknown-plots": "directory for risk-coverage data and PNG",
        },
    )
    params = load_params(args.params)
    cfg = params.evaluate

    pred = read_predictions(args.predictions)
    report = classification_report(
        pred.labels,
        pred.probs,
        pred.classes,
        ece_bins=cfg.ece_bins,
        bootstrap=cfg.bootstrap,
        ci_level=cfg.ci,
        seed=params.seed,
    )
    calibration = calibration_bins(pred.labels, pred.probs, cfg.ece_bins)

    atomic_write_text(args.report, json.dumps({"test": report}, indent=2) + "\n")
    atomic_write_text(args.metrics, json.dumps({"test": deciding_test_metrics(report, cfg.ci)}, indent=2) + "\n")
    with atomic_dir(args.plots) as tmp:
        write_plots(pred, report, calibration, tmp, cfg.worst_mistakes)

    ood = read_predictions(args.ood_predictions, labelled=False)
    if not args.detectors.is_file():
        raise MissingFileError(f"detectors JSON not found: {args.detectors} (run: dvc repro test)")
    detectors = json.loads(args.detectors.read_text())
    manifest = read_ood_manifest(args.ood / "manifest.csv")
    if manifest.paths != ood.images:
        raise InvalidFileError(
            f"{args.ood_predictions}: images differ from {args.ood / 'manifest.csv'} (run: dvc repro test)"
        )
    unknown, curves = unknown_report(
        pred,
        ood,
        np.array([r == "full" for r in manifest.regions]),
        detectors,
        params.predict.threshold,
        cfg.ece_bins,
        np.array(manifest.halves),
        np.array(manifest.photos),
        {p.name: p.category for p in PHOTOS},
    )
    atomic_write_text(args.unknown_report, json.dumps(unknown, indent=2) + "\n")
    chosen = deciding_unknown_metrics(unknown, params.unknown.method)
    atomic_write_text(args.unknown_metrics, json.dumps({"unknown": chosen}, indent=2) + "\n")
    with atomic_dir(args.unknown_plots) as tmp:
        write_unknown_plots(curves, unknown, tmp)
    ci = report[f"ci{round(cfg.ci * 100)}"]
    print(
        f"evaluate: accuracy {report['accuracy']:.4f}  "
        f"macro F1 {report['f1_macro']:.4f} [{ci['f1_macro']['low']:.4f}, {ci['f1_macro']['high']:.4f}]  "
        f"log loss {report['log_loss']:.4f} [{ci['log_loss']['low']:.4f}, {ci['log_loss']['high']:.4f}]  "
        f"ECE {report['ece']:.4f}  macro ROC-AUC {report['roc_auc_macro']:.4f}"
    )
    print(f"unknown detection, OOD report half ({unknown['n_ood_photos']} photos, {unknown['n_ood_images']} images):")
    for name, m in unknown["methods"].items():
        print(
            f"unknown {name:27s} AUROC {m['auroc']:.3f}  OOD rejected {m['ood_rejected']:.3f} "
            f"(photos {m['ood_photos_rejected']:.3f})  known rejected {m['known_rejected']:.3f}"
        )


if __name__ == "__main__":
    run(main, "evaluate")
