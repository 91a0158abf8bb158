"""Stage `test`: apply the checkpoint to the test split and to the OOD set; write predictions CSVs.

    python -m src.test --model models/model.pt --data data/prepared --ood data/ood --features data/features \
        --out data/predictions/test.csv --ood-out data/predictions/ood.csv --detectors data/predictions/detectors.json

Backbone features come from featurize's cache when they are provably this checkpoint's
own (see src/feature_cache.py), else from running the backbone on the images. The
probabilities are the predict command's: softmax of the head's logits divided by the
checkpoint's temperature (fitted on val at the end of training). Each row also has the
score of every unknown detector stored in the checkpoint; their thresholds (fitted on
val) and the temperature go to ``--detectors``, so that `evaluate` needs no torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.calibration import calibrated_probs
from src.cli import run
from src.data import Sample, read_manifest
from src.feature_cache import features_for
from src.fileio import atomic_write_text
from src.models import load_checkpoint
from src.ood_data import read_ood_manifest
from src.params import load_params
from src.predictions import write_predictions
from src.runtime import resolve_runtime
from src.unknown import detector_from_extra, head_logits


def score_images(head, feats: np.ndarray, extra: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class probabilities (softmax of logits / the checkpoint's T) and every fitted detector's score."""
    logits = head_logits(head, feats)
    probs = calibrated_probs(logits, float(extra.get("temperature", 1.0)))
    scores = {name: detector_from_extra(extra, name, None).score(feats, logits) for name in extra.get("unknown", {})}
    return probs, scores


def detectors_summary(extra: Mapping[str, Any]) -> dict[str, Any]:
    """What `evaluate` needs to judge the scores: temperature, target false-reject rate, thresholds."""
    fitted = extra.get("unknown", {})
    return {
        "temperature": float(extra.get("temperature", 1.0)),
        "false_reject": extra.get("unknown_false_reject"),
        "thresholds": {name: float(v["threshold"]) for name, v in fitted.items()},
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (test manifest)")
    parser.add_argument("--ood", type=Path, required=True, help="OOD set written by src.ood_data")
    parser.add_argument("--features", type=Path, required=True, help="featurize's cache (used when it matches)")
    parser.add_argument("--out", type=Path, required=True, help="test predictions CSV")
    parser.add_argument("--ood-out", type=Path, required=True, help="OOD predictions CSV (empty labels)")
    parser.add_argument("--detectors", type=Path, required=True, help="JSON: temperature and detector thresholds")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime(params.runtime)

    # Lazy: with valid cached features the backbone is never built (a head-only experiment saves seconds).
    loaded = load_checkpoint(args.model, expected_classes=params.classes, lazy=True)
    splits = {
        "test": (read_manifest(args.data / "test.csv", params.classes), args.out),
        "ood": ([Sample(p, None) for p in read_ood_manifest(args.ood / "manifest.csv")[0]], args.ood_out),
    }
    for split, (samples, out) in splits.items():
        feats = features_for(loaded, split, samples, args.features, runtime, params.predict.batch_size)
        probs, scores = score_images(loaded.head, feats, loaded.extra)
        write_predictions(out, [s.path for s in samples], [s.label for s in samples], probs, loaded.classes, scores)
    atomic_write_text(args.detectors, json.dumps(detectors_summary(loaded.extra), indent=2) + "\n")
    print(f"test: predictions for {len(splits['test'][0])} test and {len(splits['ood'][0])} OOD images -> {args.out}")


if __name__ == "__main__":
    run(main, "test")
