"""How well each unknown detector separates known test images from OOD photos (from the predictions CSVs).

Every detector stored in the checkpoint is judged at the threshold fitted on validation
(for the target false-reject rate), plus the original rule (max probability below
predict.threshold) with and without the temperature. Per method: AUROC known-vs-unknown,
FPR at 95% known kept (fraction of distinct OOD photos accepted at the threshold that keeps
95% of known test images), fraction of OOD images rejected (and of distinct OOD photos whose
whole image is rejected), fraction of known test images wrongly rejected, and a
risk-coverage curve over test + OOD (an accepted OOD image counts as an error). Per fitted
detector also the distinct photos it accepts and, per photo category (src/abcd/oodset/photos.py:
people, food, animal, nature, ...), how many it rejects: where it fails, not only how often.

The OOD set has two halves (src/abcd/oodset/assemble.py): ``methods`` and the curves are the report
half's, the numbers to quote; ``selection.methods`` are the selection half's, the ones a
detector and its settings are chosen on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abcd.core.errors import InvalidFileError
from abcd.evaluation import figures
from abcd.evaluation.calibration import calibrated_probs
from abcd.evaluation.metrics import expected_calibration_error, roc_auc
from abcd.evaluation.predictions import Predictions

CURVE_POINTS = 101  # risk-coverage curves are resampled to this many coverages
TARGET_OOD_PHOTOS_REJECTED = 0.95  # with known_rejected <= false_reject: a detector "meets the target"
Curve = tuple[np.ndarray, np.ndarray]


def detection_metrics(
    known: np.ndarray, unknown: np.ndarray, threshold: float, full_image: np.ndarray
) -> dict[str, float | int]:
    """Scores are "higher = unknown"; rejected where score > threshold."""
    y = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return {
        "auroc": roc_auc(y, np.r_[known, unknown]),
        "fpr_at_95": float(np.mean(unknown[full_image] <= np.quantile(known, 0.95))),
        "known_rejected": float(np.mean(known > threshold)),
        "ood_rejected": float(np.mean(unknown > threshold)),
        "ood_photos_rejected": float(np.mean(unknown[full_image] > threshold)),
        "threshold": float(threshold),
    }


def risk_coverage(scores: np.ndarray, errors: np.ndarray) -> Curve:
    """Accept the lowest-score images first: error rate among the accepted at each coverage."""
    order = np.argsort(scores, kind="stable")
    cum_err = np.cumsum(errors[order])
    accepted = np.arange(1, len(scores) + 1)
    coverage = np.linspace(1.0 / len(scores), 1.0, CURVE_POINTS)
    idx = np.clip(np.ceil(coverage * len(scores)).astype(int) - 1, 0, len(scores) - 1)
    return accepted[idx] / len(scores), cum_err[idx] / accepted[idx]


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits) from softmax(logits / T): log-probabilities differ from logits / T by a constant."""
    return calibrated_probs(np.log(np.clip(probs, 1e-300, None)), 1.0 / temperature)


def unknown_report(
    test: Predictions,
    ood: Predictions,
    ood_full_image: np.ndarray,
    detectors: Mapping[str, Any],
    rule_threshold: float,
    ece_bins: int,
    ood_halves: np.ndarray,
    ood_photos: np.ndarray,
    categories: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, Curve]]:
    """Metrics per method on the report half (``metrics/unknown.json``) and the selection half's
    beside them, and the report half's risk-coverage curves per fitted detector.

    ``ood_photos`` names each OOD row's source photo; ``categories`` maps a photo to its category.
    """
    temperature = float(detectors["temperature"])
    raw = {"test": uncalibrated(test.probs, temperature), "ood": uncalibrated(ood.probs, temperature)}
    halves = {}
    for half in ("report", "selection"):
        keep = np.asarray(ood_halves) == half
        if not keep.any():
            raise InvalidFileError(f"the OOD set has no image in its {half} half (run: dvc repro ood_data)")
        half_raw = {"test": raw["test"], "ood": raw["ood"][keep]}
        whole = ood_full_image[keep]
        names = np.asarray(ood_photos)[keep][whole]
        half_ood = _subset(ood, keep)
        halves[half] = _half_report(test, half_ood, whole, detectors, rule_threshold, half_raw)
        for name in detectors["thresholds"]:
            rejected = half_ood.scores[name][whole] > detectors["thresholds"][name]
            halves[half][0][name].update(photo_breakdown(names, rejected, categories))
    methods, curves, n_images, n_photos = halves["report"]
    sel_methods, _, sel_images, sel_photos = halves["selection"]
    report = {
        "n_known_test": len(test.labels),
        "n_ood_images": n_images,
        "n_ood_photos": n_photos,
        "ood_half": "report",
        "target_false_reject": detectors.get("false_reject"),
        "temperature": temperature,
        "ece_test_before": expected_calibration_error(test.labels, raw["test"], ece_bins),
        "ece_test_after": expected_calibration_error(test.labels, test.probs, ece_bins),
        "methods": methods,
        "selection": {"n_ood_images": sel_images, "n_ood_photos": sel_photos, "methods": sel_methods},
    }
    return report, curves


