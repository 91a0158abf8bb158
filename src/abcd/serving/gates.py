"""The int8 model (stage quantize) against the fp32 one it came from: the gates it must pass to replace it.

An evaluation on the test split and the OOD set, which nothing fits on: stage ``int8_gates`` records it
(metrics/int8.json), and predict's and serve's default model follows its verdict (a test holds them
together). Each model decides at its own thresholds (each file's were calibrated on val through its own
graph), as predict and serve decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from abcd.core.errors import InvalidFileError
from abcd.evaluation.metrics import f1_macro
from abcd.serving.onnx_model import PROBABILITIES, OnnxClassifier, file_sha256, graph_outputs

F1_TOLERANCE = 0.005  # |macro F1 int8 - fp32| on the test split
MIN_AGREEMENT = 0.99  # fraction of test and of OOD images with the same unknown decision, for unknown.method


def decisions(model: OnnxClassifier, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each detector's unknown decisions (True: unknown) at ``model``'s own thresholds, as predict decides."""
    return {n: outputs[n] > model.detector(n).threshold for n in model.meta["thresholds"]}


def check_source(fp32: OnnxClassifier, int8: OnnxClassifier) -> None:
    """InvalidFileError unless ``int8`` was quantized from this very ``fp32`` file."""
    source = int8.meta.get("quantization", {}).get("fp32", {}).get("sha256")
    if source != file_sha256(fp32.path):
        raise InvalidFileError(
            f"{int8.path} was not quantized from {fp32.path} (its record: sha256 {source}); run: dvc repro quantize"
        )


def gates(
    fp32: OnnxClassifier,
    int8: OnnxClassifier,
    outputs: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
    labels: np.ndarray,
) -> dict[str, Any]:
    """``int8`` against ``fp32`` from their ``outputs[split]["fp32" | "int8"]`` (``graph_outputs``' keys) on the
    test images (split ``"test"``, with ``labels``) and the OOD images (``"ood"``, absent without an OOD set):
    test macro F1 of each, and per detector the fraction of images both decide alike (each at its own
    thresholds); ``passed`` judges ``fp32``'s ``method``, and is None without an OOD set to judge it on."""
    k, method = len(fp32.classes), fp32.meta["method"]
    report: dict[str, Any] = {"method": method, "images": {}, "agreement": {}}
    for split, out in outputs.items():
        report["images"][split] = len(out["fp32"][PROBABILITIES])
        if split == "test":
            f1 = {name: f1_macro(labels, o[PROBABILITIES].argmax(1), k) for name, o in out.items()}
            report["f1"] = {**f1, "delta": f1["int8"] - f1["fp32"]}
        a, b = decisions(fp32, out["fp32"]), decisions(int8, out["int8"])
        report["agreement"][split] = {n: float(np.mean(a[n] == b[n])) for n in a}
    passed = abs(report["f1"]["delta"]) <= F1_TOLERANCE and all(
        report["agreement"][s][method] >= MIN_AGREEMENT for s in outputs
    )
    report["passed"] = passed if "ood" in outputs else None
    return report


def gates_on_images(
    fp32: OnnxClassifier,
    int8: OnnxClassifier,
    test: Sequence[Path],
    labels: np.ndarray,
    ood: Sequence[Path] | None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """:func:`gates` with each whole graph run on the ``test`` and ``ood`` images (None: no OOD set)."""
    splits = {"test": test, **({"ood": ood} if ood is not None else {})}
    models = {"fp32": fp32, "int8": int8}
    outputs = {s: {n: graph_outputs(m, paths, batch_size) for n, m in models.items()} for s, paths in splits.items()}
    return gates(fp32, int8, outputs, labels)


def deciding(report: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers that decide, for metrics/int8.json: the verdict, the F1 change, ``method``'s agreement."""
    method, agreement = report["method"], report["agreement"]
    found = {"passed": report["passed"], "f1_delta": report["f1"]["delta"]}
    found.update({f"{split}_agreement": agreement[split][method] for split in agreement})
    return found
