"""The OOD set from packaged photos: real photos that are none of ants, bees, cats or dogs.

Taken from files that pip packages (scikit-image, scikit-learn, matplotlib) and Debian packages
(OpenCV's samples, wallpapers, documentation) ship: the list is src/abcd/oodset/photos.py. The Debian
files are read through a route (src/abcd/oodset/routes.py: the mirror or the installed packages), the
pip ones from the installed pip packages. Each photo is written whole (its longer
side at most MAX_SIDE) and, with ``ood.crops``, as its four quadrant crops; the
crops are NOT independent samples, so the manifest names the source photo of every row
and the metrics count distinct photos. Each photo, with its crops, belongs to one half:
``selection`` (for choosing a detector and its settings) or ``report`` (for the reported
numbers only), a split made once with a fixed seed, stratified by category. Photos come in
batches (``OodPhoto.batch``): each batch is split on its own with its own seed (SPLIT_SEEDS),
so that adding a batch moves no earlier photo between halves (a report half already looked at
stays unseen by any choice). Nothing here is used to fit a threshold: the set is for evaluation only.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from abcd.core.errors import UserError
from abcd.core.fileio import atomic_dir
from abcd.data.images import load_rgb
from abcd.data.ood_manifest import HALVES, MANIFEST_FIELDS
from abcd.oodset.photos import DEB, PHOTOS, OodPhoto
from abcd.oodset.routes import installed

# Crops below this side would be upscaled several times by the backbone's resize: skip them.
MIN_CROP_SIDE = 150
# The wallpapers are up to 6000 px wide; the backbone sees 260 px. Shrinking first keeps
# data/ood small and featurize's decoding cheap, and the quadrants still far above MIN_CROP_SIDE.
MAX_SIDE = 1024
# The selection/report split is made once: a fixed seed, not `seed` in params, so that
# no experiment can move a photo the detector was chosen on into the reported half.
SPLIT_SEED = 20
# One seed per batch of photos, fixed when the batch was added (before any of its scores were seen).
SPLIT_SEEDS = {1: SPLIT_SEED, 2: 21}


def package_file(photo: OodPhoto, deb_root: Path = Path("/")) -> Path:
    """The photo's file (a Debian one under the route ``deb_root``), or a UserError naming what is missing."""
    if photo.source == DEB:
        path = installed(deb_root, photo.relpath)
        if not path.is_file():
            raise UserError(
                f"ood_data: {path} not found: the Debian package {photo.package!r} is not under the route "
                f"{deb_root} (data/ood_sources.yaml: the mirror, or / with the packages installed by make system-deps)"
            )
        return path
    spec = importlib.util.find_spec(photo.package)
    if spec is None or spec.origin is None:
        raise UserError(f"ood_data: package {photo.package!r} is not installed (pip install -r requirements/train.txt)")
    path = Path(spec.origin).parent / photo.relpath
    if not path.is_file():
        raise UserError(f"ood_data: {path} not found in the installed {photo.package!r} (a different version?)")
    return path


def regions(width: int, height: int, crops: bool = True) -> list[tuple[str, tuple[int, int, int, int]]]:
    """The whole image, then (with ``crops``) its quadrants where they are at least MIN_CROP_SIDE a side."""
    out = [("full", (0, 0, width, height))]
    hw, hh = width // 2, height // 2
    if crops and min(hw, hh) >= MIN_CROP_SIDE:
        for name, (x, y) in {"tl": (0, 0), "tr": (hw, 0), "bl": (0, hh), "br": (hw, hh)}.items():
            out.append((name, (x, y, x + hw, y + hh)))
    return out


def split_halves(photos: Sequence[OodPhoto], seed: int = SPLIT_SEED) -> dict[str, str]:
    """Each photo's half: a seeded shuffle within each category, dealt alternately.

    The first photo of each category goes to the half that has fewer so far, so the
    halves differ by at most one photo overall and by at most one within each category.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    sizes = dict.fromkeys(HALVES, 0)
    for category in sorted({p.category for p in photos}):
        names = sorted(p.name for p in photos if p.category == category)
        first = min(HALVES, key=lambda h: (sizes[h], HALVES.index(h)))
        order = HALVES if first == HALVES[0] else HALVES[::-1]
        for i, j in enumerate(rng.permutation(len(names))):
            out[names[j]] = order[i % 2]
            sizes[order[i % 2]] += 1
    return out


def split_batches(photos: Sequence[OodPhoto]) -> dict[str, str]:
    """Each photo's half: every batch split on its own (split_halves) with its seed from SPLIT_SEEDS."""
    out: dict[str, str] = {}
    for batch in sorted({p.batch for p in photos}):
        if batch not in SPLIT_SEEDS:
            raise ValueError(f"ood_data: photo batch {batch} has no split seed in SPLIT_SEEDS")
        out.update(split_halves([p for p in photos if p.batch == batch], SPLIT_SEEDS[batch]))
    return out


def sources_markdown(photos: Sequence[OodPhoto], counts: dict[str, int], halves: dict[str, str]) -> str:
    per_half = {h: sum(halves[p.name] == h for p in photos) for h in HALVES}
    lines = [
        "# Out-of-distribution photos (evaluation only)",
        "",
        "Written by `python -m abcd.stages.ood_data` from files that pip and Debian packages ship; none shows",
        "an ant, bee, cat or dog. Each photo appears whole and as quadrant crops: the crops are not",
        f"independent samples. {len(photos)} distinct photos, {sum(counts.values())} images; "
        f"{per_half['selection']} photos in the selection half, {per_half['report']} in the report half.",
        "",
        "| photo | category | batch | half | package | file | content | licence | images |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {p.name} | {p.category} | {p.batch} | {halves[p.name]} | {p.source}: {p.package} | {p.relpath} "
        f"| {p.content} "
        f"| {p.licence} | {counts[p.name]} |"
        for p in photos
    ]
    return "\n".join(lines) + "\n"


def build_ood_set(out: Path, crops: bool, deb_root: Path) -> int:
    """Write the OOD set to ``out`` (images, manifest.csv, SOURCES.md) atomically; the number of images.

    The same bytes from every route ``deb_root`` with the pinned files: nothing of the route is written."""
    files = {p.name: package_file(p, deb_root) for p in PHOTOS}  # all missing files fail before writing
    halves = split_batches(PHOTOS)
    counts: dict[str, int] = {}
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for photo in PHOTOS:
            image = Image.fromarray(load_rgb(files[photo.name]))
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)  # shrinks only
            for region, box in regions(*image.size, crops=crops):
                rel = f"images/{photo.name}_{region}.png"
                image.crop(box).save(tmp / rel)
                rows.append(
                    {
                        "path": str(out / rel),
                        "photo": photo.name,
                        "package": photo.package,
                        "region": region,
                        "half": halves[photo.name],
                    }
                )
            counts[photo.name] = sum(r["photo"] == photo.name for r in rows)
        with (tmp / "manifest.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "SOURCES.md").write_text(sources_markdown(PHOTOS, counts, halves))
    return len(rows)
