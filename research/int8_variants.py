"""Which nodes of the exported graph to quantize: each variant's int8 model against the fp32 one.

    python research/int8_variants.py [--variants conv,backbone,...] [--json out.json]

Every variant is quantized as stage quantize does (onnxruntime quantize_static, QDQ, int8 weights per
channel, uint8 activations, MinMax on the stage's sample of quantize.calibration_images training images),
its thresholds calibrated on val through its own graph. Per variant: on val (the split a choice may
look at) the largest change of a class probability and the RMS change of the method's score; on test
and OOD the gates (abcd.serving.gates), reported, not used to choose. Needs models/model.onnx,
data/prepared and data/ood (dvc repro). About 2.5 minutes per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# name: (op types to quantize or None for every type onnxruntime quantizes, nodes: "backbone" or "all",
# the backbone modules left in fp32)
VARIANTS = {
    "conv": (["Conv"], "backbone", []),
    "whole_graph": (None, "all", []),
    "backbone": (None, "backbone", []),
    "backbone_keep_stem": (None, "backbone", ["conv_stem", "bn1"]),
    "backbone_keep_stem_block0": (None, "backbone", ["conv_stem", "bn1", "blocks.0"]),
    "backbone_keep_stem_blocks01": (None, "backbone", ["conv_stem", "bn1", "blocks.0", "blocks.1"]),
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def variant(name: str, out: Path) -> dict:
    from abcd.core.params import load_params
    from abcd.serving.export import calibrate
    from abcd.serving.gates import gates_on_images
    from abcd.serving.graphs import load, write_metadata
    from abcd.serving.onnx_model import PROBABILITIES, OnnxClassifier, graph_outputs
    from abcd.serving.quantize import backbone_nodes, calibration_sample, quantize_nodes

    params = load_params(REPO / "params.yaml")
    fp32_path = REPO / "models/model.onnx"
    fp32 = OnnxClassifier(fp32_path)
    op_types, scope, keep = VARIANTS[name]
    graph = load(fp32_path)
    nodes = backbone_nodes(graph, keep) if scope == "backbone" else [n.name for n in graph.graph.node]
    train = [REPO / r["path"] for r in _rows(REPO / "data/prepared/train.csv")]
    images = calibration_sample(train, params.quantize.calibration_images, params.seed)
    start = time.perf_counter()
    quantize_nodes(fp32_path, out, images, fp32.preprocessing, nodes, op_types)
    seconds = time.perf_counter() - start
    write_metadata(out, fp32.meta)
    val = [REPO / r["path"] for r in _rows(REPO / "data/prepared/val.csv")]
    false_reject = fp32.meta["threshold_calibration"]["false_reject"]
    write_metadata(out, calibrate(fp32.meta, graph_outputs(OnnxClassifier(out), val), false_reject))
    int8 = OnnxClassifier(out)
    method = fp32.meta["method"]
    a, b = graph_outputs(fp32, val), graph_outputs(int8, val)
    test = _rows(REPO / "data/prepared/test.csv")
    labels = np.array([fp32.classes.index(r["label"]) for r in test])
    ood = [REPO / r["path"] for r in _rows(REPO / "data/ood/manifest.csv")]
    report = gates_on_images(fp32, int8, [REPO / r["path"] for r in test], labels, ood)
    return {
        "kept_fp32": keep,
        "quantize_s": seconds,
        "val_max_prob_change": float(np.abs(a[PROBABILITIES] - b[PROBABILITIES]).max()),
        "val_score_rms_change": float(np.sqrt(np.mean((a[method] - b[method]) ** 2))),
        "val_score_std": float(np.std(a[method])),
        "gates": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    print(
        "| variant | val: max prob change | val: RMS score change | test F1 delta | same decision test / OOD | gates |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            r = results[name] = variant(name, Path(tmp) / f"{name}.onnx")
            g = r["gates"]
            m = g["method"]
            print(
                f"| {name} | {r['val_max_prob_change']:.3f} | {r['val_score_rms_change']:.3f} "
                f"(std {r['val_score_std']:.2f}) | {g['f1']['delta']:+.4f} | {g['agreement']['test'][m]:.1%} / "
                f"{g['agreement']['ood'][m]:.1%} | {'passed' if g['passed'] else 'failed'} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
