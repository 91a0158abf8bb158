"""Stage `ood_evaluate`: unknown-detection metrics and plots, known test images against the OOD set (no torch).

Every detector at its val threshold on the OOD set's report half (and its selection half beside it):
see src/abcd/evaluation/unknown_metrics.py. The metrics file DVC compares holds the rates of
``unknown.method`` only (:func:`abcd.evaluation.unknown_metrics.deciding_unknown_metrics`); the report
has every detector. When the OOD branch is off (``--ood`` holds the reason), each output says
"not evaluated" and why, with no numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from abcd.core.cli import run, stage_args
from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.core.fileio import atomic_dir, atomic_write_text
from abcd.core.params import load_params
from abcd.data.ood_manifest import OOD_PREDICTIONS, not_evaluated, read_ood_manifest, write_not_evaluated
from abcd.evaluation.predictions import read_predictions
from abcd.evaluation.unknown_metrics import deciding_unknown_metrics, unknown_report, write_unknown_plots
from abcd.oodset.photos import PHOTOS


def _write(args, metrics: dict, report: dict) -> None:
    atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.metrics, json.dumps({"unknown": metrics}, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "predictions": "test predictions CSV (the known images' scores)",
            "detectors": "JSON written by the test stage: thresholds and temperature",
            "ood": "OOD set (its manifest: halves, photos, whole images), or the reason it is not evaluated",
            "ood-predictions": "ood_test's output directory",
        },
        writes={
            "metrics": "unknown-detection metrics JSON: the chosen detector's rates (a DVC metric)",
            "report": "unknown-detection report JSON: every detector, its threshold and numbers",
            "plots": "directory for risk-coverage data and PNG",
        },
    )
    params = load_params(args.params)
    reason = not_evaluated(args.ood)
    if reason is not None:
        _write(args, {"evaluated": False, "reason": reason}, {"evaluated": False, "reason": reason})
        write_not_evaluated(args.plots, reason)
        print(f"ood_evaluate: not evaluated: {reason}")
        return
    pred = read_predictions(args.predictions)
    ood_path = args.ood_predictions / OOD_PREDICTIONS
    ood = read_predictions(ood_path, labelled=False)
    if not args.detectors.is_file():
        raise MissingFileError(f"detectors JSON not found: {args.detectors} (run: dvc repro test)")
    detectors = json.loads(args.detectors.read_text())
    manifest = read_ood_manifest(args.ood / "manifest.csv")
    if manifest.paths != ood.images:
        raise InvalidFileError(f"{ood_path}: images differ from {args.ood / 'manifest.csv'} (run: dvc repro ood_test)")
    unknown, curves = unknown_report(
        pred,
        ood,
        np.array([r == "full" for r in manifest.regions]),
        detectors,
        params.predict.threshold,
        params.evaluate.ece_bins,
        np.array(manifest.halves),
        np.array(manifest.photos),
        {p.name: p.category for p in PHOTOS},
    )
    _write(args, deciding_unknown_metrics(unknown, params.unknown.method), unknown)
    with atomic_dir(args.plots) as tmp:
        write_unknown_plots(curves, unknown, tmp)
    print(f"unknown detection, OOD report half ({unknown['n_ood_photos']} photos, {unknown['n_ood_images']} images):")
    for name, m in unknown["methods"].items():
        print(
            f"unknown {name:27s} AUROC {m['auroc']:.3f}  OOD rejected {m['ood_rejected']:.3f} "
            f"(photos {m['ood_photos_rejected']:.3f})  known rejected {m['known_rejected']:.3f}"
        )


if __name__ == "__main__":
    run(main, "ood_evaluate")
