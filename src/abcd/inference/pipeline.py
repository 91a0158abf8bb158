"""The inference path's runtime-free steps and the loop that drives a runtime; no torch, no albumentations.

    decode (:func:`decode_file`, :func:`decode_upload`: prepare's rules and the aspect limit)
    -> ``runtime.preprocess(rgb)`` -> ``runtime.run(batch)`` -> (probabilities, unknown scores)
    -> :func:`decide` (:func:`predict_batch`)

:func:`classify` runs it on decoded images for any :class:`ModelRuntime`: the checkpoint on
torch (``abcd.inference.torch_model.TorchRuntime``) or the export on onnxruntime
(``abcd.serving.onnx_model.OnnxRuntime``). ``abcd-predict`` calls it; ``abcd-serve`` preprocesses
each upload on its own and runs :func:`predict_batch` on batches gathered across requests.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import numpy as np

from abcd.core.preprocess import MAX_ASPECT
from abcd.data.images import load_rgb

UNKNOWN = "unknown"
T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """The unknown rule: ``name``'s score above ``threshold`` is unknown; ``temperature`` made the probabilities."""

    name: str
    threshold: float
    temperature: float


@dataclass(frozen=True)
class Prediction:
    """One image's answer: a class or :data:`UNKNOWN`, the calibrated class probabilities, the unknown score."""

    label: str
    probs: np.ndarray
    score: float

    @property
    def probability(self) -> float:
        """The top class's probability."""
        return float(self.probs.max())


class ModelRuntime(Protocol):
    """A model on one runtime, as the loop needs it."""

    classes: list[str]
    rule: Rule

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> (3, S, S) float32 model input."""

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) -> (calibrated probabilities (N, C), :attr:`rule`'s unknown scores (N,)), float64."""


def decode_upload(data: bytes | BinaryIO, max_pixels: int | None) -> np.ndarray:
    """Decode an upload (bytes or a file object) with prepare's checks: pixel and aspect limits, no
    animation, any mode to RGB."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return load_rgb(source, max_pixels=max_pixels, allow_animated=False, max_aspect=MAX_ASPECT)


def decode_file(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file for prediction: any mode to RGB, the first frame of an animation, the aspect limit."""
    return load_rgb(path, max_pixels=max_pixels, max_aspect=MAX_ASPECT)


def decide(probs: np.ndarray, scores: np.ndarray, threshold: float, classes: Sequence[str]) -> list[str]:
    """The top class, or UNKNOWN where the unknown score is above ``threshold``."""
    return [UNKNOWN if s > threshold else classes[int(np.argmax(p))] for p, s in zip(probs, scores)]


def batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def predict_batch(runtime: ModelRuntime, batch: np.ndarray) -> list[Prediction]:
    """One :class:`Prediction` per preprocessed image of ``batch`` (N, 3, S, S): one forward pass."""
    probs, scores = runtime.run(batch)
    labels = decide(probs, scores, runtime.rule.threshold, runtime.classes)
    return [Prediction(label, p, float(s)) for label, p, s in zip(labels, probs, scores)]


def classify(runtime: ModelRuntime, images: Sequence[np.ndarray], batch_size: int) -> list[Prediction]:
    """One :class:`Prediction` per decoded RGB image, in order, ``batch_size`` images per forward pass."""
    out: list[Prediction] = []
    for chunk in batches(images, batch_size):
        out.extend(predict_batch(runtime, np.stack([runtime.preprocess(rgb) for rgb in chunk])))
    return out
