"""Stage `evaluate`: metrics and plots from the predictions CSVs (no torch).

Classification (test split): the full report (bootstrap confidence intervals, per-class
scores) as JSON, plot data files for `dvc plots` (confusion, ROC and precision-recall per
class, calibration), the same plots as PNGs, and a grid of the most confident mistakes.
Unknown detection (test split against the OOD set): see src/abcd/evaluation/unknown_metrics.py.

The metrics files DVC compares hold only the numbers that decide between experiments
(:func:`deciding_test_metrics`, :func:`abcd.evaluation.unknown_metrics.deciding_unknown_metrics`), so that
`dvc exp show` and `dvc metrics diff` stay readable; everything else goes to the reports beside them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from abcd.core.cli import run, stage_args
from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.core.fileio import atomic_dir, atomic_write_text
from abcd.core.params import load_params
from abcd.data.ood_manifest import read_ood_manifest
from abcd.evaluation.metrics import (
    calibration_bins,
    classification_report,
)
from abcd.evaluation.plots import write_plots
from abcd.evaluation.predictions import read_predictions
from abcd.evaluation.summary import deciding_test_metrics
from abcd.evaluation.unknown_metrics import deciding_unknown_metrics, unknown_report, write_unknown_plots
from abcd.oodset.photos import PHOTOS


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
