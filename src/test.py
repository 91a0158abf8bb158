"""Stage `test`: run the checkpoint on the test split and write the predictions CSV.

    python -m src.test --model models/model.pt --data data/prepared --out data/predictions/test.csv

Runs the full model (backbone + head) on the images, through the same checkpoint
loader and forward path as the predict command, not on cached features.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from src.cli import run
from src.data import ImageDataset, read_manifest
from src.engine import make_loader, predict_proba, prepare_model
from src.models import load_checkpoint
from src.params import load_params
from src.predictions import write_predictions
from src.runtime import resolve_runtime
from src.transforms import eval_transform


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    runtime = resolve_runtime(params.runtime)

    loaded = load_checkpoint(args.model, expected_classes=params.classes)
    prepare_model(loaded.model, runtime)
    samples = read_manifest(args.data / "test.csv", params.classes)
    dataset = ImageDataset(samples, loaded.classes, eval_transform(loaded.preprocess))
    probs = predict_proba(loaded.model, make_loader(dataset, params.predict.batch_size, runtime), runtime, "test")
    write_predictions(args.out, [s.path for s in samples], [s.label for s in samples], probs, loaded.classes)
    accuracy = float((probs.argmax(1) == [loaded.classes.index(s.label) for s in samples]).mean())
    print(f"test: {len(samples)} images, accuracy {accuracy:.3f} -> {args.out}")


if __name__ == "__main__":
    run(main, "test")
