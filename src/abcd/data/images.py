"""Images on disk: decoding with validation, manifests and the stratified split."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from abcd.core.errors import InvalidFileError, MissingFileError, UserError
from abcd.core.preprocess import aspect_problem

# pandas is imported by the table functions alone: decoding (predict, serve) must work in the
# serve-only install, which has no pandas (pyproject.toml: the serve extra).
if TYPE_CHECKING:
    import pandas as pd

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST_FIELDS = ("path", "label")


class ImageError(UserError, ValueError):
    """An image file that cannot be used, with the file named.

    ``kind`` is a short category for the data report: undecodable, too_large, animated, missing.
    """

    def __init__(self, path: str | Path, reason: str, kind: str = "undecodable") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind


# 16-bit and 32-bit integer modes: Pillow's own convert("RGB") clips them at 255 instead of scaling.
_WIDE_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 16}


def load_thumbnail(path: str | Path, size: int) -> np.ndarray:
    """A ``size`` x ``size`` centre crop of an image, for illustration grids.

    JPEGs are decoded at a reduced scale (``draft``), several times faster than a full
    decode. A file that cannot be read gives a grey tile, named on stderr: a picture must
    not fail a stage, nor hide that a file went missing.
    """
    try:
        with Image.open(path) as img:
            img.draft("RGB", (2 * size, 2 * size))
            rgb = Image.fromarray(to_rgb(img))
    except Exception as err:  # any unreadable file: the tile shows it, the message names it
        print(
            f"{path}: cannot be read for an image grid ({type(err).__name__}); a grey tile stands in", file=sys.stderr
        )
        return np.full((size, size, 3), 128, np.uint8)
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    return np.asarray(rgb.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side)))


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode as HxWx3 uint8 RGB, the same way every time.

    Transparency is composited on white (not dropped, which would expose whatever colour the
    transparent pixels happen to hold); 16-bit grey is scaled to 8 bits rather than clipped;
    CMYK, palette, grayscale and the rest go through Pillow's conversion.
    """
    if img.mode in _WIDE_MODES:
        wide = np.asarray(img).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_rgb(
    path: str | Path | BinaryIO,
    max_pixels: int | None = None,
    allow_animated: bool = True,
    max_aspect: float | None = None,
) -> np.ndarray:
    """Fully decode an image file into an HxWx3 uint8 RGB array.

    ``Image.open`` only reads the header, so the pixel limit (and, given ``max_aspect``, the
    aspect-ratio limit of :func:`abcd.core.preprocess.aspect_problem`) is checked before any
    memory is spent on a decompression bomb; the conversion then forces the whole decode,
    so a truncated JPEG raises here rather than half-way through training. Any mode
    (grayscale, palette, CMYK, alpha, 16-bit) ends as 8-bit RGB (see :func:`to_rgb`).
    An animated file (GIF, WebP, APNG) is refused when ``allow_animated`` is false: which
    frame is "the" picture is not well defined; otherwise its first frame is used.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between 1x and 2x MAX_IMAGE_PIXELS; treat that as a bomb too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:
                    raise ImageError(
                        path,
                        f"{img.width}x{img.height} pixels exceeds the limit of {max_pixels} (prepare.max_pixels)",
                        "too_large",
                    )
                thin = None if max_aspect is None else aspect_problem(img.width, img.height, max_aspect)
                if thin is not None:
                    raise ImageError(path, thin, "too_large")
                frames = getattr(img, "n_frames", 1)
                if not allow_animated and frames > 1:
                    raise ImageError(path, f"animated image ({frames} frames)", "animated")
                return to_rgb(img)
    except FileNotFoundError:
        raise ImageError(path, "file not found", "missing") from None
    except ImageError:
        raise
    except Exception as err:
        # Untrusted bytes: Pillow's plugins raise OSError for truncated data, DecompressionBombError
        # for oversized images, and struct/index/value errors for corrupt headers (found by fuzzing).
        # Any of them means "not a usable image"; say so with the file named.
        bomb = isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning))
        kind = "too_large" if bomb else "undecodable"
        raise ImageError(path, f"cannot decode as an image ({type(err).__name__}: {err})", kind) from None


def has_image_extension(path: str | Path) -> bool:
    """Case-insensitive: ``.JPG`` and ``.jpeg`` count."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    path: str
    label: str | None  # None: an image to classify, label unknown


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    kind: str = "undecodable"  # category for the data report's "skipped by reason" counts


class SplitError(UserError, ValueError):
    """A class with too few images for the requested split."""


def split_counts(n: int, sizes: dict[str, float | str], label: str = "") -> dict[str, int]:
    """How many of a class's ``n`` images go to each split.

    ``sizes`` maps split name -> a fraction in (0, 1) (the first split takes what rounding
    leaves), or -> a count >= 1 per class, with ``"rest"`` for "whatever is left".
    Every split must get at least one image of every class.
    """
    names = list(sizes)
    spec = "/".join(f"{k} {v:g}" if not isinstance(v, str) else f"{k} {v}" for k, v in sizes.items())
    if all(not isinstance(v, str) and v < 1 for v in sizes.values()):
        counts = {name: round(sizes[name] * n) for name in names[1:]}
        counts = {names[0]: n - sum(counts.values()), **counts}
    else:
        fixed = {k: int(v) for k, v in sizes.items() if not isinstance(v, str)}
        need = sum(fixed.values()) + sum(isinstance(v, str) for v in sizes.values())
        if n < need:
            raise SplitError(
                f"class {label or '?'} has {n} usable images; prepare.split ({spec}) needs at least {need} per class"
            )
        counts = {k: fixed.get(k, n - sum(fixed.values())) for k in names}
    empty = [k for k, c in counts.items() if c < 1]
    if empty:
        raise SplitError(
            f"class {label or '?'} has {n} usable images: too few for prepare.split ({spec}), which leaves "
            f"{', '.join(empty)} with none; add images or change prepare.split"
        )
    return counts


