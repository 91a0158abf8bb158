"""Stage `test`: apply the checkpoint to the test split and write the predictions CSV.

    python -m src.test --model models/model.pt --data data/prepared --features data/features \
        --out data/predictions/test.csv

With a frozen backbone the checkpoint's head is applied to the test features that
`featurize` cached, after checking that they were made by exactly this backbone
(same weights fingerprint, preprocessing and precision): the numbers are then those
of the full model, without decoding or a backbone pass. Otherwise (a fine-tuned
backbone, or features from something else) the backbone runs on the images, through
the same loader and forward path as the predict command. Either way the probabilities
are the predict command's: softmax of the head's logits divided by the checkpoint's
temperature (fitted on val at the end of training).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from src.calibration import calibrated_probs
from src.cli import run
from src.data import ImageDataset, Sample, read_manifest
from src.engine import extract_features, make_loader, prepare_model, weights_fingerprint
from src.models import LoadedModel, load_checkpoint
from src.params import load_params
from src.predictions import write_predictions
from src.runtime import Runtime, resolve_runtime
from src.transforms import eval_transform
from src.unknown import head_logits


def cached_features(
    features: Path, loaded: LoadedModel, samples: Sequence[Sample], runtime: Runtime
) -> tuple[np.ndarray | None, str]:
    """The cached test features if they are this checkpoint's own, else None and the reason."""
    meta_path, npz_path = features / "meta.json", features / "test.npz"
    if not (meta_path.is_file() and npz_path.is_file()):
        return None, f"no cached test features in {features}"
    meta = json.loads(meta_path.read_text())
    expected = {
        "backbone": loaded.backbone,
        "backbone_sha256": weights_fingerprint(loaded.model.backbone),
        "preprocess": loaded.preprocess.to_dict(),
        "precision": runtime.precision,
        "classes": loaded.classes,
    }
    for key, value in expected.items():
        if meta.get(key) != value:
            return None, f"{meta_path}: {key} differs from the checkpoint's (fine-tuned or other backbone)"
    with np.load(npz_path) as npz:
        feats, paths = npz["features"], [str(p) for p in npz["paths"]]
    if paths != [s.path for s in samples]:
        return None, f"{npz_path}: images differ from the test manifest"
    return feats, "cached features"


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

    loaded = load_checkpoint(args.model, expected_classes=params.classes)
    samples = read_manifest(args.data / "test.csv", params.classes)
    feats, route = cached_features(args.features, loaded, samples, runtime)
    if feats is None:
        print(f"test: {route}; running the full model on the images")
        route = "full model on images"
        backbone = prepare_model(loaded.model.backbone, runtime)
        dataset = ImageDataset(samples, loaded.classes, eval_transform(loaded.preprocess))
        loader = make_loader(dataset, params.predict.batch_size, runtime)
        feats, _ = extract_features(backbone, loader, runtime, "test")
    probs = calibrated_probs(head_logits(loaded.model.head, feats), float(loaded.extra.get("temperature", 1.0)))
    write_predictions(args.out, [s.path for s in samples], [s.label for s in samples], probs, loaded.classes)
    accuracy = float((probs.argmax(1) == [loaded.classes.index(s.label) for s in samples]).mean())
    print(f"test: {len(samples)} images ({route}), accuracy {accuracy:.3f} -> {args.out}")


if __name__ == "__main__":
    run(main, "test")
