"""Stage `export`: the checkpoint as one ONNX file that onnxruntime runs without torch.

The graph is the whole classifier: image batch (N, 3, S, S), preprocessed as in
``abcd.serving.onnx_model.preprocess``, -> ``probabilities`` (softmax of logits / the checkpoint's
temperature) and ``score_<method>`` for every registered unknown detector the checkpoint has
fitted (their states are constants in the graph; ``fusion`` with all its components). The
metadata (key ``abcd``, JSON) holds the classes, the preprocessing, the temperature, each
exported detector's threshold, the method chosen in params (``unknown.method``), the
original rule's threshold (``predict.threshold``) and the checkpoint's sha256. Before
writing, the stage runs the file on onnxruntime and fails if its output differs from the
torch model's in fp32 by more than ``PARITY_ATOL``.

The thresholds are calibrated again, on the validation images run through this graph: train
set them on featurize's features, which are bf16 on a CPU with AMX, while the graph computes in
fp32, and the summed fusion score moves by up to about 1.4 between the two (its threshold is
about 9). The same split-conformal rule at the checkpoint's ``unknown.false_reject``, on the
scores this route computes, keeps the bound for this route (``threshold_calibration`` in the
metadata records the images, the rate and the checkpoint's thresholds).

The graph is traced in two parts and composed (``abcd.serving.graphs``): the backbone part (image ->
``features``) and the head part. With a frozen backbone the backbone part and its val features are stage
onnx_backbone's (``--backbone``), used only when traced from this checkpoint's very backbone weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.params import load_params
from abcd.data.images import read_manifest
from abcd.models.checkpoint import load_checkpoint
from abcd.serving.export import export_metadata, export_onnx


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "model": "checkpoint",
            "data": "prepared dataset (the val images the thresholds are calibrated on)",
            "backbone": "backbone store (stage onnx_backbone): its ONNX part and val features",
        },
        writes={"out": "ONNX model"},
    )
    params = load_params(args.params)
    loaded = load_checkpoint(args.model, expected_classes=params.classes)
    metadata = export_metadata(loaded, args.model, params.unknown.method, params.predict.threshold)
    val = [s.path for s in read_manifest(args.data / "val.csv", params.classes)]
    meta, origins = export_onnx(loaded, args.out, metadata, val, args.backbone)
    for what, origin in origins.items():
        print(f"export: {what}: {origin}")
    cal, method, moved = meta["threshold_calibration"], params.unknown.method, ""
    if method in cal["checkpoint_thresholds"]:
        before, after = cal["checkpoint_thresholds"][method], meta["thresholds"][method]
        moved = f"; {method} threshold {before:.4g} -> {after:.4g} on {cal['images']} val images through the graph"
    print(f"export: {args.model} -> {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB{moved})")


if __name__ == "__main__":
    run(main, "export")
