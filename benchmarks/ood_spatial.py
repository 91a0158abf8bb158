"""ImageNet evidence per location (issue 20): does an ant or a bee show up anywhere in the photo?

The pooled ImageNet "mass" (benchmarks/ood_candidates.py: -log P(ImageNet classes of ants, bees,
cats, dogs) from lite2's own 1000-class classifier on the pooled features) rejects 45 of the 46
selection photos, flowers and insects included, but also 6-9 of the 184 known test images: mostly
ants and bees, small in their photos, which the pooled feature reads as something else. lite2's
classifier is linear after global average pooling, so it can be applied at each of the 9 x 9
locations of the last feature map (a class activation map, Zhou et al. 2016): a small ant should
still win at its own location. Scores, each from P_known(loc) = the ImageNet softmax's mass on the
known kinds' classes at a location:

- ``spatial max``: -log max_loc P_known (the photo is known if any location is);
- ``spatial quantile q``: -log of the q-quantile over locations; ``spatial mean``: -mean log P_known;
- each fused (sum of val z-scores) with the default fusion's four scores and with knn alone;
- and, for every row, the val threshold at ``--alphas`` false-reject rates (the threshold rule is part
  of what the selection half chooses): 184 val images make the split-conformal threshold coarse
  (at 1% it is the largest val score).

The maps come from the pipeline's eval transform and backbone (fp32; cached in ``--cache``) on val,
test and the selection half only. No OOD photo fits anything.

Result (reports/ood_spatial.md): the spatial max rejects 43/46 at 5/184 known; no row beats the
default fusion's 42/46 at <= 3/184. The known images that the ImageNet classifier reads as other
things cap every ImageNet-evidence score near 2-3% known rejected, which the 2% bound cannot absorb.

    python benchmarks/ood_spatial.py > reports/ood_spatial.md   # about 2 min on 2 cores, first run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.special import log_softmax, logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abcd.core.params import load_params
from abcd.data.images import ImageDataset, Sample, read_manifest
from abcd.data.ood_manifest import read_ood_manifest
from abcd.features.transforms import eval_transform
from abcd.models.backbones import build_backbone
from benchmarks.ood_candidates import (
    SPLITS,
    Scores,
    evaluate,
    fuse,
    fusion_parts,
    imagenet_classifier,
    known_imagenet_classes,
    load_data,
)
from benchmarks.ood_detectors import selection_numbers


def spatial_logits(data_dir: Path, ood: Path, cache: Path, classes: list[str]) -> dict[str, np.ndarray]:
    """ImageNet logits at every location of lite2's last feature map, (N, locations, 1000) per split."""
    if cache.is_file():
        return dict(np.load(cache))
    backbone = build_backbone("efficientnet_lite2")
    model, transform = backbone.module.eval(), eval_transform(backbone.preprocess)
    w, b = (torch.from_numpy(a).float() for a in imagenet_classifier())
    manifest = read_ood_manifest(ood / "manifest.csv")
    samples = {s: read_manifest(data_dir / f"{s}.csv", classes) for s in ("val", "test")}
    samples["ood"] = [Sample(p, None) for p, h in zip(manifest.paths, manifest.halves) if h == "selection"]
    out = {}
    for split, rows in samples.items():
        dataset, parts = ImageDataset(rows, classes, transform), []
        with torch.inference_mode():
            for i in range(0, len(dataset), 16):
                x = torch.stack([torch.as_tensor(dataset[j][0]) for j in range(i, min(i + 16, len(dataset)))])
                fmap = model.forward_features(x)  # (N, 1280, h, w): conv_head + BN + activation
                parts.append((torch.einsum("nchw,kc->nhwk", fmap, w) + b).flatten(1, 2).numpy())
        out[split] = np.concatenate(parts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--ood", type=Path, default=Path("data/ood"))
    ap.add_argument("--cache", type=Path, default=Path("runs/ood_spatial/logits.npz"))
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.02, 0.015, 0.01])
    args = ap.parse_args()
    data = load_data(args.features, args.model, args.ood)
    z = spatial_logits(args.data, args.ood, args.cache, load_params(Path("params.yaml")).classes)
    strict = sorted(c for cs in known_imagenet_classes().values() for c in cs)
    # log P_known per location; the mean of the spatial logits is the pooled features' logits (linear head).
    known_loc = {s: logsumexp(log_softmax(z[s].astype(np.float64), axis=2)[:, :, strict], axis=2) for s in SPLITS}
    pooled = {
        s: -logsumexp(log_softmax(z[s].astype(np.float64).mean(axis=1), axis=1)[:, strict], axis=1) for s in SPLITS
    }
    four = fusion_parts(data)
    rows: dict[str, Scores] = {"default fusion (knn + energy + mahalanobis_pp + vim)": fuse(four, "z", "sum")}
    rows["pooled mass (fp32 features)"] = pooled
    rows["spatial max"] = {s: -known_loc[s].max(axis=1) for s in SPLITS}
    for q in (0.9, 0.75, 0.5):
        rows[f"spatial quantile {q}"] = {s: -np.quantile(known_loc[s], q, axis=1) for s in SPLITS}
    rows["spatial mean"] = {s: -known_loc[s].mean(axis=1) for s in SPLITS}
    for name in ("pooled mass (fp32 features)", "spatial max", "spatial mean"):
        rows[f"default fusion + {name}"] = fuse([*four, rows[name]], "z", "sum")
        rows[f"knn + {name}"] = fuse([four[0], rows[name]], "z", "sum")

    n_known = len(data.feats["test"])
    limit = int(np.floor(0.02 * n_known))  # the bound on known test images rejected
    print("# ImageNet evidence per location, selection half (issue 20)\n")
    print("`python benchmarks/ood_spatial.py` (after `dvc repro`). The report half is not read.\n")
    print(
        f"46 selection photos, {n_known} known test images; photos and known test images rejected at the val "
        "threshold, per false-reject rate.\n"
    )
    header = " | ".join(f"at {a:g}" for a in args.alphas)
    print(f"| score | AUROC | FPR@95 | {header} | accepted at {args.alphas[0]:g} |")
    print("|---|---|---|" + "---|" * len(args.alphas) + "---|")
    best = (-1, 0.0, "")
    for label, scores in rows.items():
        row = evaluate(data, label, "-", scores)
        cells = []
        for a in args.alphas:
            nums = selection_numbers(scores, data.ood_full, a)
            photos, known = round(nums["photos"] * row.n_photos), round(nums["known"] * n_known)
            if known <= limit and (photos, -row.fpr95) > best[:2]:  # the rule; ties: FPR@95, then the earlier row
                best = (photos, -row.fpr95, f"{label} at {a:g}")
            cells.append(f"{photos}/{row.n_photos}, {known}/{n_known}")
        print(f"| {label} | {row.auroc:.3f} | {row.fpr95:.3f} | {' | '.join(cells)} | {', '.join(row.missed)} |")
    print(f"\nThe rule's choice (most photos with at most {limit}/{n_known} known rejected): {best[2]}, {best[0]}/46.")


if __name__ == "__main__":
    main()
