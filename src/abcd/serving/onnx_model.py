"""The exported classifier (``models/model.onnx``) on onnxruntime: no torch, no albumentations.

The ONNX graph maps a batch of preprocessed images (N, 3, S, S) to calibrated class
probabilities and every fitted unknown detector's score; its metadata holds what the
checkpoint holds beside the weights (classes, preprocessing, temperature, the detectors'
thresholds, the method chosen in params). :func:`preprocess` is the checkpoint's
:class:`~abcd.core.preprocess.Preprocess` written with OpenCV, because albumentations (the
torch side's ``abcd.features.transforms.eval_transform``) imports torch; a unit test checks
the two give the same tensor. :class:`OnnxRuntime` is the export as a runtime of the
inference path (``abcd.inference.pipeline``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.core.preprocess import MAX_PIXEL_VALUE, Preprocess
from abcd.data.images import load_rgb
from abcd.inference.pipeline import Rule

ONNX_FORMAT = 1
# Metadata keys in the ONNX file (``metadata_props``); values are JSON.
META_KEY = "abcd"
PROBABILITIES = "probabilities"


def score_output(method: str) -> str:
    """The graph output that holds ``method``'s unknown score."""
    return f"score_{method}"


def preprocess(rgb: np.ndarray, pre: Preprocess) -> np.ndarray:
    """HxWx3 uint8 RGB -> (3, S, S) float32: resize the short side, centre-crop, normalise.

    The same steps and rounding as albumentations' SmallestMaxSize, CenterCrop and Normalize. The
    decoders refuse images past :data:`~abcd.core.preprocess.MAX_ASPECT`, whose resize would be unbounded.
    """
    h, w = rgb.shape[:2]
    scale = pre.resize_size / min(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=pre.cv2_interpolation)
    size = pre.input_size
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = rgb[top : top + size, left : left + size].astype(np.float32)
    mean = np.asarray(pre.mean, np.float32) * MAX_PIXEL_VALUE
    std = np.asarray(pre.std, np.float32) * MAX_PIXEL_VALUE
    return np.ascontiguousarray(((crop - mean) / std).transpose(2, 0, 1))


def make_session(model: str | bytes, threads: int = 0, spin: bool = True) -> Any:
    """An onnxruntime CPU session of the ONNX file at ``model`` (or its bytes); see :class:`OnnxClassifier`."""
    import onnxruntime as ort  # here, not at import: its import is a third of predict's cold start

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Errors only: on the int8 graph, onnxruntime warns once per unused initializer it drops (hundreds).
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An exported model loaded once; :meth:`run` classifies preprocessed batches."""

    def __init__(self, path: str | Path, threads: int = 0, spin: bool = True) -> None:
        """``threads``: onnxruntime's intra-op threads (0: one per core); ``spin``: whether they busy-wait
        between parallel sections, fastest when nothing else runs, wasted cores when other threads
        (the service's decoding) share them."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"ONNX model not found: {path} (made by: dvc repro)")
        try:
            self.session = make_session(str(path), threads, spin)
        except Exception as err:  # onnxruntime raises its own exception types for a bad file
            raise InvalidFileError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {err})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise InvalidFileError(
                f"{path}: no '{META_KEY}' metadata: not exported by this project (src/abcd/stages/export.py)"
            )
        meta = json.loads(props[META_KEY])
        if meta.get("format") != ONNX_FORMAT:
            raise InvalidFileError(f"{path}: export format {meta.get('format')}, this code reads {ONNX_FORMAT}")
        self.path = path
        self.meta: dict[str, Any] = meta
        self.classes: list[str] = list(meta["classes"])
        self.preprocessing = Preprocess.from_dict(meta["preprocess"])
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def detector(self, method: str | None = None, max_softmax_threshold: float | None = None) -> Rule:
        """The rule for ``method`` (default: the one chosen in params at export), as ``detector_from_extra``."""
        name = method or self.meta["method"]
        temperature = float(self.meta["temperature"])
        if name == "max_softmax":
            # The original rule: unknown when the max probability is below predict.threshold.
            limit = self.meta["max_softmax_threshold"] if max_softmax_threshold is None else max_softmax_threshold
            return Rule(name, 1.0 - float(limit), temperature)
        thresholds = self.meta["thresholds"]
        if name not in thresholds:
            raise InvalidFileError(
                f"{self.path}: no fitted unknown detector {name!r} (it has: {', '.join(thresholds) or 'none'})"
            )
        return Rule(name, float(thresholds[name]), temperature)

    def run(self, batch: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) float32 -> (probabilities (N, C), ``method``'s unknown scores (N,)), float64."""
        probs, scores = self.session.run(
            [PROBABILITIES, score_output(method)], {self.input_name: np.ascontiguousarray(batch, np.float32)}
        )
        return probs.astype(np.float64), scores.astype(np.float64)

    def exported_from(self, checkpoint: Path) -> bool:
        """Whether this model was exported from the file ``checkpoint`` (same sha256)."""
        return file_sha256(checkpoint) == self.meta["checkpoint"]["sha256"]

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess(rgb, self.preprocessing)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxRuntime:
    """An exported model as a :class:`abcd.inference.pipeline.ModelRuntime`, deciding with ``rule``."""

    def __init__(self, model: OnnxClassifier, rule: Rule) -> None:
        self.model, self.rule, self.classes = model, rule, model.classes

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return self.model.preprocess(rgb)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.run(batch, self.rule.name)


def image_batches(images: Sequence[Path], pre: Preprocess, batch_size: int = 16) -> Iterator[np.ndarray]:
    """``images`` decoded and preprocessed as predict does (``load_rgb``, :func:`preprocess`), in batches."""
    for i in range(0, len(images), batch_size):
        yield np.stack([preprocess(load_rgb(p), pre) for p in images[i : i + batch_size]])


def run_batches(session: Any, fetch: Sequence[str], feed: str, batches: Iterable[np.ndarray]) -> list[np.ndarray]:
    """``session``'s outputs ``fetch`` for every batch fed to input ``feed``, concatenated over the batches."""
    out: list[list[np.ndarray]] = [[] for _ in fetch]
    for batch in batches:
        for parts, values in zip(out, session.run(list(fetch), {feed: batch})):
            parts.append(values)
    return [np.concatenate(parts) if parts else np.zeros(0, np.float32) for parts in out]


def output_names(meta: Mapping[str, Any]) -> dict[str, str]:
    """The graph output of the probabilities (key :data:`PROBABILITIES`) and of every thresholded detector's
    score (key: its name), for a model with metadata ``meta``."""
    return {PROBABILITIES: PROBABILITIES, **{n: score_output(n) for n in meta["thresholds"]}}


def graph_outputs(model: OnnxClassifier, images: Sequence[Path], batch_size: int = 16) -> dict[str, np.ndarray]:
    """``model``'s probabilities (key :data:`PROBABILITIES`) and every thresholded detector's score (key: its
    name) for ``images``, decoded and preprocessed as predict does (``load_rgb``, ``model.preprocess``); float64."""
    names = output_names(model.meta)
    batches = image_batches(images, model.preprocessing, batch_size)
    values = run_batches(model.session, list(names.values()), model.input_name, batches)
    return {key: v.astype(np.float64) for key, v in zip(names, values)}