def _subset(pred: Predictions, keep: np.ndarray) -> Predictions:
    """The rows of ``pred`` where ``keep``."""
    return replace(
        pred,
        images=[i for i, k in zip(pred.images, keep) if k],
        labels=pred.labels[keep],
        predicted=pred.predicted[keep],
        probs=pred.probs[keep],
        scores={n: s[keep] for n, s in pred.scores.items()},
    )


def _half_report(
    test: Predictions,
    ood: Predictions,
    ood_full_image: np.ndarray,
    detectors: Mapping[str, Any],
    rule_threshold: float,
    raw: Mapping[str, np.ndarray],
) -> tuple[dict[str, dict], dict[str, Curve], int, int]:
    """(metrics per method, curves, OOD images, OOD photos) on one half of the OOD set."""
    target = detectors.get("false_reject")
    wrong = test.predicted != test.labels
    methods: dict[str, dict] = {}
    curves: dict[str, Curve] = {}
    # The original rule at predict.threshold, raw and calibrated, then each detector at its val threshold.
    for name, probs in {
        "original_rule_uncalibrated": raw,
        "original_rule": {"test": test.probs, "ood": ood.probs},
    }.items():
        known, unknown = 1.0 - probs["test"].max(1), 1.0 - probs["ood"].max(1)
        methods[name] = detection_metrics(known, unknown, 1.0 - rule_threshold, ood_full_image)
    for name, threshold in detectors["thresholds"].items():
        if name not in test.scores or name not in ood.scores:
            raise InvalidFileError(f"detector {name!r} has a threshold but no score_{name} column in the predictions")
        known, unknown = test.scores[name], ood.scores[name]
        methods[name] = detection_metrics(known, unknown, threshold, ood_full_image)
        if target is not None:
            methods[name]["meets_target"] = bool(
                methods[name]["known_rejected"] <= target
                and methods[name]["ood_photos_rejected"] >= TARGET_OOD_PHOTOS_REJECTED
            )
        curves[name] = risk_coverage(np.r_[known, unknown], np.r_[wrong, np.ones(len(unknown), bool)])
    return methods, curves, len(ood.images), int(ood_full_image.sum())


def photo_breakdown(names: np.ndarray, rejected: np.ndarray, categories: Mapping[str, str]) -> dict[str, Any]:
    """The whole photos a detector accepts, and per category ``{"photos": n, "rejected": k}``."""
    missing = sorted(set(names) - set(categories))
    if missing:
        raise InvalidFileError(f"OOD photos without a category in src/abcd/oodset/photos.py: {', '.join(missing)}")
    frame = pd.DataFrame({"category": [categories[n] for n in names.tolist()], "rejected": rejected.astype(int)})
    counts = frame.groupby("category")["rejected"].agg(photos="size", rejected="sum")
    by_category = {c: {"photos": int(r.photos), "rejected": int(r.rejected)} for c, r in counts.iterrows()}
    return {"accepted_photos": sorted(names[~rejected].tolist()), "photos_by_category": by_category}


def deciding_unknown_metrics(report: Mapping[str, Any], method: str) -> dict[str, float]:
    """The rates of the detector predict uses (``unknown.method``): the DVC metric; the rest is the report."""
    if method not in report["methods"]:
        raise InvalidFileError(
            f"unknown.method is {method!r} but the predictions have no score_{method} "
            f"(they have: {', '.join(report['methods'])}): run dvc repro test"
        )
    chosen = report["methods"][method]
    return {k: chosen[k] for k in ("ood_photos_rejected", "ood_rejected", "known_rejected")}


def write_unknown_plots(curves: Mapping[str, Curve], report: Mapping[str, Any], out: Path) -> None:
    """Risk-coverage CSV per detector (a DVC plot) and one PNG with all of them."""
    (out / "risk_coverage").mkdir(parents=True, exist_ok=True)
    for name, (cov, risk) in curves.items():
        lines = ["coverage,risk"] + [f"{c:.6g},{r:.6g}" for c, r in zip(cov, risk)]
        (out / "risk_coverage" / f"{name}.csv").write_text("\n".join(lines) + "\n")
    methods = report["methods"]
    labelled = {f"{k} (AUROC {methods[k]['auroc']:.3f})": v for k, v in curves.items()}
    n_test, n_ood = report["n_known_test"], report["n_ood_images"]
    fig = figures.curves_figure(
        labelled,
        title=f"Risk-coverage, {n_test} test + {n_ood} OOD images (accepted OOD = error)",
        xlabel="coverage (fraction accepted)",
        ylabel="risk (error rate among accepted)",
        legend_loc="upper left",
    )
    figures.save(fig, out / "risk_coverage.png")
