"""The OOD set on disk (``data/ood``): its manifest's columns and halves, and the checked reader.

Here, not beside the catalogue (``abcd.oodset``), so that the stages that only read the set
(featurize, test, evaluate) do not depend on which photos the catalogue lists or how they are found.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.data.images import read_table, reject_rows

MANIFEST_FIELDS = ("path", "photo", "package", "region", "half")
# selection: for choosing a detector and its settings; report: for the reported numbers only.
HALVES = ("selection", "report")


class OodManifest(NamedTuple):
    """The OOD set, one entry per image: its path, source photo, region (``full`` or a quadrant) and half."""

    paths: list[str]
    photos: list[str]
    regions: list[str]
    halves: list[str]


def read_ood_manifest(path: Path) -> OodManifest:
    """The OOD set's manifest, checked: columns, every image present, a known half per row."""
    if not path.is_file():
        raise MissingFileError(f"OOD manifest not found: {path} (run: dvc repro ood_data)")
    frame = read_table(path)
    if frame.empty or not set(MANIFEST_FIELDS) <= set(frame.columns):
        raise InvalidFileError(
            f"{path}: expected columns {','.join(MANIFEST_FIELDS)} and at least one row (run: dvc repro ood_data)"
        )
    paths, halves = frame["path"], frame["half"]
    reject_rows(
        path,
        [
            (~paths.map(lambda p: Path(p).is_file()).to_numpy(), lambda i: f"image {paths[i]!r} does not exist"),
            (~halves.isin(HALVES).to_numpy(), lambda i: f"half {halves[i]!r} is not one of {', '.join(HALVES)}"),
        ],
    )
    return OodManifest(*(frame[k].tolist() for k in ("path", "photo", "region", "half")))
