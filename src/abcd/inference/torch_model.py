"""The checkpoint's model on torch, as the inference path's steps: preprocess, backbone, then features -> scores.

:meth:`TorchModel.scores` is the path after the backbone's forward pass (features -> head
logits -> calibrated probabilities and unknown scores). :class:`TorchRuntime` runs it behind
the backbone for ``abcd-predict``; the test stage enters it directly with the features of a
whole split, from featurize's cache or from :meth:`TorchModel.image_features`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from abcd.data.images import ImageDataset, Sample
from abcd.evaluation.calibration import calibrated_probs
from abcd.features.engine import extract_features, make_loader, prepare_model
from abcd.features.runtime import Runtime
from abcd.inference.pipeline import Rule
from abcd.models.checkpoint import LoadedModel
from abcd.ood.detectors import Detector, detector_from_extra, head_logits


def fitted_detectors(extra: Mapping[str, Any]) -> list[Detector]:
    """Every unknown detector stored in a checkpoint's ``extra``, in stored order (a fusion after its components)."""
    return [detector_from_extra(extra, name, None) for name in extra.get("unknown", {})]


def score_features(
    head: nn.Module, feats: np.ndarray, temperature: float, detectors: Sequence[Detector]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Calibrated class probabilities (softmax of logits / T) and each detector's unknown score."""
    logits = head_logits(head, feats)
    probs = calibrated_probs(logits, temperature)
    scores: dict[str, np.ndarray] = {}
    for detector in detectors:  # a fusion reuses the scores of its components computed before it
        scores[detector.name] = detector.score(feats, logits, scores)
    return probs, scores


class TorchModel:
    """A loaded checkpoint on a torch device with the detectors it scores; built (backbone, albumentations) on use."""

    def __init__(self, loaded: LoadedModel, device: Runtime, detectors: Sequence[Detector]) -> None:
        self.loaded, self.device, self.detectors = loaded, device, tuple(detectors)
        self.temperature = float(loaded.extra.get("temperature", 1.0))

    @functools.cached_property
    def transform(self):
        from abcd.features.transforms import eval_transform  # albumentations' import (0.6 s): only to decode images

        return eval_transform(self.loaded.preprocess)

    @functools.cached_property
    def backbone(self) -> nn.Module:
        # The backbone alone on the device: the head runs on CPU, on the features as numpy returns them.
        return prepare_model(self.loaded.model.backbone, self.device)

    def features(self, batches: Iterable, desc: str) -> np.ndarray:
        """Pooled backbone features (N, D) of preprocessed ``(images, labels)`` batches."""
        return extract_features(self.backbone, batches, self.device, desc)[0]

    def image_features(self, samples: Sequence[Sample], batch_size: int, desc: str) -> np.ndarray:
        """:meth:`features` of image files, decoded and preprocessed by the device's loader workers."""
        dataset = ImageDataset(samples, self.loaded.classes, self.transform)
        return self.features(make_loader(dataset, batch_size, self.device), desc)

    def scores(self, feats: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The path after the forward pass: see :func:`score_features`."""
        return score_features(self.loaded.head, feats, self.temperature, self.detectors)


class TorchRuntime:
    """The checkpoint as a :class:`abcd.inference.pipeline.ModelRuntime`, deciding with ``detector``."""

    def __init__(self, loaded: LoadedModel, device: Runtime, detector: Detector) -> None:
        self.model = TorchModel(loaded, device, [detector])
        self.classes = loaded.classes
        self.rule = Rule(detector.name, detector.threshold, self.model.temperature)
        self.model.backbone  # noqa: B018  built now: a checkpoint whose weights do not fit fails before any image

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return self.model.transform(rgb).numpy()

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(batch)
        feats = self.model.features([(x, np.zeros(len(x), dtype=np.int64))], desc="batch")
        probs, scores = self.model.scores(feats)
        return probs, scores[self.rule.name]
