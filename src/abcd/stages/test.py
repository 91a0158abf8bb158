"""Stage `test`: apply the checkpoint to the test split and to the OOD set; write predictions CSVs.

Backbone features come from featurize's cache when they are provably this checkpoint's
own (see src/abcd/features/cache.py), else from running the backbone on the images. From
the features on, each split takes the predict command's path
(``abcd.inference.torch_model.TorchModel.scores``): softmax of the head's logits divided by
the checkpoint's temperature (fitted on val at the end of training), and the score of every
unknown detector stored in the checkpoint. Their thresholds (fitted on val) and the
temperature go to ``--detectors``, so that `evaluate` needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_write_text
from abcd.core.params import load_params
from abcd.data.images import Sample, read_manifest
from abcd.data.ood_manifest import read_ood_manifest
from abcd.evaluation.predictions import write_predictions
from abcd.features.cache import cached_features
from abcd.features.runtime import resolve_runtime
from abcd.inference.torch_model import TorchModel, fitted_detectors
from abcd.models.checkpoint import load_checkpoint


def split_features(
    model: TorchModel, split: str, samples: Sequence[Sample], cache: Path, batch_size: int
) -> np.ndarray:
    """Pooled backbone features (N, D) of ``samples``: from featurize's cache when valid, else computed."""
    feats, why = cached_features(cache, split, model.loaded, [s.path for s in samples], model.device)
    if feats is not None:
        print(f"{split}: {len(samples)} images, cached features")
        return feats
    print(f"{split}: {why}; running the backbone on the images")
    return model.image_features(samples, batch_size, split)


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
    # Every fitted detector in stored order: train stores a fusion after the components it reuses.
    model = TorchModel(loaded, runtime, fitted_detectors(loaded.extra))
    splits = {
        "test": (read_manifest(args.data / "test.csv", params.classes), args.out),
        "ood": ([Sample(p, None) for p in read_ood_manifest(args.ood / "manifest.csv")[0]], args.ood_out),
    }
    for split, (samples, out) in splits.items():
        probs, scores = model.scores(split_features(model, split, samples, args.features, params.predict.batch_size))
        write_predictions(out, [s.path for s in samples], [s.label for s in samples], probs, loaded.classes, scores)
    atomic_write_text(args.detectors, json.dumps(detectors_summary(loaded.extra), indent=2) + "\n")
    print(f"test: predictions for {len(splits['test'][0])} test and {len(splits['ood'][0])} OOD images -> {args.out}")


if __name__ == "__main__":
    run(main, "test")
