"""Draw the training augmentation policy of params.yaml: each row one photo, its eval view, then augmented views.

    python tools/augment_samples.py --data data/prepared --out docs/augmentations.jpg

The views are the seeded draws the pipeline uses (``ImageDataset`` seeds), so the picture
shows what the model is trained on for the backbone in ``model.backbone``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from abcd.core.params import load_params
from abcd.data.images import ImageDataset, read_manifest
from abcd.evaluation import figures
from abcd.features.transforms import denormalize, eval_transform, train_transform
from abcd.models.backbones import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, default=Path("docs/augmentations.jpg"))
    parser.add_argument("--views", type=int, default=5)
    args = parser.parse_args()
    params = load_params(args.params)
    pre = build_backbone(params.model.backbone, pretrained=False).preprocess
    samples = read_manifest(args.data / "train.csv", params.classes)
    # One photo per class, the first in the manifest: a stable picture across runs.
    picks = [next(i for i, s in enumerate(samples) if s.label == c) for c in params.classes]
    plain = ImageDataset(samples, params.classes, eval_transform(pre))
    augmented = ImageDataset(samples, params.classes, train_transform(pre, params.augment), args.views, params.seed)
    images, titles = [], []
    for i in picks:
        images.append(denormalize(plain[i][0], pre).permute(1, 2, 0).numpy())
        titles.append(f"{samples[i].label}: eval view")
        for v, x in enumerate(augmented[i][0]):
            images.append(denormalize(x, pre).permute(1, 2, 0).numpy())
            titles.append(f"augmented {v + 1}")
    grid = figures.image_grid(images, titles, ["black"] * len(images), cols=args.views + 1, tile=160)
    # JPEG at a modest resolution: the picture lives in git.
    figures.save_image(grid, args.out, quality=85)
    print(f"{len(picks)} photos x {args.views} views -> {args.out} ({pre.input_size} px)")


if __name__ == "__main__":
    main()
