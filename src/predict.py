"""Classify images with the best checkpoint; low-confidence images are reported as unknown.

    python -m src.predict path/to/image.jpg [more.jpg ...] [--threshold 0.6]

Prints one line per image: path, class (or ``unknown``) and the top class probability.
Exits 1 if any file could not be read (the others are still classified).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.cli import run
from src.data import ImageError, load_rgb
from src.engine import predict_proba, prepare_model
from src.models import LoadedModel, load_checkpoint
from src.params import load_params
from src.runtime import Runtime, resolve_runtime
from src.transforms import eval_transform

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Decision:
    label: str  # a class name or UNKNOWN
    probability: float  # the top class probability, whatever the decision
    top_class: str


def decide(probs: np.ndarray, classes: Sequence[str], threshold: float) -> list[Decision]:
    """The original project's rule: unknown when every class probability is below ``threshold``."""
    out = []
    for p in np.atleast_2d(probs):
        top = int(np.argmax(p))
        label = classes[top] if p[top] >= threshold else UNKNOWN
        out.append(Decision(label, float(p[top]), classes[top]))
    return out


def classify_files(
    loaded: LoadedModel, paths: Sequence[str], runtime: Runtime, batch_size: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Class probabilities per readable file, and an error message per unreadable one."""
    transform = eval_transform(loaded.preprocess)
    tensors, ok, errors = [], [], {}
    for path in paths:
        try:
            tensors.append(transform(load_rgb(path)))
            ok.append(path)
        except ImageError as err:
            errors[path] = err.reason
    if not ok:
        return {}, errors
    batches = [(torch.stack(tensors[i : i + batch_size]), None) for i in range(0, len(tensors), batch_size)]
    probs = predict_proba(loaded.model, batches, runtime)
    return dict(zip(ok, probs)), errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files to classify")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threshold", type=float, default=None, help="default: predict.threshold in params")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    threshold = params.predict.threshold if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {threshold}")

    loaded = load_checkpoint(args.checkpoint)
    runtime = resolve_runtime(params.runtime)
    prepare_model(loaded.model, runtime)
    probs, errors = classify_files(loaded, args.images, runtime, params.predict.batch_size)
    for path in args.images:
        if path in errors:
            print(f"{path}\terror: {errors[path]}", file=sys.stderr)
            continue
        d = decide(probs[path], loaded.classes, threshold)[0]
        suffix = "" if d.label != UNKNOWN else f"  (best guess {d.top_class}, below threshold {threshold:g})"
        print(f"{path}\t{d.label}\t{d.probability:.3f}{suffix}")
    return 1 if errors else 0


def cli() -> None:
    run(main, "predict")


if __name__ == "__main__":
    cli()
