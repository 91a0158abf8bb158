"""Stage onnx_backbone's folder: one backbone's ONNX part in fp32 and in int8, and their features of val and test.

What export and quantize would otherwise recompute in every experiment although, with a frozen backbone,
it depends on the backbone alone. Each piece is used only where it provably applies:
- ``fp32.onnx``, the traced backbone, by export for a checkpoint whose backbone weights have the sha256
  recorded here (``backbone.json``) and the same preprocessing;
- ``int8.onnx``, its quantization, by quantize for a model whose backbone part is ``fp32.onnx``'s graph
  (:func:`abcd.serving.graphs.graph_sha256`) with the same calibration images and ``keep_fp32``;
- ``features/``, by :func:`abcd.serving.parts.features` for exactly these graphs and images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import ModelProto

from abcd.core.errors import MissingFileError
from abcd.core.fileio import atomic_dir
from abcd.core.preprocess import Preprocess
from abcd.serving.graphs import load
from abcd.serving.parts import Part, write_cache

RECORD, FP32, INT8, FEATURES_DIR = "backbone.json", "fp32.onnx", "int8.onnx", "features"


def write_store(
    folder: Path,
    record: Mapping[str, Any],
    fp32: ModelProto,
    int8: ModelProto,
    splits: Mapping[str, Sequence[Path]],
    pre: Preprocess,
) -> dict[str, Any]:
    """Replace ``folder`` with both parts, their features of ``splits``' images and ``record`` (which backbone,
    its preprocessing, the quantization settings) with each part's graph sha256."""
    parts = {"fp32": Part(fp32), "int8": Part(int8)}
    full = {**record, "graphs": {name: part.sha256 for name, part in parts.items()}}
    with atomic_dir(folder) as tmp:
        onnx.save(fp32, str(tmp / FP32))
        onnx.save(int8, str(tmp / INT8))
        write_cache(tmp / FEATURES_DIR, parts, splits, pre)
        (tmp / RECORD).write_text(json.dumps(full, indent=2) + "\n")
    return full


def _record(folder: Path | None) -> dict[str, Any] | None:
    if folder is None or not (folder / RECORD).is_file():
        return None
    return json.loads((folder / RECORD).read_text())


def stored_fp32(folder: Path | None, backbone_sha256: str, preprocess: Preprocess) -> tuple[ModelProto | None, str]:
    """The stored fp32 backbone part if it was traced from weights with ``backbone_sha256``, else None; and why."""
    record = _record(folder)
    if record is None:
        return None, f"no backbone store in {folder}"
    if record["backbone_sha256"] != backbone_sha256 or record["preprocess"] != preprocess.to_dict():
        return None, f"{folder} holds another backbone's graph (fine-tuned, or another backbone)"
    return load(folder / FP32), f"stored in {folder}"


def stored_int8(folder: Path | None, fp32_sha256: str, settings: Mapping[str, Any]) -> tuple[ModelProto | None, str]:
    """The stored int8 backbone part if it is the quantization of the fp32 part ``fp32_sha256`` with ``settings``."""
    record = _record(folder)
    if record is None:
        return None, f"no backbone store in {folder}"
    if record["graphs"]["fp32"] != fp32_sha256:
        return None, f"{folder} holds another backbone's graph (fine-tuned, or another backbone)"
    if record["quantization"] != dict(settings):
        return None, f"{folder} was quantized with other settings (quantize.calibration_images, keep_fp32, seed)"
    return load(folder / INT8), f"stored in {folder}"


def stored_parts(folder: Path) -> tuple[dict[str, Part], Preprocess]:
    """Both stored backbone parts by precision, and the preprocessing their features are of."""
    record = _record(folder)
    if record is None:
        raise MissingFileError(f"backbone store not found: {folder / RECORD} (run: dvc repro onnx_backbone)")
    parts = {"fp32": Part(load(folder / FP32)), "int8": Part(load(folder / INT8))}
    return parts, Preprocess.from_dict(record["preprocess"])


def feature_cache(folder: Path | None) -> Path | None:
    return None if folder is None else folder / FEATURES_DIR
