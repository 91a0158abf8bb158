"""Stage `ood_data`: assemble an out-of-distribution photo set from pip-installed packages.

Real photos that are none of ants, bees, cats or dogs, taken from files that
scikit-image, scikit-learn and matplotlib ship (offline). Each photo is written whole
and, with ``unknown.ood_crops``, as its four quadrant crops; the crops are NOT independent samples, so the manifest
names the source photo of every row and the metrics count distinct photos too.
Nothing here is used to fit a threshold: the set is for evaluation only.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from src.cli import run, stage_args
from src.data import load_rgb
from src.errors import InvalidFileError, MissingFileError, UserError
from src.fileio import atomic_dir
from src.params import load_params

MANIFEST_FIELDS = ("path", "photo", "package", "region")
# Crops below this side would be upscaled several times by the backbone's resize: skip them.
MIN_CROP_SIDE = 150


@dataclass(frozen=True)
class OodPhoto:
    name: str
    package: str  # importable module that ships the file
    relpath: str  # inside that package's directory
    content: str
    licence: str


# Chosen by looking at each file: no ants, bees, cats or dogs. Left out on purpose:
# skimage chelsea (a cat), motorcycle_right (same scene as motorcycle_left), and the
# drawings/synthetic images (horse silhouette, logos, chessboards, phantom, colour wheel).
PHOTOS: tuple[OodPhoto, ...] = (
    OodPhoto("astronaut", "skimage", "data/astronaut.png", "astronaut Eileen Collins, portrait", "NASA, public domain"),
    OodPhoto("brick", "skimage", "data/brick.png", "brick wall texture (grey)", "CC0 (cc0textures)"),
    OodPhoto("camera", "skimage", "data/camera.png", "man with a camera on a tripod (grey)", "CC0, Lav Varshney"),
    OodPhoto("cell", "skimage", "data/cell.png", "phase image of a cell (grey)", "CC0 (scikit-image)"),
    OodPhoto("clock_motion", "skimage", "data/clock_motion.png", "motion-blurred wall clock (grey)", "public domain"),
    OodPhoto("coffee", "skimage", "data/coffee.png", "cup of coffee on a saucer", "CC0, Rachel Michetti"),
    OodPhoto(
        "coins",
        "skimage",
        "data/coins.png",
        "old coins on a dark background (grey)",
        "Brooklyn Museum, no known restrictions",
    ),
    OodPhoto("grass", "skimage", "data/grass.png", "grass texture (grey)", "CC0 (DeviantArt linolafett)"),
    OodPhoto("gravel", "skimage", "data/gravel.png", "gravel texture (grey)", "CC0 (cc0textures)"),
    OodPhoto(
        "hubble_deep_field",
        "skimage",
        "data/hubble_deep_field.jpg",
        "galaxies, Hubble deep field",
        "NASA, public domain",
    ),
    OodPhoto("ihc", "skimage", "data/ihc.png", "stained tissue under a microscope", "scikit-image (CC0)"),
    OodPhoto("moon", "skimage", "data/moon.png", "surface of the moon (grey)", "scikit-image, no known restrictions"),
    OodPhoto(
        "motorcycle", "skimage", "data/motorcycle_left.png", "red motorcycle in a workshop", "Middlebury stereo set"
    ),
    OodPhoto("page", "skimage", "data/page.png", "scanned printed page (grey)", "scikit-image, no known restrictions"),
    OodPhoto("retina", "skimage", "data/retina.jpg", "fundus photograph of an eye", "CC0 (Wikimedia)"),
    OodPhoto(
        "rocket", "skimage", "data/rocket.jpg", "SpaceX rocket on the launch pad at night", "SpaceX, public domain"
    ),
    OodPhoto("text", "skimage", "data/text.png", "handwritten text on a surface (grey)", "public domain (Wikipedia)"),
    OodPhoto(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "portrait of Grace Hopper",
        "US Navy, public domain",
    ),
    OodPhoto(
        "china",
        "sklearn",
        "datasets/images/china.jpg",
        "Chinese temple and trees",
        "CC BY 2.0, danielbuechele (Flickr)",
    ),
    OodPhoto("flower", "sklearn", "datasets/images/flower.jpg", "orange dahlia", "CC BY 2.0, vultilion (Flickr)"),
)


def package_file(photo: OodPhoto) -> Path:
    """The installed file, or a UserError naming the package to install."""
    spec = importlib.util.find_spec(photo.package)
    if spec is None or spec.origin is None:
        raise UserError(f"ood_data: package {photo.package!r} is not installed (pip install -r requirements.txt)")
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


def sources_markdown(photos: Sequence[OodPhoto], counts: dict[str, int]) -> str:
    lines = [
        "# Out-of-distribution photos (evaluation only)",
        "",
        "Written by `python -m src.ood_data` from files that pip packages ship; none shows an ant,",
        "bee, cat or dog. Each photo appears whole and as quadrant crops: the crops are not",
        f"independent samples. {len(photos)} distinct photos, {sum(counts.values())} images.",
        "",
        "| photo | package | file | content | licence | images |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {p.name} | {p.package} | {p.relpath} | {p.content} | {p.licence} | {counts[p.name]} |" for p in photos
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(__doc__, argv, writes={"out": "OOD set directory (images, manifest.csv, SOURCES.md)"})
    crops = load_params(args.params).unknown.ood_crops
    files = {p.name: package_file(p) for p in PHOTOS}  # all missing packages fail before writing
    counts: dict[str, int] = {}
    with atomic_dir(args.out) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for photo in PHOTOS:
            image = Image.fromarray(load_rgb(files[photo.name]))
            for region, box in regions(*image.size, crops=crops):
                rel = f"images/{photo.name}_{region}.png"
                image.crop(box).save(tmp / rel)
                rows.append(
                    {"path": str(args.out / rel), "photo": photo.name, "package": photo.package, "region": region}
                )
            counts[photo.name] = sum(r["photo"] == photo.name for r in rows)
        with (tmp / "manifest.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "SOURCES.md").write_text(sources_markdown(PHOTOS, counts))
    print(f"ood_data: {len(rows)} images from {len(PHOTOS)} distinct photos -> {args.out}")


def read_ood_manifest(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(paths, source photo per image, region per image) of the OOD set."""
    if not path.is_file():
        raise MissingFileError(f"OOD manifest not found: {path} (run: dvc repro ood_data)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "photo", "region"} <= set(rows[0]):
        raise InvalidFileError(f"{path}: expected columns path,photo,package,region and at least one row")
    for line, r in enumerate(rows, start=2):
        if not Path(r["path"]).is_file():
            raise InvalidFileError(f"{path}:{line}: image {r['path']!r} does not exist")
    return [r["path"] for r in rows], [r["photo"] for r in rows], [r["region"] for r in rows]


if __name__ == "__main__":
    run(main, "ood_data")
