"""Stage `test`: apply the checkpoint to the test split and to the OOD set; write predictions CSVs.

Backbone features come from featurize's cache when they are provably this checkpoint's
own (see src/abcd/features/cache.py), else from running the backbone on the images. The
probabilities are the predict command's: softmax of the head's logits divided by the
checkpoint's temperature (fitted on val at the end of training). Each row also has the
score of every unknown detector stored in the checkpoint; their thresholds (fitted on
val) and the temperature go to ``--detectors``, so that `evaluate` needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_write_text
from abcd.core.params import load_params
from abcd.data.images import Sample, read_manifest
from abcd.data.ood_manifest import read_ood_manifest
from abcd.evaluation.calibration import calibrated_probs
from abcd.evaluation.predictions import write_predictions
from abcd.features.cache import features_for
from abcd.features.runtime import resolve_runtime
from abcd.models.checkpoint import load_checkpoint
from abcd.ood.detectors import detector_from_extra, head_logits


def score_images(head, feats: np.ndarray, extra: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class probabilities (softmax of logits / the checkpoint's T) and every fitted detector's score."""
    logits = head_logits(head, feats)
    probs = calibrated_probs(logits, float(extra.get("temperature", 1.0)))
    scores: dict[str, np.ndarray] = {}
    for name in extra.get("unknown", {}):  # train stores a fusion after its components: it reuses their scores
        scores[name] = detector_from_extra(extra, name, None).score(feats, logits, scores)
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
    args = stage_args(
        __doc__,
        argv,
        reads={
            "model": "checkpoint",
            "data": "prepared dataset (test manifest, images)",
            "ood": "OOD set written by abcd.stages.ood_data",
            "features": "featurize's cache (used when it is the checkpoint's own)",
        },
        writes={
            "out": "test predictions CSV",
            "ood-out": "OOD predictions CSV (empty labels)",
            "detectors": "JSON: temperature and detector thresholds",
        },
    )
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
