"""The exported graph as two parts joined at one tensor: the backbone's (``image`` -> ``features``) and the head's.

The export traces them apart and composes them (``onnx.compose``), so that the backbone's part is a graph of
its own: with a frozen backbone it is the same in every experiment, and stage ``onnx_backbone`` computes
once per backbone what depends on it alone (its int8 quantization, its features of the val and test
images). A part is recognised by :func:`graph_sha256` of its content, never by its file's name or date, so
a cached result is used only for the very graph that made it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
from onnx import ModelProto, compose
from onnx.utils import Extractor

from abcd.core.errors import InvalidFileError
from abcd.serving.onnx_model import META_KEY

IMAGE = "image"  # the graph's input: a batch of preprocessed images (N, 3, S, S)
FEATURES = "features"  # the backbone's pooled features (N, D), fp32: the head's input


def load(path: Path) -> ModelProto:
    return onnx.load(str(path))


def _part(model: ModelProto, inputs: list[str], outputs: list[str]) -> ModelProto:
    tensors = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    if FEATURES not in tensors:
        raise InvalidFileError(
            f"the ONNX graph has no tensor {FEATURES!r} between backbone and head: not exported by this "
            "project's export stage, or by an older one (run: dvc repro export)"
        )
    return Extractor(model).extract_model(inputs, outputs)


def backbone_part(model: ModelProto) -> ModelProto:
    """The nodes from the image to the features."""
    return _part(model, [IMAGE], [FEATURES])


def head_part(model: ModelProto) -> ModelProto:
    """The nodes from the features to every output (probabilities, the detectors' scores)."""
    return _part(model, [FEATURES], [o.name for o in model.graph.output])


def compose_parts(backbone: ModelProto, head: ModelProto) -> ModelProto:
    """One graph: ``backbone``'s features fed to ``head``; no names change."""
    # A part cut from a model carries the features' shape as value_info; merge_models refuses it twice.
    head = ModelProto.FromString(head.SerializeToString())
    kept = [v for v in head.graph.value_info if v.name != FEATURES]
    del head.graph.value_info[:]
    head.graph.value_info.extend(kept)
    merged = compose.merge_models(backbone, head, io_map=[(FEATURES, FEATURES)])
    # merge_models lists the default domain once per part; onnxruntime's quantization tools refuse that.
    versions = {o.domain: o.version for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(domain, v) for domain, v in versions.items())
    return merged


def graph_sha256(model: ModelProto) -> str:
    """sha256 of what a graph computes: its nodes in order, its initializers by name, its inputs and outputs.

    Unchanged by the part's extraction from a composed graph (which keeps the nodes' order and may list the
    initializers in another order), so a backbone part hashes the same alone and inside a model.
    """
    digest = hashlib.sha256()
    graph = model.graph
    for value in (*graph.input, *graph.output):
        digest.update(f"io:{value.name};".encode())
    for node in graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    for init in sorted(graph.initializer, key=lambda t: t.name):
        digest.update(init.SerializeToString(deterministic=True))
    return digest.hexdigest()


def set_metadata(model: ModelProto, metadata: Mapping[str, Any]) -> None:
    """Replace ``model``'s metadata with ``metadata`` (JSON under :data:`~abcd.serving.onnx_model.META_KEY`)."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(dict(metadata))


def write_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    """Replace the metadata of the ONNX file at ``path`` with ``metadata``."""
    model = load(path)
    set_metadata(model, metadata)
    onnx.save(model, str(path))
