"""Stage `unknown`: how well each unknown detector separates known test images from OOD photos.

    python -m src.unknown_eval --model models/model.pt --data data/prepared --ood data/ood \
        --features data/features --metrics metrics/unknown.json --plots plots/unknown

Every method stored in the checkpoint is scored at the threshold fitted on validation
(for the target false-reject rate), plus the original rule (max probability below
predict.threshold) with and without the temperature. Per method: AUROC known-vs-unknown,
fraction of OOD images rejected (and of distinct OOD photos whose whole image is
rejected), fraction of known test images wrongly rejected, and a risk-coverage curve
over test + OOD (an accepted OOD image counts as an error).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from src import figures
from src.calibration import calibrated_probs
from src.cli import run
from src.data import Sample, read_manifest
from src.feature_cache import features_for
from src.fileio import atomic_dir, atomic_write_text
from src.metrics import expected_calibration_error
from src.models import load_checkpoint
from src.ood_data import read_ood_manifest
from src.params import load_params
from src.runtime import resolve_runtime
from src.unknown import METHODS, detector_from_extra, head_logits

CURVE_POINTS = 101  # risk-coverage curves are resampled to this many coverages


def detection_metrics(
    known: np.ndarray, unknown: np.ndarray, threshold: float, full_image: np.ndarray
) -> dict[str, float | int]:
    """Scores are "higher = unknown"; rejected where score > threshold."""
    y = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return {
        "auroc": float(roc_auc_score(y, np.r_[known, unknown])),
        "known_rejected": float(np.mean(known > threshold)),
        "ood_rejected": float(np.mean(unknown > threshold)),
        "ood_photos_rejected": float(np.mean(unknown[full_image] > threshold)),
        "threshold": float(threshold),
    }


def risk_coverage(scores: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accept the lowest-score images first: error rate among the accepted at each coverage."""
    order = np.argsort(scores, kind="stable")
    cum_err = np.cumsum(errors[order])
    accepted = np.arange(1, len(scores) + 1)
    coverage = np.linspace(1.0 / len(scores), 1.0, CURVE_POINTS)
    idx = np.clip(np.ceil(coverage * len(scores)).astype(int) - 1, 0, len(scores) - 1)
    return accepted[idx] / len(scores), cum_err[idx] / accepted[idx]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (test manifest)")
    parser.add_argument("--ood", type=Path, required=True, help="OOD set written by src.ood_data")
    parser.add_argument("--features", type=Path, required=True, help="featurize's cache (used when it matches)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime(params.runtime)
    loaded = load_checkpoint(args.model, expected_classes=params.classes, lazy=True)
    if "unknown" not in loaded.extra:
        raise ValueError(f"{args.model}: no fitted unknown detectors in the checkpoint (run: dvc repro train)")
    test = read_manifest(args.data / "test.csv", params.classes)
    ood_paths, ood_photos, ood_regions = read_ood_manifest(args.ood / "manifest.csv")

    feats = {
        name: features_for(loaded, name, samples, args.features, runtime, params.predict.batch_size)
        for name, samples in {"test": test, "ood": [Sample(p, None) for p in ood_paths]}.items()
    }
    logits = {k: head_logits(loaded.head, v) for k, v in feats.items()}
    labels = np.array([loaded.classes.index(s.label) for s in test])
    wrong = logits["test"].argmax(1) != labels
    full = np.array([r == "full" for r in ood_regions])
    temperature = float(loaded.extra["temperature"])

    methods: dict[str, dict] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # The original rule at predict.threshold, raw and calibrated, then each method at its val threshold.
    rule = 1.0 - params.predict.threshold
    for name, t in {"original_rule_uncalibrated": 1.0, "original_rule": temperature}.items():
        known = 1.0 - calibrated_probs(logits["test"], t).max(1)
        unknown = 1.0 - calibrated_probs(logits["ood"], t).max(1)
        methods[name] = detection_metrics(known, unknown, rule, full)
    for name in METHODS:
        det = detector_from_extra(loaded.extra, name, None)  # max_softmax too at its val threshold
        known = det.score(feats["test"], logits["test"])
        unknown = det.score(feats["ood"], logits["ood"])
        methods[name] = detection_metrics(known, unknown, det.threshold, full)
        methods[name]["meets_target"] = bool(
            methods[name]["known_rejected"] <= params.unknown.false_reject and methods[name]["ood_rejected"] >= 0.8
        )
        curves[name] = risk_coverage(np.r_[known, unknown], np.r_[wrong, np.ones(len(unknown), bool)])

    bins = params.evaluate.ece_bins
    report = {
        "n_known_test": len(test),
        "n_ood_images": len(ood_paths),
        "n_ood_photos": len(set(ood_photos)),
        "target_false_reject": params.unknown.false_reject,
        "temperature": temperature,
        "ece_test_before": expected_calibration_error(labels, calibrated_probs(logits["test"], 1.0), bins),
        "ece_test_after": expected_calibration_error(labels, calibrated_probs(logits["test"], temperature), bins),
        "methods": methods,
    }
    atomic_write_text(args.metrics, json.dumps(report, indent=2) + "\n")
    with atomic_dir(args.plots) as tmp:
        for name, (cov, risk) in curves.items():
            lines = ["coverage,risk"] + [f"{c:.6g},{r:.6g}" for c, r in zip(cov, risk)]
            (tmp / "risk_coverage").mkdir(exist_ok=True)
            (tmp / "risk_coverage" / f"{name}.csv").write_text("\n".join(lines) + "\n")
        labelled = {f"{k} (AUROC {methods[k]['auroc']:.3f})": v for k, v in curves.items()}
        fig = figures.curves_figure(
            labelled,
            title=f"Risk-coverage, {len(test)} test + {len(ood_paths)} OOD images (accepted OOD = error)",
            xlabel="coverage (fraction accepted)",
            ylabel="risk (error rate among accepted)",
            legend_loc="upper left",
        )
        figures.save(fig, tmp / "risk_coverage.png")
    for name, m in methods.items():
        print(
            f"unknown {name:27s} AUROC {m['auroc']:.3f}  OOD rejected {m['ood_rejected']:.3f} "
            f"(photos {m['ood_photos_rejected']:.3f})  known rejected {m['known_rejected']:.3f}"
        )


if __name__ == "__main__":
    run(main, "unknown")
