"""Stage `onnx_backbone`: the pretrained backbone as an ONNX part, in fp32 and in int8, and its val and test features.

What stages export and quantize need of the backbone alone, made once per backbone: the backbone traced to
ONNX (image -> features), its static int8 quantization (as stage quantize would make it: the same
``quantize.calibration_images`` sample of training images and ``keep_fp32``), and both parts' features of
the val images (threshold calibration) and the test images (int8_gates). With a frozen backbone
(``train.trainable_blocks: 0``) a head-only experiment (``dvc exp run -S lr=...``) reuses all of it; each
consumer checks that a piece is its own (``abcd.serving.backbone_store``) and otherwise computes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.params import load_params
from abcd.data.images import read_manifest
from abcd.models.backbones import build_backbone, state_fingerprint
from abcd.serving.backbone_store import write_store
from abcd.serving.export import backbone_graph
from abcd.serving.quantize import calibration_sample, quantization_settings, quantize_backbone

SPLITS = ("train", "val", "test")


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={"data": "prepared dataset (train: calibration; val and test: features)"},
        writes={"out": "backbone store directory"},
    )
    params = load_params(args.params)
    splits = {s: [x.path for x in read_manifest(args.data / f"{s}.csv", params.classes)] for s in SPLITS}
    calibration = calibration_sample(splits["train"], params.quantize.calibration_images, params.seed)
    backbone = build_backbone(params.model.backbone, pretrained=True)
    pre, keep = backbone.preprocess, params.quantize.keep_fp32
    fp32 = backbone_graph(backbone.module, pre.input_size)
    int8 = quantize_backbone(fp32, calibration, pre, keep)
    record = {
        "backbone": params.model.backbone,
        "backbone_sha256": state_fingerprint(backbone.module.state_dict()),
        "preprocess": pre.to_dict(),
        "quantization": quantization_settings(calibration, keep),
    }
    write_store(args.out, record, fp32, int8, {"val": splits["val"], "test": splits["test"]}, pre)
    print(
        f"onnx_backbone: {params.model.backbone} in fp32 and int8 ({len(calibration)} calibration images), "
        f"features of {len(splits['val'])} val and {len(splits['test'])} test images -> {args.out}"
    )


if __name__ == "__main__":
    run(main, "onnx_backbone")
