"""Images on disk: decoding with validation, manifests and the stratified split."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST_FIELDS = ("path", "label")


class ImageError(UserError, ValueError):
    """An image file that cannot be used, with the file named."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Fully decode an image file into an HxWx3 uint8 RGB array.

    ``Image.open`` only reads the header, so the pixel limit is checked before any
    memory is spent on a decompression bomb; ``convert`` then forces the whole decode,
    so a truncated JPEG raises here rather than half-way through training. Any mode
    (grayscale, palette, CMYK, alpha, 16-bit) ends as 8-bit RGB.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between 1x and 2x MAX_IMAGE_PIXELS; treat that as a bomb too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:
                    raise ImageError(
                        path, f"{img.width}x{img.height} pixels exceeds the limit of {max_pixels} (prepare.max_pixels)"
                    )
                return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except ImageError:
        raise
    except Exception as err:
        # Untrusted bytes: Pillow's plugins raise OSError for truncated data, DecompressionBombError
        # for oversized images, and struct/index/value errors for corrupt headers (found by fuzzing).
        # Any of them means "not a usable image"; say so with the file named.
        raise ImageError(path, f"cannot decode as an image ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class Sample:
    path: str
    label: str | None  # None: an image to classify, label unknown


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def scan_source(
    source: Path, classes: Sequence[str], max_pixels: int | None = None
) -> tuple[list[Sample], list[Skipped]]:
    """List every file under ``source/<class>/`` and keep the ones that decode.

    Nothing is dropped silently: unsupported extensions and undecodable files come
    back in the skipped list with their reason.
    """
    if not source.is_dir():
        raise FileNotFoundError(
            f"prepare.source: {source} is not a directory; expected a folder with one "
            f"sub-folder per class ({', '.join(classes)})"
        )
    missing = [c for c in classes if not (source / c).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"prepare.source: {source} has no folder for class(es) {', '.join(missing)}; "
            f"expected sub-folders {', '.join(classes)}"
        )
    kept: list[Sample] = []
    skipped: list[Skipped] = []
    for label in classes:
        for path in sorted(p for p in (source / label).rglob("*") if p.is_file()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(Skipped(str(path), f"unsupported extension {path.suffix or '(none)'}"))
                continue
            try:
                load_rgb(path, max_pixels)
            except ImageError as err:
                skipped.append(Skipped(str(path), err.reason))
                continue
            kept.append(Sample(str(path), label))
    return kept, skipped


def stratified_split(samples: Sequence[Sample], fractions: dict[str, float], seed: int) -> dict[str, list[Sample]]:
    """Split each class by ``fractions`` (name -> fraction), shuffled with ``seed``.

    The first split takes what rounding leaves, so every sample lands in exactly one
    split and per-class proportions match the fractions to within one image.
    """
    names = list(fractions)
    out: dict[str, list[Sample]] = {name: [] for name in names}
    by_label: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.label, s.path)):
        by_label.setdefault(s.label, []).append(s)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        items = by_label[label]
        order = rng.permutation(len(items))
        counts = {name: round(fractions[name] * len(items)) for name in names[1:]}
        counts[names[0]] = len(items) - sum(counts.values())
        start = 0
        for name in names:
            out[name].extend(items[i] for i in order[start : start + counts[name]])
            start += counts[name]
    return out


def write_manifest(path: Path, samples: Sequence[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_FIELDS)
        writer.writerows((s.path, s.label) for s in samples)


def read_manifest(path: Path, classes: Sequence[str], root: Path = Path(".")) -> list[Sample]:
    """Read a ``path,label`` manifest, checking its header, labels and that each file exists."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (run the prepare stage: dvc repro prepare)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
            raise ValueError(f"{path}: header must be {','.join(MANIFEST_FIELDS)}, got {reader.fieldnames}")
        samples = []
        for line, row in enumerate(reader, start=2):
            if row["label"] not in classes:
                raise ValueError(f"{path}:{line}: label {row['label']!r} is not one of {', '.join(classes)}")
            if not (root / row["path"]).is_file():
                raise ValueError(f"{path}:{line}: path {row['path']!r} does not exist (relative to {root.resolve()})")
            samples.append(Sample(row["path"], row["label"]))
    return samples


class ImageDataset:
    """Map-style dataset of (image tensor, label index) through an image transform.

    ``transform`` maps an RGB uint8 array to a tensor; with ``views > 1`` each item
    is ``views`` independent draws of it stacked, so each file is decoded only once.
    ``seed`` makes every draw a pure function of (seed, index, view), whatever the
    number of DataLoader workers.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        transform: Callable[[np.ndarray, int], object],
        views: int = 1,
        seed: int = 0,
        root: Path = Path("."),
    ) -> None:
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform
        self.views = views
        self.seed = seed
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        sample = self.samples[i]
        image = load_rgb(self.root / sample.path)
        base = (self.seed * 1_000_003 + i) * max(self.views, 1)
        tensors = [self.transform(image, base + v) for v in range(self.views)]
        x = tensors[0] if self.views == 1 else torch.stack(tensors)
        return x, -1 if sample.label is None else self.index[sample.label]
