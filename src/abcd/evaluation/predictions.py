"""The predictions CSV: ``image,label,prediction,prob_<class>...[,score_<method>...]`` (no torch needed to read it).

``label`` is empty for images of no known class (the OOD set). The optional ``score_``
columns are unknown-image scores ("higher = more likely unknown"), one per detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.core.fileio import atomic_file
from abcd.data.images import read_table, reject_rows

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
    frame = pd.DataFrame(
        {
            "image": list(images),
            "label": [label or "" for label in labels],
            "prediction": [classes[i] for i in np.argmax(probs, axis=1)],
            # Formatted here, per kind: 6 significant digits for probabilities, 8 for scores.
            **{PROB_PREFIX + c: [f"{v:.6g}" for v in probs[:, j]] for j, c in enumerate(classes)},
            **{SCORE_PREFIX + name: [f"{v:.8g}" for v in s] for name, s in scores.items()},
        },
        columns=columns(classes, list(scores)),
    )
    with atomic_file(path) as tmp:
        # CRLF, the csv module's default line end: the committed CSVs keep their bytes.
        frame.to_csv(tmp, index=False, lineterminator="\r\n")


def read_predictions(path: Path, labelled: bool = True) -> Predictions:
    """Read and validate a predictions CSV; errors name the file, line and field.

    With ``labelled`` every label must be a class; otherwise (the OOD set) every label must be empty.
    """
    if not path.is_file():
        raise MissingFileError(f"predictions CSV not found: {path} (run: dvc repro test)")
    frame = read_table(path)
    header = list(frame.columns)
    if tuple(header[:3]) != BASE_COLUMNS or len(header) < 5:
        raise InvalidFileError(
            f"{path}:1: header must be {','.join(BASE_COLUMNS)},{PROB_PREFIX}<class>... (two classes or more), "
            f"got {header}"
        )
    n_probs = sum(1 for h in header[3:] if h.startswith(PROB_PREFIX))
    prob_columns, score_columns = header[3 : 3 + n_probs], header[3 + n_probs :]
    bad = [h for h in prob_columns if not h.startswith(PROB_PREFIX)]
    bad += [h for h in score_columns if not h.startswith(SCORE_PREFIX)]
    if bad or n_probs < 2:
        raise InvalidFileError(
            f"{path}:1: after {','.join(BASE_COLUMNS)} come two or more '{PROB_PREFIX}<class>' columns, "
            f"then only '{SCORE_PREFIX}<method>' columns; got {header}"
        )
    if frame.empty:
        raise InvalidFileError(f"{path}: no prediction rows")
    classes = [h[len(PROB_PREFIX) :] for h in prob_columns]
    text = frame.to_numpy()
    numbers = frame[prob_columns + score_columns].apply(pd.to_numeric, errors="coerce").to_numpy()
    probs = numbers[:, :n_probs]
    first_nan = np.argmax(np.isnan(numbers), axis=1)  # per row: the first field that is not a number
    if labelled:
        bad_label, label_rule = ~frame["label"].isin(classes).to_numpy(), f"is not one of {', '.join(classes)}"
    else:
        bad_label, label_rule = frame["label"].to_numpy() != "", "in a file of unlabelled (unknown) images"
    reject_rows(
        path,
        [
            (
                ~frame["prediction"].isin(classes).to_numpy(),
                lambda i: f"prediction {text[i, 2]!r} is not one of {', '.join(classes)}",
            ),
            (bad_label, lambda i: f"label {text[i, 1]!r} {label_rule}"),
            (
                np.isnan(numbers).any(axis=1),
                lambda i: f"{header[3 + first_nan[i]]} is {text[i, 3 + first_nan[i]]!r}: "
                "probabilities and scores must be numbers",
            ),
            (
                ((probs < 0) | (probs > 1)).any(axis=1) | (np.abs(probs.sum(axis=1) - 1.0) > 1e-3),
                lambda i: f"probabilities must lie in [0, 1] and sum to 1, got {probs[i].tolist()}",
            ),
        ],
    )
    index = {c: i for i, c in enumerate(classes)}
    return Predictions(
        images=frame["image"].tolist(),
        classes=classes,
        labels=frame["label"].map(index).to_numpy(np.int64) if labelled else np.full(len(frame), -1),
        predicted=frame["prediction"].map(index).to_numpy(np.int64),
        probs=probs.astype(np.float64),
        scores={h[len(SCORE_PREFIX) :]: numbers[:, n_probs + j] for j, h in enumerate(score_columns)},
    )
