"""Stage `evaluate`: classification metrics and plots from the test predictions CSV (no torch).

The full report (bootstrap confidence intervals, per-class scores) as JSON, plot data files for
`dvc plots` (confusion, ROC and precision-recall per class, calibration), the same plots as PNGs,
and a grid of the most confident mistakes. Unknown detection is ood_evaluate's, in the OOD branch.

The metrics file DVC compares holds only the numbers that decide between experiments
(:func:`abcd.evaluation.summary.deciding_test_metrics`), so that `dvc exp show` and `dvc metrics diff`
stay readable; everything else goes to the report beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_dir, atomic_write_text
from abcd.core.params import load_params
from abcd.evaluation.metrics import calibration_bins, classification_report
from abcd.evaluation.plots import write_plots
from abcd.evaluation.predictions import read_predictions
from abcd.evaluation.summary import deciding_test_metrics


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={"predictions": "test predictions CSV"},
        writes={
            "metrics": "classification metrics JSON: the deciding numbers (a DVC metric)",
            "report": "classification report JSON: every number, per class too",
            "plots": "directory for plot data and PNGs",
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
    ci = report[f"ci{round(cfg.ci * 100)}"]
    print(
        f"evaluate: accuracy {report['accuracy']:.4f}  "
        f"macro F1 {report['f1_macro']:.4f} [{ci['f1_macro']['low']:.4f}, {ci['f1_macro']['high']:.4f}]  "
        f"log loss {report['log_loss']:.4f} [{ci['log_loss']['low']:.4f}, {ci['log_loss']['high']:.4f}]  "
        f"ECE {report['ece']:.4f}  macro ROC-AUC {report['roc_auc_macro']:.4f}"
    )


if __name__ == "__main__":
    run(main, "evaluate")
