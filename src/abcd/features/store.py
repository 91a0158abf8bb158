"""featurize's cache on disk: per split, a folder of ``.npy`` arrays that readers memory-map.

    <features>/<split>/features.npy       float32 (N, D), training split (N, views, D)
    <features>/<split>/eval_features.npy  float32 (N, D), training split only: the eval view
    <features>/<split>/labels.npy         int64 (N,), -1 where there is no label (OOD)
    <features>/<split>/paths.npy          str (N,), the image paths, in manifest order

Why not one ``.npz`` per split: ``np.load`` of an npz reads whole arrays into
memory, so train's and test's peak RSS grew with the number of photos. A plain ``.npy`` is
memory-mapped: pages are read when touched and can be dropped again by the OS. featurize
writes them batch by batch (:class:`SplitWriter`), so it never holds a split's features either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from abcd.core.errors import InvalidFileError, MissingFileError

ARRAYS = ("features", "eval_features", "labels", "paths")


class SplitWriter:
    """Fills one split's arrays in image order, a batch at a time, straight into memory-mapped files."""

    def __init__(self, out: Path, split: str, paths: Sequence[str], shape: tuple[int, ...], eval_view: bool) -> None:
        self.dir = out / split
        self.dir.mkdir(parents=True, exist_ok=True)
        n = len(paths)
        np.save(self.dir / "paths.npy", np.asarray(paths, dtype=str))
        self.features = open_memmap(self.dir / "features.npy", mode="w+", dtype=np.float32, shape=(n, *shape))
        self.eval = (
            open_memmap(self.dir / "eval_features.npy", mode="w+", dtype=np.float32, shape=(n, shape[-1]))
            if eval_view
            else None
        )
        self.labels = np.full(n, -1, dtype=np.int64)
        self.filled = 0

    def add(self, feats: np.ndarray, labels: np.ndarray, first: int | None = None) -> None:
        """One batch: (B, *shape) features, or (B, views + 1, D) with the eval view last when ``eval_view``.

        ``first``: its first row (default: right after the rows written so far); several ranks'
        batches arrive interleaved, each at its own rows."""
        start = self.filled if first is None else first
        end = start + len(feats)
        if self.eval is not None:
            self.features[start:end] = feats[:, :-1]
            self.eval[start:end] = feats[:, -1]
        else:
            self.features[start:end] = feats
        self.labels[start:end] = labels
        self.filled += len(feats)

    def close(self) -> None:
        if self.filled != len(self.labels):
            raise RuntimeError(f"{self.dir}: {self.filled} of {len(self.labels)} images written")
        np.save(self.dir / "labels.npy", self.labels)
        for arr in (self.features, self.eval):
            if arr is not None:
                arr.flush()
        self.features = self.eval = None  # closes the maps


def write_split(out: Path, split: str, features: np.ndarray, labels: np.ndarray, paths: Sequence[str], **extra) -> None:
    """Write in-memory arrays as one split (tests, benchmarks); ``extra``: e.g. eval_features."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"features": features, "labels": np.asarray(labels, dtype=np.int64), **extra}
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", np.asarray(arr, dtype=np.int64 if name == "labels" else np.float32))
    np.save(folder / "paths.npy", np.asarray(list(paths), dtype=str))


def open_array(features: Path, split: str, name: str) -> np.ndarray:
    """One array of one split, memory-mapped copy-on-write (writable for torch.from_numpy, the file untouched)."""
    path = features / split / f"{name}.npy"
    if not path.is_file():
        if not (features / split).is_dir():
            raise MissingFileError(f"features not found: {features / split} (run: dvc repro featurize)")
        raise InvalidFileError(f"{features / split}: no {name} (made by an older featurize): run dvc repro featurize")
    return np.load(path, mmap_mode=None if name == "paths" else "c")


def read_paths(features: Path, split: str) -> list[str]:
    """The image paths of one split, in the order of its feature rows."""
    return [str(p) for p in open_array(features, split, "paths")]


def has_split(features: Path, split: str) -> bool:
    return all((features / split / f"{name}.npy").is_file() for name in ("features", "labels", "paths"))


def load_split(features: Path, split: str) -> dict[str, np.ndarray]:
    """Every array of one split by name (as ``np.load`` of the old ``<split>.npz`` gave), memory-mapped."""
    if not has_split(features, split):
        raise MissingFileError(f"features not found: {features / split} (run: dvc repro featurize)")
    return {name: open_array(features, split, name) for name in ARRAYS if (features / split / f"{name}.npy").is_file()}
