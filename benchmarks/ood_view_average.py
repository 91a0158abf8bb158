"""Predict-time view averaging for the unknown score, on the OOD selection half: gain against cost.

The score of each image's eval view (from featurize's cache) against the mean of the scores of
its eval view and its horizontal flip (one extra backbone pass per image at predict time),
each with its own val-calibrated threshold (split conformal, ``unknown.false_reject``).
Needs `dvc repro` first:
    python benchmarks/ood_view_average.py [--method mahalanobis_pp]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abcd.core.params import load_params
from abcd.data.images import load_rgb
from abcd.data.ood_manifest import read_ood_manifest
from abcd.evaluation.metrics import roc_auc
from abcd.features.runtime import resolve_runtime
from abcd.features.store import load_split
from abcd.features.transforms import eval_transform
from abcd.models.checkpoint import load_checkpoint
from abcd.ood.detectors import detector_from_extra, head_logits, threshold_for_false_reject


def flipped_features(model, preprocess, paths, precision: str, batch: int = 12) -> tuple[np.ndarray, float]:
    """Backbone features of each image mirrored left-right, and the seconds the passes took."""
    transform = eval_transform(preprocess)
    out, start = [], time.perf_counter()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        for i in range(0, len(paths), batch):
            x = torch.stack([transform(np.ascontiguousarray(load_rgb(p)[:, ::-1])) for p in paths[i : i + batch]])
            out.append(model.backbone(x.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(out), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="mahalanobis_pp")
    args = ap.parse_args()
    params = load_params(Path("params.yaml"))
    runtime = resolve_runtime(params.runtime)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_checkpoint("models/model.pt", expected_classes=params.classes, lazy=True)
    detector = detector_from_extra(loaded.extra, args.method, None)
    manifest = read_ood_manifest(Path("data/ood/manifest.csv"))
    sel = np.array([h == "selection" for h in manifest.halves])
    full = np.array([r == "full" for r in manifest.regions])[sel]
    feats = {s: load_split(Path("data/features"), s) for s in ("val", "test", "ood")}
    eval_view = {
        "val": feats["val"]["features"],
        "test": feats["test"]["features"],
        "ood": feats["ood"]["features"][sel],
    }
    paths = {
        "val": list(feats["val"]["paths"]),
        "test": list(feats["test"]["paths"]),
        "ood": [p for p, k in zip(manifest.paths, sel) if k],
    }
    model = loaded.model.to(memory_format=torch.channels_last)
    flip, seconds = {}, 0.0
    for split, ps in paths.items():
        flip[split], s = flipped_features(model, loaded.preprocess, ps, runtime.precision)
        seconds += s
    n_images = sum(len(p) for p in paths.values())

    def score(split: str, views: list[dict]) -> np.ndarray:
        return np.mean([detector.score(v[split], head_logits(loaded.head, v[split])) for v in views], axis=0)

    print(f"{args.method}, OOD selection half ({int(full.sum())} photos, {len(paths['ood'])} images)")
    print("| scored views | AUROC (photos) | photos rejected | images rejected | known test rejected |")
    print("| --- | --- | --- | --- | --- |")
    for label, views in (("eval view", [eval_view]), ("mean of eval view and flip", [eval_view, flip])):
        s = {split: score(split, views) for split in ("val", "test", "ood")}
        thr = threshold_for_false_reject(s["val"], params.unknown.false_reject)
        photos = s["ood"][full]
        auroc = roc_auc(np.r_[np.zeros(len(s["test"])), np.ones(len(photos))], np.r_[s["test"], photos])
        print(
            f"| {label} | {auroc:.3f} | {np.mean(photos > thr):.3f} | {np.mean(s['ood'] > thr):.3f} "
            f"| {np.mean(s['test'] > thr):.3f} |"
        )
    print(f"\ncost: {seconds / n_images * 1000:.0f} ms of backbone per extra view per image ({runtime.precision})")


if __name__ == "__main__":
    main()
