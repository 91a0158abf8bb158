"""A checkpoint's predictions for a whole split, as the test stages make them: `test` for the test split,
`ood_test` for the OOD set.

Backbone features come from a featurize cache when they are provably this checkpoint's own
(src/abcd/features/cache.py), else from running the backbone on the images. From the features on,
each split takes the predict command's path (:meth:`abcd.inference.torch_model.TorchModel.scores`):
softmax of the head's logits divided by the checkpoint's temperature, and every detector's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from abcd.core.params import Params
from abcd.data.images import Sample
from abcd.evaluation.predictions import write_predictions
from abcd.features.cache import cached_features
from abcd.features.runtime import resolve_runtime
from abcd.inference.torch_model import TorchModel, fitted_detectors
from abcd.models.checkpoint import load_checkpoint


def load_model(path: Path, params: Params) -> TorchModel:
    """The checkpoint with every detector it stores (in stored order: a fusion after the components it reuses)."""
    # Lazy: with valid cached features the backbone is never built (a head-only experiment saves seconds).
    loaded = load_checkpoint(path, expected_classes=params.classes, lazy=True)
    return TorchModel(loaded, resolve_runtime(params.runtime), fitted_detectors(loaded.extra))


def split_features(
    model: TorchModel, split: str, samples: Sequence[Sample], cache: Path, batch_size: int
) -> np.ndarray:
    """Pooled backbone features (N, D) of ``samples``: from the cache when valid, else computed."""
    feats, why = cached_features(cache, split, model.loaded, [s.path for s in samples], model.device)
    if feats is not None:
        print(f"{split}: {len(samples)} images, cached features")
        return feats
    print(f"{split}: {why}; running the backbone on the images")
    return model.image_features(samples, batch_size, split)


def write_split_predictions(
    model: TorchModel, split: str, samples: Sequence[Sample], cache: Path, batch_size: int, out: Path
) -> None:
    """The predictions CSV of one split: probabilities and every detector's score per image."""
    probs, scores = model.scores(split_features(model, split, samples, cache, batch_size))
    write_predictions(out, [s.path for s in samples], [s.label for s in samples], probs, model.loaded.classes, scores)
