"""Stage `int8_gates`: the int8 model (stage quantize) judged against the fp32 export it came from.

The gates decide whether the int8 file may be predict's and serve's default (docs/deploy.md: The int8
model): test macro F1 within ``F1_TOLERANCE`` of fp32's, and the same unknown decision (the exported
``unknown.method``, each model at its own thresholds) on at least ``MIN_AGREEMENT`` of the test images and
of the OOD images. An evaluation, like test and ood_evaluate: nothing is fitted on these images. With the
OOD branch off (``--ood`` holds the reason) the OOD gate is not evaluated and the verdict is null.

Each model's outputs come from its backbone part's features and its head part (``abcd.serving.parts``):
the features of stages onnx_backbone (test) and ood_onnx_features (OOD) where each model's backbone part
is the very graph that made them, else computed here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_write_text
from abcd.core.params import load_params
from abcd.data.images import read_manifest
from abcd.data.ood_manifest import not_evaluated, read_ood_manifest
from abcd.serving.backbone_store import feature_cache
from abcd.serving.gates import F1_TOLERANCE, MIN_AGREEMENT, check_source, deciding, gates
from abcd.serving.onnx_model import OnnxClassifier
from abcd.serving.parts import ModelParts


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "fp32": "fp32 ONNX model (stage export)",
            "int8": "int8 ONNX model (stage quantize)",
            "data": "prepared dataset (the test split)",
            "ood": "OOD set, or the reason it is not evaluated",
            "backbone": "backbone store (stage onnx_backbone): the test images' features",
            "ood-features": "the OOD images' features (stage ood_onnx_features)",
        },
        writes={"metrics": "metrics JSON: the verdict and the deciding numbers", "report": "every detector's"},
    )
    params = load_params(args.params)
    fp32, int8 = OnnxClassifier(args.fp32), OnnxClassifier(args.int8)
    check_source(fp32, int8)
    test = read_manifest(args.data / "test.csv", params.classes)
    labels = np.array([params.classes.index(s.label) for s in test])
    reason = not_evaluated(args.ood)
    splits = {"test": ([s.path for s in test], feature_cache(args.backbone))}
    if reason is None:
        splits["ood"] = (read_ood_manifest(args.ood / "manifest.csv").paths, args.ood_features)
    models = {"fp32": ModelParts(fp32), "int8": ModelParts(int8)}
    outputs: dict[str, dict] = {split: {} for split in splits}
    for split, (paths, cache) in splits.items():
        for name, parts in models.items():
            outputs[split][name], origin = parts.outputs(paths, split, cache)
            print(f"int8_gates: {name} {split} features: {origin}")
    report = gates(fp32, int8, outputs, labels)
    report["rule"] = {"f1_tolerance": F1_TOLERANCE, "min_agreement": MIN_AGREEMENT}
    metrics = deciding(report)
    if reason is not None:
        report["ood"] = metrics["ood"] = {"evaluated": False, "reason": reason}
    atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.metrics, json.dumps({"int8": metrics}, indent=2) + "\n")
    verdict = {True: "passed", False: "FAILED", None: f"not judged (no OOD set: {reason})"}[report["passed"]]
    print(
        f"int8_gates: {verdict}; test F1 {report['f1']['fp32']:.4f} -> {report['f1']['int8']:.4f}, same "
        f"{report['method']} decision on "
        + ", ".join(f"{v[report['method']]:.1%} of {report['images'][s]} {s}" for s, v in report["agreement"].items())
        + " images"
    )


if __name__ == "__main__":
    run(main, "int8_gates")
