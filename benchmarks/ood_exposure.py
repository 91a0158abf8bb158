"""Outlier exposure (issue 20): a third batch of real photos, used only for fitting, as negatives.

Hendrycks, Mazeika and Dietterich 2019, "Deep Anomaly Detection with Outlier Exposure" (ICLR):
a detector sees examples of what is *not* in the training distribution while it is fitted, and
generalises from them to unseen outliers. Here the network stays frozen: the exposure photos
(benchmarks/ood_exposure_photos.py: packages the OOD evaluation set does not use) go through the
pipeline's eval transform and backbone, as whole photos, their quadrants and two seeded random
crops each (cached in ``--cache``), and two detectors are fitted on them beside the training bank:

- ``logreg C``: logistic regression of the L2-normalised training features (augmented views plus
  eval views, as the kNN bank) against the exposure features, class_weight balanced; the score is
  its logit of P(exposure) (a discriminative outlier-exposure head on fixed features, as in the
  paper's section 3 with a linear model in place of fine-tuning the network).
- ``knn ratio l``: the kNN (k = 1, cosine) distance to the training bank minus l times the
  distance to the exposure bank: a two-sample nearest-neighbour test (cf. Sun et al. 2022, "Out-of-
  distribution Detection with Deep Nearest Neighbors", for the first term).

Each is also fused (sum of val z-scores, benchmarks/ood_candidates.py's ``fuse``) with kNN alone and
with the default fusion's four components (knn k=1, energy, mahalanobis_pp, vim). The reference
rows are those components and the default fusion itself. Only the OOD set's selection half is
scored (benchmarks/ood_candidates.py's ``load_data``); val sets only the thresholds and z-scales;
no OOD photo fits anything. Tables and selection rule as in benchmarks/ood_candidates.py.

Result (reports/ood_exposure.md): no candidate beats the default fusion (42/46 at 3/184, FPR@95
0.043). Default four + logreg C=1 and default four + knn ratio 1 tie at 42/46, 3/184 with FPR@95
0.065; the same four photos (anemones, dragonfly, marigold, scarce_swallowtail) pass every fusion
with the four. Each is nearer (1 - cos) a training image, a bee or an ant, than any exposure row:
marigold 0.41 to a bee against 0.49 to tuxpaint's own marigold cut-out; the cut-outs on white are
not the in-situ flower photos the bees are shot in. Rows move by a photo or a known image when
one exposure photo is dropped (a near-duplicate apricot): within noise.

The exposure files are read from their installed places, or with ``--root`` from an unpacked
tree of the Debian packages (``apt-get download`` + ``dpkg -x``) and with ``--pip-root`` from
unpacked wheels (``pip download --no-deps`` + ``unzip``):

    python benchmarks/ood_exposure.py --root /tmp/oe/root --pip-root /tmp/oe/pip > reports/ood_exposure.md
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abcd.oodset.assemble import MAX_SIDE, regions
from abcd.oodset.photos import DEB, MIN_SIDE, OodPhoto
from benchmarks.ood_candidates import (
    SPLITS,
    Row,
    Scores,
    evaluate,
    fuse,
    fusion_parts,
    knn_scores,
    load_data,
    print_tables,
)
from benchmarks.ood_exposure_photos import EXPOSURE_PHOTOS

# Labels and banks of the default fusion's four components (fusion_parts' order) in the tables.
REFERENCE_ROWS = (("knn k=1", "views+eval"), ("energy", "-"), ("mahalanobis_pp", "views"), ("vim dim=256", "views"))
RANDOM_CROPS = 2  # per photo, besides the whole photo and its quadrants
CROP_SEED = 20


def photo_file(photo: OodPhoto, root: Path, pip_root: Path | None) -> Path:
    """The photo's file: a Debian path under ``root``; a pip module's file from ``pip_root`` or the installed module."""
    if photo.source == DEB:
        path = root / photo.relpath.lstrip("/")
    elif pip_root is not None:
        path = pip_root / photo.package / photo.relpath
    else:
        spec = importlib.util.find_spec(photo.package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"ood_exposure: pip package {photo.package!r} not installed (or pass --pip-root)")
        path = Path(spec.origin).parent / photo.relpath
    if not path.is_file():
        raise SystemExit(f"ood_exposure: {path} not found ({photo.package})")
    return path


def load_photo(path: Path) -> np.ndarray:
    """HxWx3 uint8 as the pipeline loads it (transparency on white), cut to its opaque part, at most MAX_SIDE."""
    from abcd.data.images import to_rgb

    with Image.open(path) as img:
        img.load()
        if "A" in img.getbands():
            box = img.getchannel("A").getbbox()  # a cut-out stamp: only its opaque part
            img = img.crop(box)
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # shrinks only, as ood_data does
        rgb = to_rgb(img)
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise SystemExit(f"ood_exposure: {path} is {rgb.shape[1]}x{rgb.shape[0]}, under MIN_SIDE {MIN_SIDE}")
    return rgb


def crop_boxes(width: int, height: int, rng: np.random.Generator) -> list[tuple[str, tuple[int, int, int, int]]]:
    """ood_data's regions (whole photo, quadrants where >= MIN_CROP_SIDE), then RANDOM_CROPS random
    squares of 40-80% of the shorter side."""
    out = regions(width, height)
    short = min(width, height)
    for i in range(RANDOM_CROPS):
        side = max(int(short * rng.uniform(0.4, 0.8)), min(short, MIN_SIDE))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        out.append((f"r{i}", (x, y, x + side, y + side)))
    return out


def exposure_features(
    cache: Path, features: Path, root: Path, pip_root: Path | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (N, D), photo name (N,), region (N,)) of every exposure photo's crops, cached in ``cache``.

    As benchmarks/ood_candidates.py's background_features: the pipeline's eval transform and the
    backbone featurize saved, bf16 autocast on the CPU as featurize ran.
    """
    if cache.is_file():
        z = np.load(cache)
        return z["features"], z["photos"], z["regions"]
    from abcd.features.transforms import eval_transform
    from abcd.models.backbones import BACKBONE_WEIGHTS, build_backbone

    backbone = build_backbone("efficientnet_lite2", pretrained=False)
    backbone.module.load_state_dict(torch.load(features / BACKBONE_WEIGHTS, weights_only=True), strict=True)
    module = backbone.module.eval().to(memory_format=torch.channels_last)
    transform = eval_transform(backbone.preprocess)
    rng = np.random.default_rng(CROP_SEED)
    feats, photos, names = [], [], []
    for i, photo in enumerate(EXPOSURE_PHOTOS):
        image = load_photo(photo_file(photo, root, pip_root))
        h, w = image.shape[:2]
        boxes = crop_boxes(w, h, rng)
        x = torch.stack([transform(image[y0:y1, x0:x1]) for _, (x0, y0, x1, y1) in boxes])
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            feats.append(module(x.contiguous(memory_format=torch.channels_last)).float().numpy())
        photos += [photo.name] * len(boxes)
        names += [n for n, _ in boxes]
        if i % 20 == 0:
            print(f"exposure photos: {i}/{len(EXPOSURE_PHOTOS)}", file=sys.stderr, flush=True)
    out = np.concatenate(feats), np.array(photos), np.array(names)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=out[0], photos=out[1], regions=out[2])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--ood", type=Path, default=Path("data/ood"))
    ap.add_argument("--root", type=Path, default=Path("/"), help="where the Debian packages' files are (dpkg -x)")
    ap.add_argument("--pip-root", type=Path, default=None, help="unpacked wheels (default: the installed modules)")
    ap.add_argument("--cache", type=Path, default=Path("runs/ood_exposure/features.npz"))
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression

    from abcd.ood.detectors import _normalise

    data = load_data(args.features, args.model, args.ood)
    exp_x, exp_photo, exp_region = exposure_features(args.cache, args.features, args.root, args.pip_root)
    bank = f"{len(exp_x)} rows, {len(np.unique(exp_photo))} photos"
    rows: list[Row] = []

    def add(label: str, where: str, scores: Scores) -> Scores:
        rows.append(evaluate(data, label, where, scores))
        print(rows[-1].line(), file=sys.stderr, flush=True)
        return scores

    # The reference rows: the default fusion's components and the default fusion itself.
    four = fusion_parts(data)
    knn = four[0]
    for (label, where), scores in zip(REFERENCE_ROWS, four):
        add(label, where, scores)
    add("fusion (default): knn + energy + mahalanobis_pp + vim", "-", fuse(four, "z", "sum"))

    candidates: list[tuple[str, Scores]] = []
    x = np.r_[_normalise(data.bank_x), _normalise(exp_x)]
    y = np.r_[np.zeros(len(data.bank_x)), np.ones(len(exp_x))]
    for c in (0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(x, y)
        candidates.append((f"logreg C={c:g}", {s: model.decision_function(_normalise(data.feats[s])) for s in SPLITS}))
    d_exp = knn_scores(exp_x, data.feats)
    for lam in (0.25, 0.5, 1.0):
        candidates.append((f"knn ratio: knn - {lam:g} knn_exposure", {s: knn[s] - lam * d_exp[s] for s in SPLITS}))
    for label, scores in candidates:
        add(f"exposure: {label}", bank, scores)
    for label, scores in candidates:
        add(f"exposure: fusion sum(z) knn + {label}", bank, fuse([knn, scores], "z", "sum"))
    for label, scores in candidates:
        add(f"exposure: fusion sum(z) default four + {label}", bank, fuse([*four, scores], "z", "sum"))

    counts = ", ".join(f"{r}: {int(np.sum(exp_region == r))}" for r in dict.fromkeys(exp_region.tolist()))
    print_tables(data, rows, "Outlier exposure on the selection half", f"Exposure bank: {bank} ({counts}).")


if __name__ == "__main__":
    main()
