"""The checkpoint as one ONNX graph (backbone, head, temperature, every exported detector's score).

With the metadata predict and serve read beside the graph.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import ModelProto
from torch import nn

from abcd.core.errors import InvalidFileError
from abcd.core.fileio import atomic_file
from abcd.core.registry import UNKNOWN_METHODS
from abcd.models.checkpoint import CHECKPOINT_FORMAT, LoadedModel
from abcd.ood.base import Fusion, Method, threshold_for_false_reject
from abcd.ood.detectors import Detector, detector_from_extra
from abcd.serving.backbone_store import feature_cache, stored_fp32
from abcd.serving.graphs import FEATURES, IMAGE, backbone_part, compose_parts, set_metadata
from abcd.serving.onnx_model import ONNX_FORMAT, PROBABILITIES, OnnxClassifier, file_sha256, score_output
from abcd.serving.parts import Part, features, head_outputs

OPSET = 18


PARITY_ATOL = 1e-4  # max abs difference of probabilities, ONNX against torch fp32 (README: Deploy)


class InferenceGraph(nn.Module):
    """Backbone, head, temperature and the unknown scores, as one traceable module.

    Each score is its detector's own torch function (``abcd.ood.methods``), run in float32 on
    the detector's state as ``abcd.ood.detectors`` prepares it: the states become the graph's
    constants when traced.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model.float().eval()
        self.temperature = float(loaded.extra.get("temperature", 1.0))
        self.methods = exported_methods(_fitted(loaded))
        self.detectors = [_detector(loaded.extra, name) for name in self.methods]
        for detector in self.detectors:
            detector.ready  # noqa: B018 (prepared now, not while traced: ONNX has no operator for a factorisation)
        # Eval mode for the whole tree, this module included: torch.onnx.export restores the mode it
        # found, and a module left in training mode would switch the head's dropout back on afterwards.
        self.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.from_features(self.model.backbone(image).float())

    def from_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(probabilities, every method's score) from the backbone's (N, D) fp32 features."""
        logits = self.model.head(feats)
        probs = torch.softmax(logits / self.temperature, dim=1)
        scores: dict[str, torch.Tensor] = {}
        for detector in self.detectors:  # a fusion comes after its components and reuses their scores
            scores[detector.name] = detector.score_tensor(feats, logits, scores)
        return (probs, *scores.values())


def _detector(extra: Mapping[str, Any], name: str) -> Detector:
    """``name``'s detector in float32; one that reads only the logits needs nothing fitted."""
    method = UNKNOWN_METHODS.get(name)
    if name not in extra.get("unknown", {}) and isinstance(method, Method) and method.stateless:
        return Detector(name, method, {}, math.nan, float(extra.get("temperature", 1.0)), dtype=torch.float32)
    return detector_from_extra(extra, name, None, torch.float32)


def exported_methods(fitted: Mapping[str, Any]) -> list[str]:
    """The methods the graph computes for a checkpoint's fitted detectors, in output order.

    Every registered one the checkpoint has fitted, and those that need no fit; a fusion only
    when the graph computes each component its stored state names, after them.
    """
    names = [n for n, m in UNKNOWN_METHODS.items() if isinstance(m, Method) and (n in fitted or m.stateless)]
    fusions = [n for n, m in UNKNOWN_METHODS.items() if isinstance(m, Fusion) and n in fitted]
    return names + [n for n in fusions if all(part in names for part in fitted[n]["state"])]


def _fitted(loaded: LoadedModel) -> Mapping[str, Any]:
    return loaded.extra.get("unknown", {})


def export_metadata(loaded: LoadedModel, checkpoint: Path, method: str, max_softmax_threshold: float) -> dict:
    """What predict and serve need beside the graph (JSON-able)."""
    exported = exported_methods(_fitted(loaded))
    fitted = {k: v for k, v in _fitted(loaded).items() if k in exported}
    if method != "max_softmax" and method not in fitted:
        raise InvalidFileError(
            f"{checkpoint}: unknown.method is {method!r}, which the export does not compute (it exports: "
            f"{', '.join(dict.fromkeys(['max_softmax', *fitted]))}); choose one of those, or retrain (dvc repro train)"
        )
    return {
        "format": ONNX_FORMAT,
        "classes": loaded.classes,
        "backbone": loaded.backbone,
        "preprocess": loaded.preprocess.to_dict(),
        "temperature": float(loaded.extra.get("temperature", 1.0)),
        "thresholds": {name: float(v["threshold"]) for name, v in fitted.items()},
        "method": method,
        "max_softmax_threshold": float(max_softmax_threshold),
        # predict's defaults where no params.yaml is around (src/abcd/serving/settings.py); the torch
        # runtime's device settings do not apply to onnxruntime.
        "predict": _predict_defaults(loaded, method, max_softmax_threshold),
        "checkpoint": {"sha256": file_sha256(checkpoint), "format": CHECKPOINT_FORMAT},
    }


def _predict_defaults(loaded: LoadedModel, method: str, max_softmax_threshold: float) -> dict | None:
    stored = loaded.extra.get("predict")
    if not isinstance(stored, Mapping):
        return None  # a checkpoint from before train stored them: predict then asks for --params
    return {**stored, "method": method, "rule_threshold": float(max_softmax_threshold), "runtime": None}


class BackboneGraph(nn.Module):
    """The backbone alone, image batch -> fp32 features: the graph's backbone part, traced on its own."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.float().eval()  # its nodes are named "/backbone/..." as in InferenceGraph
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image).float()


class HeadGraph(nn.Module):
    """An InferenceGraph from the features on: the graph's head part."""

    def __init__(self, graph: InferenceGraph) -> None:
        super().__init__()
        self.graph = graph
        self.eval()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.graph.from_features(features)


def trace(module: nn.Module, example: torch.Tensor, input_name: str, outputs: Sequence[str]) -> ModelProto:
    """``module`` traced to ONNX with a dynamic batch axis on its input and every output."""
    buffer = io.BytesIO()
    # dynamo=False: the TorchScript-based exporter needs no onnxscript and traces this plain CNN exactly.
    torch.onnx.export(
        module,
        (example,),
        buffer,
        input_names=[input_name],
        output_names=list(outputs),
        dynamic_axes={input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        opset_version=OPSET,
        dynamo=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def backbone_graph(backbone: nn.Module, input_size: int) -> ModelProto:
    """The backbone part: ``backbone`` traced alone (image -> features), as :func:`abcd.serving.graphs.backbone_part`
    would cut it from a model, so that it hashes the same alone and inside one."""
    traced = trace(BackboneGraph(backbone), torch.zeros(2, 3, input_size, input_size), IMAGE, [FEATURES])
    return backbone_part(traced)


def export_onnx(
    loaded: LoadedModel,
    out: Path,
    metadata: Mapping[str, Any],
    val_images: Sequence[Path] = (),
    store: Path | None = None,
) -> tuple[Mapping[str, Any], dict[str, str]]:
    """Write the graph, metadata included, atomically; return the metadata and where its backbone part and val
    features came from.

    The graph is the backbone part composed with the head part (``abcd.serving.graphs``): the backbone part is
    stage onnx_backbone's (``store``) when it was traced from this checkpoint's backbone weights, else traced
    here. With ``val_images``, the thresholds are calibrated on this graph's own scores of them (:func:`calibrate`).
    """
    graph = InferenceGraph(loaded)
    size = loaded.preprocess.input_size
    backbone, origin = stored_fp32(store, loaded.backbone_sha256, loaded.preprocess)
    if backbone is None:
        backbone, origin = backbone_graph(graph.model.backbone, size), f"traced here ({origin})"
    outputs = [PROBABILITIES, *(score_output(m) for m in graph.methods)]
    head = trace(HeadGraph(graph), torch.zeros(2, loaded.num_features), FEATURES, outputs)
    proto = compose_parts(backbone, head)
    origins = {"backbone part": origin}
    if val_images:
        false_reject = loaded.extra.get("unknown_false_reject")
        if false_reject is None:
            raise InvalidFileError("the checkpoint has no unknown_false_reject: retrain it (dvc repro train)")
        cache = feature_cache(store)
        val, origins["val features"] = features(Part(backbone), val_images, loaded.preprocess, "val", cache)
        metadata = calibrate(metadata, head_outputs(Part(head), metadata, val), float(false_reject))
    with atomic_file(out) as tmp:
        set_metadata(proto, metadata)
        onnx.save(proto, str(tmp))
        check_parity(graph, OnnxClassifier(tmp), size)
    return metadata, origins


def calibrate(meta: Mapping[str, Any], outputs: Mapping[str, np.ndarray], false_reject: float) -> dict:
    """``meta`` (a model's metadata) with every threshold set on the model's own ``outputs`` for the val images.

    The split-conformal rank train uses (:func:`abcd.ood.base.threshold_for_false_reject`), applied
    to the scores this graph computes from the images as predict decodes them (``load_rgb``,
    ``preprocess``; ``graph_outputs``, or ``abcd.serving.parts`` by the graph's parts): a known image is
    rejected on this route with probability at most ``false_reject``, whatever precision train's features had.
    """
    thresholds = {n: threshold_for_false_reject(outputs[n], false_reject) for n in meta["thresholds"]}
    calibration = {
        "on": "validation images through this graph",
        "images": len(outputs[PROBABILITIES]),
        "false_reject": false_reject,
        "checkpoint_thresholds": meta["thresholds"],
    }
    return {**meta, "thresholds": thresholds, "threshold_calibration": calibration}


def check_parity(graph: InferenceGraph, exported: OnnxClassifier, size: int, n: int = 3) -> float:
    """Max abs difference of probabilities and scores on random inputs; InvalidFileError above ``PARITY_ATOL``."""
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (n, 3, size, size)).astype(np.float32))
    graph.eval()
    with torch.inference_mode():
        expected = [t.numpy() for t in graph(x)]
    got = exported.session.run(None, {exported.input_name: x.numpy()})
    worst = max(float(np.abs(a - b).max() / max(1.0, np.abs(a).max())) for a, b in zip(expected, got))
    if worst > PARITY_ATOL:
        raise InvalidFileError(f"ONNX export differs from the torch model by {worst:.2e} (> {PARITY_ATOL})")
    return worst
