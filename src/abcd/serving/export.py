"""The checkpoint as one ONNX graph (backbone, head, temperature, every exported detector's score).

With the metadata predict and serve read beside the graph.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from abcd.core.errors import InvalidFileError
from abcd.core.fileio import atomic_file
from abcd.data.images import load_rgb
from abcd.models.checkpoint import CHECKPOINT_FORMAT, LoadedModel
from abcd.ood.detectors import threshold_for_false_reject
from abcd.serving.onnx_model import META_KEY, ONNX_FORMAT, PROBABILITIES, OnnxClassifier, file_sha256, score_output

OPSET = 18


PARITY_ATOL = 1e-4  # max abs difference of probabilities, ONNX against torch fp32 (README: Deploy)


# Fitted detectors the graph computes (beside max_softmax and energy, which need no state). fusion
# (the default unknown.method) is its stored components' scores, standardised and summed in the
# graph, and is exported when every one of them is.
EXPORTED_FITTED = ("mahalanobis_pp", "knn", "vim", "fusion")


class InferenceGraph(nn.Module):
    """Backbone, head, temperature and the unknown scores of ``abcd.ood.detectors``, as one traceable module."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model.float().eval()
        self.temperature = float(loaded.extra.get("temperature", 1.0))
        fitted = _fitted(loaded)
        self.methods = exported_methods(fitted)
        if "mahalanobis_pp" in fitted:
            self.register_buffer("mahalanobis_pp_means", fitted["mahalanobis_pp"]["state"]["means"].float())
            self.register_buffer("mahalanobis_pp_precision", fitted["mahalanobis_pp"]["state"]["precision"].float())
        if "knn" in fitted:
            self.register_buffer("bank", fitted["knn"]["state"]["bank"].float())
            self.k = int(fitted["knn"]["state"]["k"])
        if "vim" in fitted:
            self.register_buffer("vim_origin", fitted["vim"]["state"]["origin"].float())
            self.register_buffer("vim_basis", fitted["vim"]["state"]["basis"].float())
            self.vim_alpha = float(fitted["vim"]["state"]["alpha"])
        if "fusion" in self.methods:
            state = fitted["fusion"]["state"]
            self.fusion_parts = list(state)
            moments = torch.stack([state[p].double() for p in self.fusion_parts])
            self.register_buffer("fusion_mean", moments[:, 0].float())
            self.register_buffer("fusion_std", moments[:, 1].float())
        # Eval mode for the whole tree, this module included: torch.onnx.export restores the mode it
        # found, and a module left in training mode would switch the head's dropout back on afterwards.
        self.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.from_features(self.model.backbone(image).float())

    def from_features(self, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(probabilities, every method's score) from the backbone's (N, D) fp32 features."""
        logits = self.model.head(feats)
        probs = torch.softmax(logits / self.temperature, dim=1)
        scores = {"max_softmax": 1.0 - probs.max(dim=1).values, "energy": -torch.logsumexp(logits, dim=1)}
        q = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)  # unit sphere: mahalanobis_pp, knn
        if "mahalanobis_pp" in self.methods:
            diff = q[:, None, :] - self.mahalanobis_pp_means[None]  # (N, C, D)
            scores["mahalanobis_pp"] = ((diff @ self.mahalanobis_pp_precision) * diff).sum(dim=-1).min(dim=1).values
        if "knn" in self.methods:
            d = 2.0 - 2.0 * q @ self.bank.T
            kth = torch.topk(d, self.k, dim=1, largest=False).values[:, -1]
            scores["knn"] = kth.clamp_min(0).sqrt()
        if "vim" in self.methods:
            centred = feats - self.vim_origin
            residual = (centred - (centred @ self.vim_basis) @ self.vim_basis.T).norm(dim=1)
            scores["vim"] = self.vim_alpha * residual + scores["energy"]
        if "fusion" in self.methods:
            parts = torch.stack([scores[p] for p in self.fusion_parts], dim=1)
            scores["fusion"] = ((parts - self.fusion_mean) / self.fusion_std).sum(dim=1)
        return (probs, *(scores[m] for m in self.methods))


def exported_methods(fitted: Mapping[str, Any]) -> list[str]:
    """The methods the graph computes for a checkpoint's fitted detectors, in output order.

    fusion only when the graph computes each component its stored state names.
    """
    singles = ["max_softmax", "energy", *(m for m in EXPORTED_FITTED if m in fitted and m != "fusion")]
    if "fusion" in fitted and all(p in singles for p in fitted["fusion"]["state"]):
        return [*singles, "fusion"]
    return singles


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


def export_onnx(
    loaded: LoadedModel, out: Path, metadata: Mapping[str, Any], val_images: Sequence[Path] = ()
) -> Mapping[str, Any]:
    """Trace the graph with a dynamic batch axis and write it, metadata included, atomically; return the metadata.

    With ``val_images``, the thresholds are calibrated on this graph's own scores of them (:func:`calibrate`).
    """
    import onnx

    graph = InferenceGraph(loaded)
    size = loaded.preprocess.input_size
    example = torch.zeros(2, 3, size, size)
    outputs = [PROBABILITIES, *(score_output(m) for m in graph.methods)]
    with atomic_file(out) as tmp:
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and traces this plain CNN exactly.
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            opset_version=OPSET,
            dynamo=False,
        )
        _write_metadata(onnx, tmp, metadata)
        written = OnnxClassifier(tmp)
        check_parity(graph, written, size)
        if val_images:
            false_reject = loaded.extra.get("unknown_false_reject")
            if false_reject is None:
                raise InvalidFileError("the checkpoint has no unknown_false_reject: retrain it (dvc repro train)")
            metadata = calibrate(written, val_images, float(false_reject))
            _write_metadata(onnx, tmp, metadata)
    return metadata


def _write_metadata(onnx: Any, path: Path, metadata: Mapping[str, Any]) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(dict(metadata))
    onnx.save(proto, str(path))


def calibrate(model: OnnxClassifier, images: Sequence[Path], false_reject: float, batch_size: int = 16) -> dict:
    """``model``'s metadata with every threshold set on its own scores of ``images`` (the val split).

    The split-conformal rank train uses (:func:`abcd.ood.detectors.threshold_for_false_reject`), applied
    to the scores this graph computes from the images as predict decodes them (``load_rgb``,
    ``model.preprocess``): a known image is rejected on this route with probability at most
    ``false_reject``, whatever precision train's features had.
    """
    names = list(model.meta["thresholds"])
    scores: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(images), batch_size):
        batch = np.stack([model.preprocess(load_rgb(p)) for p in images[i : i + batch_size]])
        for name, s in zip(names, model.session.run([score_output(n) for n in names], {model.input_name: batch})):
            scores[name].append(s.astype(np.float64))
    thresholds = {n: threshold_for_false_reject(np.concatenate(scores[n]), false_reject) for n in names}
    calibration = {
        "on": "validation images through this graph",
        "images": len(images),
        "false_reject": false_reject,
        "checkpoint_thresholds": model.meta["thresholds"],
    }
    return {**model.meta, "thresholds": thresholds, "threshold_calibration": calibration}


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
