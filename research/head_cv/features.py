"""Backbone features the head CV study needs beyond data/features (same backbone, preprocessing and precision).

    python research/head_cv/features.py [--views 2] [--out research/head_cv/out]

Writes, under --out (the train images' eval view is featurize's own: data/features/train/
``eval_features``):
  val_views.npz          --views augmented views of the val images (N, V, D), as if val were training data
  train_extra_views.npz  augmented views 2..V-1 of the train images (only with --views > 2);
                         views 0..1 are data/features/train/
View seeds: views 0..1 use featurize's scheme for 2 views, seed (s * 1000003 + i) * 2 + v, so train views
0..1 reproduce data/features/train/ (checked on the first images before anything is written);
views v >= 2 use 2**31 + (s * 1000003 + i) * 8 + v. Reads data/prepared (train, val) and data/features
(train, val, meta.json) only: never the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abcd.core.params import load_params
from abcd.data.images import load_rgb, read_manifest
from abcd.features.engine import extract_features, make_loader, prepare_model, weights_fingerprint
from abcd.features.runtime import resolve_runtime, seed_everything
from abcd.features.store import load_split
from abcd.features.transforms import eval_transform, train_transform
from abcd.models.backbones import build_backbone


def view_seed(seed: int, i: int, v: int) -> int:
    if v < 2:
        return (seed * 1_000_003 + i) * 2 + v
    return 2**31 + (seed * 1_000_003 + i) * 8 + v


class ViewsDataset:
    """abcd.data.images.ImageDataset with chosen view indices: item i is the stacked views ``views`` of image i."""

    def __init__(self, samples, classes, transform, views, seed):
        self.samples, self.transform, self.views, self.seed = list(samples), transform, list(views), seed
        self.index = {c: i for i, c in enumerate(classes)}

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        sample = self.samples[i]
        image = load_rgb(sample.path)
        xs = [self.transform(image, view_seed(self.seed, i, v)) for v in self.views]
        return (xs[0] if len(xs) == 1 else torch.stack(xs)), self.index[sample.label]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=2, help="augmented views per pool image (>= 2)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--out", type=Path, default=Path("research/head_cv/out"))
    args = ap.parse_args()
    if args.views < 2:
        ap.error("--views must be at least 2 (the cached training views)")
    torch.set_num_threads(1)
    params = load_params(args.params)
    seed_everything(params.seed)
    runtime = resolve_runtime(params.runtime)
    meta = json.loads((args.features / "meta.json").read_text())
    backbone = build_backbone(params.model.backbone, pretrained=True)
    if weights_fingerprint(backbone.module) != meta["backbone_sha256"]:
        raise SystemExit("backbone weights differ from the ones that made data/features: run dvc repro first")
    if backbone.preprocess.to_dict() != meta["preprocess"] or runtime.precision != meta["precision"]:
        raise SystemExit(f"preprocessing/precision differ from data/features/meta.json ({runtime.precision})")
    module = prepare_model(backbone.module, runtime)
    pre = backbone.preprocess
    augment = train_transform(pre, params.augment)
    tr = read_manifest(args.data / "train.csv", params.classes)
    va = read_manifest(args.data / "val.csv", params.classes)
    cached_tr = load_split(args.features, "train")
    cached_va = load_split(args.features, "val")
    if [str(p) for p in cached_tr["paths"]] != [s.path for s in tr] or cached_tr["features"].shape[1] != 2:
        raise SystemExit("data/features/train/ does not match data/prepared/train.csv with 2 views")
    if "eval_features" not in cached_tr:
        raise SystemExit("data/features/train/ has no eval_features (an older featurize): run dvc repro first")

    def run(samples, transform, views):
        ds = ViewsDataset(samples, params.classes, transform, views, params.seed)
        start = time.perf_counter()
        batch = max(1, params.featurize.batch_size // len(views))
        f, y = extract_features(module, make_loader(ds, batch, runtime), runtime, desc=f"{len(views)} views")
        print(f"  {len(samples)} images x {len(views)} views: {time.perf_counter() - start:.1f}s", flush=True)
        return f.astype(np.float32), y

    # The seed scheme, transforms and precision reproduce the cache (train views 0..1, val eval view).
    f, _ = run(tr[:8], augment, [0, 1])
    diff_views = float(np.abs(f - cached_tr["features"][:8]).max())
    f, _ = run(va[:8], eval_transform(pre), [0])
    diff_eval = float(np.abs(f - cached_va["features"][:8]).max())
    print(f"check against data/features: max|diff| train views {diff_views}, val eval view {diff_eval}")
    if max(diff_views, diff_eval) > 1e-2:  # a wrong seed or transform: differences of order 0.1..1
        raise SystemExit("features do not reproduce data/features: view seeds or transforms differ")
    if max(diff_views, diff_eval) > 0:
        print("warning: not bit-identical to data/features (other machine or thread count?)")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_eval.npz").unlink(missing_ok=True)  # made by earlier versions; featurize has it now
    f, y = run(va, augment, list(range(args.views)))
    np.savez(args.out / "val_views.npz", features=f, labels=y, paths=[s.path for s in va])
    if args.views > 2:
        f, y = run(tr, augment, list(range(2, args.views)))
        if f.ndim == 2:
            f = f[:, None]
        np.savez(args.out / "train_extra_views.npz", features=f, labels=y, paths=[s.path for s in tr])
    else:
        (args.out / "train_extra_views.npz").unlink(missing_ok=True)
    print(f"wrote {args.out}/val_views.npz" + (", train_extra_views.npz" if args.views > 2 else ""))


if __name__ == "__main__":
    main()
