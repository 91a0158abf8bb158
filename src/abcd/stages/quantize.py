"""Stage `quantize`: the exported fp32 graph as an int8 one, for onnxruntime on a CPU with int8 kernels.

Static quantization with onnxruntime's own tools (``abcd.serving.quantize``): the backbone's nodes in
QDQ int8, activation ranges from ``quantize.calibration_images`` training images (a seeded sample of
the train split; never test or OOD images). Every detector's threshold is then calibrated again on the
val images through the int8 graph, at the rate the fp32 export used. The metadata is the fp32 file's,
with ``quantization`` naming the precision and the fp32 file and its sha256. Whether the int8 model
may replace the fp32 one is judged on test and OOD images by stage ``int8_gates`` (docs/deploy.md).

Only the backbone part is quantized, and composed with the fp32 model's head part: with a frozen backbone
the int8 backbone part and its val features are stage onnx_backbone's (``--backbone``), used only for a
model whose backbone part is the very graph they were made from, with the same calibration settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.params import load_params
from abcd.data.images import read_manifest
from abcd.serving.quantize import calibration_sample, quantize_onnx


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "model": "fp32 ONNX model (stage export)",
            "data": "prepared dataset (train and val images)",
            "backbone": "backbone store (stage onnx_backbone): its int8 ONNX part and val features",
        },
        writes={"out": "int8 ONNX model"},
    )
    params = load_params(args.params)
    train = [s.path for s in read_manifest(args.data / "train.csv", params.classes)]
    calibration = calibration_sample(train, params.quantize.calibration_images, params.seed)
    val = [s.path for s in read_manifest(args.data / "val.csv", params.classes)]
    meta, origins = quantize_onnx(args.model, args.out, calibration, val, params.quantize.keep_fp32, args.backbone)
    for what, origin in origins.items():
        print(f"quantize: {what}: {origin}")
    method, fp32 = meta["method"], meta["quantization"]["fp32"]["thresholds"]
    moved = f"{method} threshold {fp32[method]:.4g} -> {meta['thresholds'][method]:.4g}" if method in fp32 else ""
    size = args.out.stat().st_size / 2**20
    print(f"quantize: {args.model} -> {args.out} ({size:.1f} MiB; {len(calibration)} calibration images; {moved})")


if __name__ == "__main__":
    run(main, "quantize")
