"""The predictions CSV: ``image,label,prediction,prob_<class>...`` (no torch needed to read it)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BASE_COLUMNS = ("image", "label", "prediction")
PROB_PREFIX = "prob_"


def columns(classes: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *(PROB_PREFIX + c for c in classes)]


@dataclass
class Predictions:
    """Parsed predictions: ``labels``/``predicted`` are class indices into ``classes``."""

    images: list[str]
    classes: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray


def write_predictions(
    path: Path, images: Sequence[str], labels: Sequence[str], probs: np.ndarray, classes: Sequence[str]
) -> None:
    """Write one row per image; the prediction is the arg-max class. Atomic (temp + rename)."""
    if probs.shape != (len(images), len(classes)):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(images)} images and {len(classes)} classes")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns(classes))
        for image, label, p in zip(images, labels, probs):
            writer.writerow([image, label, classes[int(np.argmax(p))], *(f"{v:.6g}" for v in p)])
    os.replace(tmp, path)


def read_predictions(path: Path) -> Predictions:
    """Read and validate a predictions CSV; errors name the file, line and field."""
    if not path.is_file():
        raise FileNotFoundError(f"predictions CSV not found: {path} (run: dvc repro test)")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or tuple(header[:3]) != BASE_COLUMNS or len(header) < 5:
            raise ValueError(
                f"{path}:1: header must be {','.join(BASE_COLUMNS)},{PROB_PREFIX}<class>... (two classes or more), "
                f"got {header}"
            )
        bad = [h for h in header[3:] if not h.startswith(PROB_PREFIX)]
        if bad:
            raise ValueError(f"{path}:1: probability columns must start with '{PROB_PREFIX}', got {bad}")
        classes = [h[len(PROB_PREFIX) :] for h in header[3:]]
        index = {c: i for i, c in enumerate(classes)}
        images, labels, predicted, probs = [], [], [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            for field, value in (("label", row[1]), ("prediction", row[2])):
                if value not in index:
                    raise ValueError(f"{path}:{line}: {field} {value!r} is not one of {', '.join(classes)}")
            try:
                p = [float(v) for v in row[3:]]
            except ValueError:
                raise ValueError(f"{path}:{line}: probabilities must be numbers, got {row[3:]}") from None
            if not all(0.0 <= v <= 1.0 for v in p) or abs(sum(p) - 1.0) > 1e-3:
                raise ValueError(f"{path}:{line}: probabilities must lie in [0, 1] and sum to 1, got {p}")
            images.append(row[0])
            labels.append(index[row[1]])
            predicted.append(index[row[2]])
            probs.append(p)
    if not images:
        raise ValueError(f"{path}: no prediction rows")
    return Predictions(
        images=images,
        classes=classes,
        labels=np.asarray(labels),
        predicted=np.asarray(predicted),
        probs=np.asarray(probs, dtype=np.float64),
    )
