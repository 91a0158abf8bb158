"""The predictions CSV: ``image,label,prediction,prob_<class>...[,score_<method>...]`` (no torch needed to read it).

``label`` is empty for images of no known class (the OOD set). The optional ``score_``
columns are unknown-image scores ("higher = more likely unknown"), one per detector.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.errors import InvalidFileError, MissingFileError
from src.fileio import atomic_file

BASE_COLUMNS = ("image", "label", "prediction")
PROB_PREFIX = "prob_"
SCORE_PREFIX = "score_"


def columns(classes: Sequence[str], scores: Sequence[str] = ()) -> list[str]:
    return [*BASE_COLUMNS, *(PROB_PREFIX + c for c in classes), *(SCORE_PREFIX + s for s in scores)]


@dataclass
class Predictions:
    """Parsed predictions: ``labels``/``predicted`` are class indices into ``classes`` (label -1: none)."""

    images: list[str]
    classes: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def write_predictions(
    path: Path,
    images: Sequence[str],
    labels: Sequence[str | None],
    probs: np.ndarray,
    classes: Sequence[str],
    scores: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write one row per image; the prediction is the arg-max class. Atomic (temp + rename)."""
    if probs.shape != (len(images), len(classes)):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(images)} images and {len(classes)} classes")
    scores = dict(scores or {})
    for name, s in scores.items():
        if np.shape(s) != (len(images),):
            raise ValueError(f"score {name!r} of shape {np.shape(s)} for {len(images)} images")
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns(classes, list(scores)))
        for i, (image, label, p) in enumerate(zip(images, labels, probs)):
            row = [image, label or "", classes[int(np.argmax(p))], *(f"{v:.6g}" for v in p)]
            writer.writerow(row + [f"{s[i]:.8g}" for s in scores.values()])


def read_predictions(path: Path, labelled: bool = True) -> Predictions:
    """Read and validate a predictions CSV; errors name the file, line and field.

    With ``labelled`` every label must be a class; otherwise (the OOD set) every label must be empty.
    """
    if not path.is_file():
        raise MissingFileError(f"predictions CSV not found: {path} (run: dvc repro test)")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or tuple(header[:3]) != BASE_COLUMNS or len(header) < 5:
            raise InvalidFileError(
                f"{path}:1: header must be {','.join(BASE_COLUMNS)},{PROB_PREFIX}<class>... (two classes or more), "
                f"got {header}"
            )
        n_probs = sum(1 for h in header[3:] if h.startswith(PROB_PREFIX))
        extra = header[3 + n_probs :]
        bad = [h for h in header[3 : 3 + n_probs] if not h.startswith(PROB_PREFIX)]
        bad += [h for h in extra if not h.startswith(SCORE_PREFIX)]
        if bad or n_probs < 2:
            raise InvalidFileError(
                f"{path}:1: after {','.join(BASE_COLUMNS)} come two or more '{PROB_PREFIX}<class>' columns, "
                f"then only '{SCORE_PREFIX}<method>' columns; got {header}"
            )
        classes = [h[len(PROB_PREFIX) :] for h in header[3 : 3 + n_probs]]
        index = {c: i for i, c in enumerate(classes)}
        images, labels, predicted, probs, scores = [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise InvalidFileError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            if row[2] not in index:
                raise InvalidFileError(f"{path}:{line}: prediction {row[2]!r} is not one of {', '.join(classes)}")
            if labelled and row[1] not in index:
                raise InvalidFileError(f"{path}:{line}: label {row[1]!r} is not one of {', '.join(classes)}")
            if not labelled and row[1]:
                raise InvalidFileError(f"{path}:{line}: label {row[1]!r} in a file of unlabelled (unknown) images")
            try:
                p = [float(v) for v in row[3 : 3 + n_probs]]
                s = [float(v) for v in row[3 + n_probs :]]
            except ValueError:
                raise InvalidFileError(
                    f"{path}:{line}: probabilities and scores must be numbers, got {row[3:]}"
                ) from None
            if not all(0.0 <= v <= 1.0 for v in p) or abs(sum(p) - 1.0) > 1e-3:
                raise InvalidFileError(f"{path}:{line}: probabilities must lie in [0, 1] and sum to 1, got {p}")
            images.append(row[0])
            labels.append(index[row[1]] if labelled else -1)
            predicted.append(index[row[2]])
            probs.append(p)
            scores.append(s)
    if not images:
        raise InvalidFileError(f"{path}: no prediction rows")
    return Predictions(
        images=images,
        classes=classes,
        labels=np.asarray(labels),
        predicted=np.asarray(predicted),
        probs=np.asarray(probs, dtype=np.float64),
        scores={h[len(SCORE_PREFIX) :]: np.asarray([s[j] for s in scores]) for j, h in enumerate(extra)},
    )