def stratified_split(samples: Sequence[Sample], sizes: dict[str, float | str], seed: int) -> dict[str, list[Sample]]:
    """Split each class by ``sizes`` (see :func:`split_counts`), shuffled with ``seed``.

    Samples are sorted first, so the result depends only on the set of samples and the seed;
    every sample lands in at most one split (exactly one with fractions or ``rest``).
    """
    names = list(sizes)
    out: dict[str, list[Sample]] = {name: [] for name in names}
    by_label: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.label, s.path)):
        by_label.setdefault(s.label, []).append(s)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        items = by_label[label]
        order = rng.permutation(len(items))
        counts = split_counts(len(items), sizes, label)
        start = 0
        for name in names:
            out[name].extend(items[i] for i in order[start : start + counts[name]])
            start += counts[name]
    return out


def read_table(path: Path) -> pd.DataFrame:
    """A CSV file as a frame of strings, exactly as written (no NA guessing): row ``i`` is line ``i + 2``.

    Blank lines are kept as rows of empty strings, so row numbers stay line numbers (a quoted
    field spanning lines counts as one, as for ``csv.reader``). A row with too many fields is
    an :class:`InvalidFileError` naming its line; a short one reads as empty trailing fields,
    which the caller's checks of the values then report. A file with no header reads as no columns.
    """
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if found is None:
            raise InvalidFileError(f"{path}: not a readable CSV file ({str(err).strip()})") from None
        expected, line, got = found.groups()
        raise InvalidFileError(f"{path}:{line}: expected {expected} fields, got {got}") from None


def reject_rows(path: Path, checks: Sequence[tuple[np.ndarray, Callable[[int], str]]]) -> None:
    """Raise ``path:line: message`` for the first row of a :func:`read_table` frame that fails a check.

    Each check is (a boolean mask of failing rows, the message for row ``i``); on the first
    failing row, the first check that fails it speaks, as a row-by-row reader would.
    """
    first = min((int(np.argmax(bad)) for bad, _ in checks if np.any(bad)), default=None)
    if first is not None:
        message = next(describe for bad, describe in checks if bad[first])(first)
        raise InvalidFileError(f"{path}:{first + 2}: {message}")


def write_manifest(path: Path, samples: Sequence[Sample]) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([(s.path, s.label) for s in samples], columns=list(MANIFEST_FIELDS))
    # CRLF, the csv module's default line end: the committed CSVs keep their bytes.
    frame.to_csv(path, index=False, lineterminator="\r\n")


def read_manifest(path: Path, classes: Sequence[str], root: Path = Path(".")) -> list[Sample]:
    """Read a ``path,label`` manifest, checking its header, labels and that each file exists."""
    if not path.is_file():
        raise MissingFileError(f"manifest not found: {path} (run the prepare stage: dvc repro prepare)")
    frame = read_table(path)
    if tuple(frame.columns) != MANIFEST_FIELDS:
        raise InvalidFileError(f"{path}: header must be {','.join(MANIFEST_FIELDS)}, got {list(frame.columns)}")
    paths, labels = frame["path"].tolist(), frame["label"].tolist()
    reject_rows(
        path,
        [
            (
                ~frame["label"].isin(classes).to_numpy(),
                lambda i: f"label {labels[i]!r} is not one of {', '.join(classes)}",
            ),
            (
                np.array([not (root / p).is_file() for p in paths], bool),
                lambda i: f"path {paths[i]!r} does not exist (relative to {root.resolve()})",
            ),
        ],
    )
    return [Sample(p, label) for p, label in zip(paths, labels)]


class ImageDataset:
    """Map-style dataset of (image tensor, label index) through an image transform.

    ``transform`` maps an RGB uint8 array to a tensor; with ``views > 1`` each item
    is ``views`` independent draws of it stacked, so each file is decoded only once.
    ``seed`` makes every draw a pure function of (seed, index, view), whatever the
    number of DataLoader workers. ``extra``, a deterministic transform (the eval view),
    is applied to the same decode and stacked last, after the ``views`` draws.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        transform: Callable[[np.ndarray, int], object],
        views: int = 1,
        seed: int = 0,
        root: Path = Path("."),
        extra: Callable[[np.ndarray, int], object] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform
        self.views = views
        self.seed = seed
        self.root = root
        self.extra = extra

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        sample = self.samples[i]
        image = load_rgb(self.root / sample.path)
        base = (self.seed * 1_000_003 + i) * max(self.views, 1)
        tensors = [self.transform(image, base + v) for v in range(self.views)]
        if self.extra is not None:
            tensors.append(self.extra(image, 0))
        x = tensors[0] if len(tensors) == 1 else torch.stack(tensors)
        return x, -1 if sample.label is None else self.index[sample.label]
