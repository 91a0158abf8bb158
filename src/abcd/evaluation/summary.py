"""The numbers that decide between experiments: what metrics/test.json holds of the full report."""

from __future__ import annotations

from collections.abc import Mapping

# The classification numbers `dvc exp show` / `dvc metrics diff` compare; the rest stays in the report.
DECIDING_TEST = ("f1_macro", "log_loss", "accuracy", "roc_auc_macro", "ece")


def deciding_test_metrics(report: Mapping[str, object], ci_level: float) -> dict[str, float]:
    """Macro F1, log loss, accuracy, macro ROC-AUC, ECE and the CI bounds of the first two, flat."""
    ci = report[f"ci{round(ci_level * 100)}"]
    out = {key: report[key] for key in DECIDING_TEST}
    for key in ("f1_macro", "log_loss"):
        out[f"{key}_low"], out[f"{key}_high"] = ci[key]["low"], ci[key]["high"]
    return out
