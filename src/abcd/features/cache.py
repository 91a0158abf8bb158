"""Use featurize's cached features for a checkpoint only when they are provably its own.

The test stages need backbone features of the test and OOD images. With a
frozen backbone, `featurize` and `ood_featurize` have already computed them; recomputing would cost most of
a head-only experiment. They are used only if the cache was made by the very same
backbone weights (a sha256 of its state dict), preprocessing, precision and images;
anything else (a fine-tuned backbone, another checkpoint) runs the backbone instead
(``abcd.inference.torch_model.TorchModel.image_features``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from abcd.features.runtime import Runtime
from abcd.features.store import has_split, open_array, read_paths
from abcd.models.checkpoint import LoadedModel


def cached_features(
    features: Path, split: str, loaded: LoadedModel, paths: Sequence[str], runtime: Runtime
) -> tuple[np.ndarray | None, str]:
    """``features/<split>/`` (memory-mapped) if it is this checkpoint's own for exactly ``paths``, else None and why."""
    meta_path = features / "meta.json"
    if not (meta_path.is_file() and has_split(features, split)):
        return None, f"no cached {split} features in {features}"
    meta = json.loads(meta_path.read_text())
    expected = {
        "backbone": loaded.backbone,
        "backbone_sha256": loaded.backbone_sha256,
        "preprocess": loaded.preprocess.to_dict(),
        "precision": runtime.precision,
    }
    if "classes" in meta:  # featurize's labelled splits; the OOD set's features (ood_featurize) carry no labels
        expected["classes"] = loaded.classes
    for key, value in expected.items():
        if meta.get(key) != value:
            return None, f"{meta_path}: {key} differs from the checkpoint's (fine-tuned or other backbone)"
    if read_paths(features, split) != list(paths):
        return None, f"{features / split}: images differ from the ones asked for"
    return open_array(features, split, "features"), "cached features"
