"""Stage `ood_onnx_features`: the OOD images' features through stage onnx_backbone's fp32 and int8 backbone parts.

The OOD branch's cache for int8_gates, as ood_featurize is for ood_test: it depends on the backbone and the
OOD set, not on training, so a head-only experiment runs only the head parts on it. When the OOD branch is
off (``--ood`` holds the reason), ``--out`` holds the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_dir
from abcd.data.ood_manifest import not_evaluated, read_ood_manifest, write_not_evaluated
from abcd.serving.backbone_store import stored_parts
from abcd.serving.parts import write_cache


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "ood": "OOD set (stage ood_data), or the reason it is not evaluated",
            "backbone": "backbone store (stage onnx_backbone): the fp32 and int8 backbone parts",
        },
        writes={"out": "the OOD images' feature cache directory"},
    )
    reason = not_evaluated(args.ood)
    if reason is not None:
        write_not_evaluated(args.out, reason)
        print(f"ood_onnx_features: not evaluated: {reason}")
        return
    parts, pre = stored_parts(args.backbone)
    paths = read_ood_manifest(args.ood / "manifest.csv").paths
    with atomic_dir(args.out) as tmp:
        write_cache(tmp, parts, {"ood": paths}, pre)
    print(f"ood_onnx_features: {len(paths)} OOD images through the fp32 and int8 backbone parts -> {args.out}")


if __name__ == "__main__":
    run(main, "ood_onnx_features")
