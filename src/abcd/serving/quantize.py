"""The exported graph in int8: onnxruntime's static quantization, calibrated on training images.

:func:`quantize_onnx` runs ``onnxruntime.quantization.quantize_static`` (QDQ format, int8 weights per
output channel, uint8 activations: the U8S8 pair onnxruntime's x86 kernels run with VNNI) on the fp32
export. Only the backbone's nodes are quantized (:data:`BACKBONE_SCOPE`), less the modules named in
``quantize.keep_fp32``: the head, the temperature and every detector's distances and covariance
products stay fp32. Quantized with the rest, those put ViM's and the fusion's scores on a 256-level
grid: the fusion then decided like fp32 on 6% of the OOD images. The early, high-resolution backbone
layers stay fp32 because in int8 they moved the fusion score on val the most (docs/deploy.md). The
activation ranges come from MinMax calibration (the histogram methods held 24 GB for 200 images) on
training images only, decoded and preprocessed as predict does (:class:`ImageReader`); the val images
then recalibrate every detector's threshold through the int8 graph (``export.calibrate``), as the
export does for fp32. Test and OOD images are never read here: ``abcd.serving.gates`` is the
evaluation, run by stage ``int8_gates``.

The backbone part is quantized alone (:func:`quantize_backbone`) and composed with the fp32 model's head
part: the activation ranges of backbone nodes do not depend on the head, and with a frozen backbone the
int8 backbone is stage ``onnx_backbone``'s, made once per backbone (``abcd.serving.backbone_store``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from abcd.core.errors import InvalidFileError
from abcd.core.fileio import atomic_file
from abcd.core.preprocess import Preprocess
from abcd.core.schema import ParamsError
from abcd.data.images import load_rgb
from abcd.serving.backbone_store import feature_cache, stored_int8
from abcd.serving.export import calibrate
from abcd.serving.graphs import IMAGE, backbone_part, compose_parts, head_part, load, set_metadata
from abcd.serving.onnx_model import OnnxClassifier, file_sha256, preprocess
from abcd.serving.parts import Part, features, head_outputs

# torch.onnx.export names each node after the module that made it: InferenceGraph's backbone is
# ``self.model.backbone``, whose nodes are named "/backbone/...".
BACKBONE_SCOPE = "/backbone/"


class ImageReader(CalibrationDataReader):
    """Image files as onnxruntime's calibration data: one preprocessed image per call."""

    def __init__(self, paths: Sequence[Path], pre: Preprocess, input_name: str) -> None:
        self.input_name, self.pre = input_name, pre
        self._paths: Iterator[Path] = iter(paths)

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._paths, None)
        return None if path is None else {self.input_name: preprocess(load_rgb(path), self.pre)[None]}


def calibration_sample(train: Sequence[Path], count: int, seed: int) -> list[Path]:
    """``count`` of the training images (all when fewer), a seeded sample in manifest order."""
    count = min(count, len(train))
    return [train[i] for i in np.sort(np.random.default_rng(seed).choice(len(train), count, replace=False))]


def module_scope(module: str) -> str:
    """The node-name prefix of a backbone module (``"blocks.0"``): torch.onnx.export names a node by every
    level of its module path, ``/backbone/blocks/blocks.0/blocks.0.1/conv_pw/Conv``."""
    parts = module.split(".")
    return BACKBONE_SCOPE + "".join(".".join(parts[: i + 1]) + "/" for i in range(len(parts)))


def backbone_nodes(backbone: ModelProto, keep_fp32: Sequence[str] = ()) -> list[str]:
    """The names of the nodes under :data:`BACKBONE_SCOPE` in ``backbone`` (a model or its backbone part), but those
    of the backbone modules in ``keep_fp32`` (timm's module paths, e.g. ``conv_stem``, ``blocks.0``)."""
    found = [n.name for n in backbone.graph.node if n.name.startswith(BACKBONE_SCOPE)]
    if not found:
        raise InvalidFileError(f"no node under {BACKBONE_SCOPE!r}: not exported by this project's export stage")
    scopes = {m: module_scope(m) for m in keep_fp32}
    absent = [m for m, scope in scopes.items() if not any(n.startswith(scope) for n in found)]
    if absent:
        raise ParamsError(
            f"params: 'quantize.keep_fp32': the backbone has no module {', '.join(map(repr, absent))} "
            "(name modules as timm does, e.g. conv_stem, blocks.0)"
        )
    return [n for n in found if not any(n.startswith(scope) for scope in scopes.values())]


