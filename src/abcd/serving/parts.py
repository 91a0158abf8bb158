"""A model's outputs on many images as its two parts compute them: backbone features once, then the head.

Threshold calibration (export, quantize) and the int8 gates need a model's outputs on hundreds of images,
and the backbone is nearly all of that cost. With a frozen backbone the backbone part is the same graph in
every experiment (:func:`abcd.serving.graphs.graph_sha256`), so stages ``onnx_backbone`` and
``ood_onnx_features`` compute its features of the val, test and OOD images once, and a head-only
experiment runs only the head part on them. A cached array is used only for the very graph and image
list that made it; anything else (a fine-tuned backbone) computes the features here, by the same code.
``graph_outputs`` (the whole graph on the images) is the twin: a test holds the two equal.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from abcd.core.preprocess import Preprocess
from abcd.serving.graphs import FEATURES, IMAGE, backbone_part, graph_sha256, head_part, load
from abcd.serving.onnx_model import OnnxClassifier, image_batches, make_session, output_names, run_batches

CACHE_META = "meta.json"


class Part:
    """One part of an exported graph (:func:`abcd.serving.graphs.backbone_part`, ``head_part``) on onnxruntime."""

    def __init__(self, proto: ModelProto) -> None:
        self.proto = proto
        self.sha256 = graph_sha256(proto)

    @functools.cached_property
    def session(self) -> Any:
        # On first use: where the cached features are this part's own, its backbone session is never needed.
        return make_session(self.proto.SerializeToString())


def backbone_features(backbone: Part, images: Sequence[Path], pre: Preprocess, batch_size: int = 16) -> np.ndarray:
    """(N, D) float32: ``images`` decoded and preprocessed as predict does, through the backbone part."""
    (features,) = run_batches(backbone.session, [FEATURES], IMAGE, image_batches(images, pre, batch_size))
    return features


def head_outputs(head: Part, meta: Mapping[str, Any], features: np.ndarray, batch_size: int = 256) -> dict:
    """The head part's outputs from ``features``, keyed as ``graph_outputs`` keys them (float64)."""
    names = output_names(meta)
    batches = (np.ascontiguousarray(features[i : i + batch_size]) for i in range(0, len(features), batch_size))
    values = run_batches(head.session, list(names.values()), FEATURES, batches)
    return {key: v.astype(np.float64) for key, v in zip(names, values)}


def write_cache(
    folder: Path, backbones: Mapping[str, Part], splits: Mapping[str, Sequence[Path]], pre: Preprocess
) -> dict[str, Any]:
    """Every backbone's features of every split's images into the empty directory ``folder``; its record."""
    record = {
        "graphs": {name: part.sha256 for name, part in backbones.items()},
        "splits": {split: [str(p) for p in paths] for split, paths in splits.items()},
    }
    for name, part in backbones.items():
        (folder / name).mkdir(parents=True)
        for split, paths in splits.items():
            np.save(folder / name / f"{split}.npy", backbone_features(part, paths, pre))
    (folder / CACHE_META).write_text(json.dumps(record, indent=2) + "\n")
    return record


def cached(folder: Path | None, backbone: Part, split: str, images: Sequence[Path]) -> tuple[np.ndarray | None, str]:
    """``folder``'s features of ``images`` if this very backbone part made them, else None; and why."""
    if folder is None or not (folder / CACHE_META).is_file():
        return None, f"no feature cache in {folder}"
    record = json.loads((folder / CACHE_META).read_text())
    name = next((n for n, sha in record["graphs"].items() if sha == backbone.sha256), None)
    if name is None:
        return None, f"{folder} holds other backbones' features (fine-tuned, or another backbone)"
    if record["splits"].get(split) != [str(p) for p in images]:
        return None, f"{folder}: no {split} features of these images"
    return np.load(folder / name / f"{split}.npy"), f"cached in {folder / name}"


def features(
    backbone: Part, images: Sequence[Path], pre: Preprocess, split: str, cache: Path | None
) -> tuple[np.ndarray, str]:
    """The backbone part's features of ``images``: from ``cache`` when it holds them (:func:`cached`), else computed."""
    found, why = cached(cache, backbone, split, images)
    if found is not None:
        return found, why
    return backbone_features(backbone, images, pre), f"computed ({why})"


class ModelParts:
    """An exported model file's two parts, for its outputs on many images (:meth:`outputs`)."""

    def __init__(self, model: OnnxClassifier) -> None:
        proto = load(model.path)
        self.model, self.backbone, self.head = model, Part(backbone_part(proto)), Part(head_part(proto))

    def outputs(self, images: Sequence[Path], split: str, cache: Path | None) -> tuple[dict, str]:
        """The model's outputs on ``images`` (``graph_outputs``' keys), and where their features came from."""
        found, why = features(self.backbone, images, self.model.preprocessing, split, cache)
        return head_outputs(self.head, self.model.meta, found), why
