"""The int8 model (stage quantize) against the fp32 one it came from: the gates it must pass to replace it.

An evaluation on the test split and the OOD set, which nothing fits on: ``benchmarks/deploy.py`` prints
it and ``tests/test_quantize.py`` asserts it on the pipeline's outputs. Each model decides at its own
thresholds (each file's were calibrated on val through its own graph), as predict and serve decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from abcd.evaluation.metrics import f1_macro
from abcd.serving.export import graph_outputs
from abcd.serving.onnx_model import PROBABILITIES, OnnxClassifier

F1_TOLERANCE = 0.005  # |macro F1 int8 - fp32| on the test split
MIN_AGREEMENT = 0.99  # fraction of test and of OOD images with the same unknown decision, for unknown.method


def decisions(model: OnnxClassifier, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each detector's unknown decisions (True: unknown) at ``model``'s own thresholds, as predict decides."""
    return {n: outputs[n] > model.detector(n).threshold for n in model.meta["thresholds"]}


def gates(
    fp32: OnnxClassifier,
    int8: OnnxClassifier,
    test: Sequence[Path],
    labels: np.ndarray,
    ood: Sequence[Path],
    batch_size: int = 16,
) -> dict[str, Any]:
    """``int8`` against ``fp32``: test macro F1 of each, and per detector the fraction of test and of OOD
    images both decide alike (each at its own thresholds); ``passed`` judges ``fp32``'s ``method``."""
    k, method = len(fp32.classes), fp32.meta["method"]
    report: dict[str, Any] = {"method": method, "images": {"test": len(test), "ood": len(ood)}, "agreement": {}}
    for split, paths in (("test", test), ("ood", ood)):
        out = {name: graph_outputs(model, paths, batch_size) for name, model in (("fp32", fp32), ("int8", int8))}
        if split == "test":
            f1 = {name: f1_macro(labels, o[PROBABILITIES].argmax(1), k) for name, o in out.items()}
            report["f1"] = {**f1, "delta": f1["int8"] - f1["fp32"]}
        a, b = decisions(fp32, out["fp32"]), decisions(int8, out["int8"])
        report["agreement"][split] = {n: float(np.mean(a[n] == b[n])) for n in a}
    report["passed"] = abs(report["f1"]["delta"]) <= F1_TOLERANCE and all(
        report["agreement"][s][method] >= MIN_AGREEMENT for s in ("test", "ood")
    )
    return report
