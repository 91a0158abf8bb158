"""Stage `test`: apply the checkpoint to the test split and write the predictions CSV.

    python -m src.test --model models/model.pt --data data/prepared --features data/features \
        --out data/predictions/test.csv

Backbone features come from featurize's cache when they are provably this checkpoint's
own (see src/feature_cache.py), else from running the backbone on the images. The
probabilities are the predict command's: softmax of the head's logits divided by the
checkpoint's temperature (fitted on val at the end of training).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from src.calibration import calibrated_probs
from src.cli import run
from src.data import read_manifest
from src.feature_cache import features_for
from src.models import load_checkpoint
from src.params import load_params
from src.predictions import write_predictions
from src.runtime import resolve_runtime
from src.unknown import head_logits


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="featurize's cache (used when it matches)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime(params.runtime)

    # Lazy: with valid cached features the backbone is never built (a head-only experiment saves seconds).
    loaded = load_checkpoint(args.model, expected_classes=params.classes, lazy=True)
    samples = read_manifest(args.data / "test.csv", params.classes)
    feats = features_for(loaded, "test", samples, args.features, runtime, params.predict.batch_size)
    probs = calibrated_probs(head_logits(loaded.head, feats), float(loaded.extra.get("temperature", 1.0)))
    write_predictions(args.out, [s.path for s in samples], [s.label for s in samples], probs, loaded.classes)
    accuracy = float((probs.argmax(1) == [loaded.classes.index(s.label) for s in samples]).mean())
    print(f"test: {len(samples)} images, accuracy {accuracy:.3f} -> {args.out}")


if __name__ == "__main__":
    run(main, "test")