def quantize_nodes(
    fp32: Path,
    out: Path,
    calibration_images: Sequence[Path],
    pre: Preprocess,
    nodes: Sequence[str],
    op_types: Sequence[str] | None = None,
) -> None:
    """``quantize_static`` of the ``nodes`` of ``fp32`` (of ``op_types`` only, if given) into ``out``: QDQ, int8
    weights per channel, uint8 activations (the pair onnxruntime's x86 kernels run with VNNI), MinMax ranges
    over ``calibration_images`` preprocessed with ``pre``. No metadata: :func:`quantize_onnx` writes it."""
    quantize_static(
        str(fp32),
        str(out),
        ImageReader(calibration_images, pre, IMAGE),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_quantize=list(nodes),
        op_types_to_quantize=list(op_types) if op_types is not None else None,
        calibrate_method=CalibrationMethod.MinMax,
    )


def quantization_settings(calibration_images: Sequence[Path], keep_fp32: Sequence[str]) -> dict[str, Any]:
    """What decides the int8 backbone besides the fp32 one: the stored int8 part is used only for equal settings."""
    return {"calibration_images": [str(p) for p in calibration_images], "keep_fp32": list(keep_fp32)}


def quantize_backbone(
    backbone: ModelProto, calibration_images: Sequence[Path], pre: Preprocess, keep_fp32: Sequence[str] = ()
) -> ModelProto:
    """The fp32 backbone part in int8 (:func:`quantize_nodes` of its nodes less ``keep_fp32``'s), as a part."""
    if not calibration_images:
        raise InvalidFileError("no calibration images: quantize.calibration_images must be >= 1")
    nodes = backbone_nodes(backbone, keep_fp32)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(backbone, str(fp32))
        quantize_nodes(fp32, int8, calibration_images, pre, nodes)
        # As a part: without the nodes quantization left unused, so that it hashes as it will inside the model.
        return backbone_part(load(int8))


def quantize_onnx(
    fp32: Path,
    out: Path,
    calibration_images: Sequence[Path],
    val_images: Sequence[Path],
    keep_fp32: Sequence[str] = (),
    store: Path | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Write ``fp32``'s int8 model to ``out`` (atomically), thresholds recalibrated on ``val_images``; its
    metadata, and where its int8 backbone and val features came from (``store``, stage onnx_backbone's, or made).

    ``calibration_images`` (training images) set the activation ranges; the backbone modules in
    ``keep_fp32`` stay fp32 (:func:`backbone_nodes`). The metadata is ``fp32``'s,
    with its own thresholds and ``quantization``: the precision, the fp32 file's name and sha256,
    its thresholds and the number of calibration images.
    """
    source = OnnxClassifier(fp32)
    calibrated = source.meta.get("threshold_calibration")
    if not calibrated:
        raise InvalidFileError(f"{fp32}: its thresholds were not calibrated on val images: export it again")
    model = load(fp32)
    backbone, head = Part(backbone_part(model)), Part(head_part(model))
    settings = quantization_settings(calibration_images, keep_fp32)
    int8_backbone, origin = stored_int8(store, backbone.sha256, settings)
    if int8_backbone is None:
        int8_backbone = quantize_backbone(backbone.proto, calibration_images, source.preprocessing, keep_fp32)
        origin = f"quantized here ({origin})"
    int8 = Part(int8_backbone)
    quantization = {
        "precision": "int8",
        "weights": "int8 per channel",
        "activations": "uint8",
        "nodes": f"backbone ({BACKBONE_SCOPE}*)",
        "kept_fp32": list(keep_fp32),
        "calibration": {"method": "minmax", "images": len(calibration_images), "on": "training images"},
        "fp32": {"file": fp32.name, "sha256": file_sha256(fp32), "thresholds": source.meta["thresholds"]},
    }
    meta = {**source.meta, "quantization": quantization}
    val, val_origin = features(int8, val_images, source.preprocessing, "val", feature_cache(store))
    meta = calibrate(meta, head_outputs(head, meta, val), float(calibrated["false_reject"]))
    # The record of what train set, as in the fp32 file; the fp32 graph's own are in quantization.
    meta["threshold_calibration"]["checkpoint_thresholds"] = calibrated["checkpoint_thresholds"]
    proto = compose_parts(int8_backbone, head.proto)
    with atomic_file(out) as tmp:
        set_metadata(proto, meta)
        onnx.save(proto, str(tmp))
    return meta, {"int8 backbone": origin, "val features": val_origin}
