"""The OOD set on disk (``data/ood``): its manifest's columns and halves, the checked reader, and the
marker that the OOD branch is off.

Here, not beside the catalogue (``abcd.oodset``), so that the stages that only read the set
(ood_featurize, ood_test) do not depend on which photos the catalogue lists or how they are found.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.core.fileio import atomic_dir
from abcd.data.images import read_table, reject_rows

MANIFEST_FIELDS = ("path", "photo", "package", "region", "half")
# selection: for choosing a detector and its settings; report: for the reported numbers only.
HALVES = ("selection", "report")
# What each stage of the OOD branch writes in place of its output when the branch is off (ood.evaluate,
# or no route to the photos): DVC needs every declared out, and the next stage needs the reason.
NOT_EVALUATED = "not_evaluated.json"
# ood_test's predictions, inside its output folder (a folder, so that the marker can take their place).
OOD_PREDICTIONS = "ood.csv"


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


def not_evaluated(folder: Path) -> str | None:
    """Why the OOD branch is off, if ``folder`` (an output of one of its stages) says so; else None."""
    marker = folder / NOT_EVALUATED
    if not marker.is_file():
        return None
    return str(json.loads(marker.read_text())["reason"])


def write_not_evaluated(folder: Path, reason: str) -> None:
    """Replace ``folder`` with the marker alone: the branch is off, and why."""
    with atomic_dir(folder) as tmp:
        (tmp / NOT_EVALUATED).write_text(json.dumps({"evaluated": False, "reason": reason}, indent=2) + "\n")
