"""The int8 model (stage quantize) against the fp32 export it came from, in one run on one CPU.

    python benchmarks/int8.py [--repeats 20] [--json out.json]     # also part of benchmarks/deploy.py

 1. the gates (abcd.serving.gates): test macro F1 of each and the difference; per detector, the share
    of test and of OOD images (data/ood) both decide alike, each at its own thresholds;
 2. speed, both models in one process with the same onnxruntime settings, alternating run by run: the
    median seconds per image at batch 1 (latency) and images per second at batch 8 (throughput), and
    int8 / fp32 of each.
Needs models/model.onnx, models/model.int8.onnx, data/prepared and data/ood: `dvc repro`.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

FP32, INT8 = REPO / "models/model.onnx", REPO / "models/model.int8.onnx"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def gate_report() -> dict:
    from abcd.serving.gates import gates_on_images
    from abcd.serving.onnx_model import OnnxClassifier

    fp32, int8 = OnnxClassifier(FP32), OnnxClassifier(INT8)
    test = _rows(REPO / "data/prepared/test.csv")  # manifest paths are relative to the repo
    labels = np.array([fp32.classes.index(r["label"]) for r in test])
    ood = [REPO / r["path"] for r in _rows(REPO / "data/ood/manifest.csv")]
    return gates_on_images(fp32, int8, [REPO / r["path"] for r in test], labels, ood)


def speed(repeats: int) -> dict:
    """Median seconds per batch-1 image and batch-8 images per second, fp32 and int8 alternating."""
    from abcd.data.images import load_rgb
    from abcd.serving.onnx_model import OnnxClassifier

    models = {"fp32": OnnxClassifier(FP32), "int8": OnnxClassifier(INT8)}
    photo = REPO / _rows(REPO / "data/prepared/test.csv")[0]["path"]
    one = models["fp32"].preprocess(load_rgb(photo))
    method = models["fp32"].meta["method"]
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in models}
    for n in (1, 8):
        batch = np.repeat(one[None], n, axis=0)
        for model in models.values():
            model.run(batch, method)  # warm-up
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model.run(batch, method)
                times[name][n].append(time.perf_counter() - start)
    out = {
        name: {"latency_s": statistics.median(t[1]), "images_per_s": 8 / statistics.median(t[8])}
        for name, t in times.items()
    }
    out["ratio"] = {
        "latency": out["int8"]["latency_s"] / out["fp32"]["latency_s"],
        "throughput": out["int8"]["images_per_s"] / out["fp32"]["images_per_s"],
    }
    return out


def rows(gate: dict, fast: dict) -> list[str]:
    """The int8 rows of the deploy benchmark's table."""
    f1, method, n = gate["f1"], gate["method"], gate["images"]
    agree = gate["agreement"]
    lines = [
        f"| int8: test macro F1, fp32 / int8 (delta) | {f1['fp32']:.4f} / {f1['int8']:.4f} ({f1['delta']:+.4f}) |",
        *(
            f"| int8: same unknown decision on {n[s]} {s} images | "
            + ", ".join(f"{m} {v:.1%}" for m, v in agree[s].items())
            + " |"
            for s in ("test", "ood")
        ),
        f"| int8: gates ({method}) | {'passed' if gate['passed'] else 'FAILED'} |",
        f"| forward per image at batch 1, fp32 / int8 | {1000 * fast['fp32']['latency_s']:.1f} / "
        f"{1000 * fast['int8']['latency_s']:.1f} ms = **{fast['ratio']['latency']:.2f}** |",
        f"| images/s at batch 8, fp32 / int8 | {fast['fp32']['images_per_s']:.1f} / "
        f"{fast['int8']['images_per_s']:.1f} = **{fast['ratio']['throughput']:.2f}** |",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {"gates": gate_report(), "speed": speed(args.repeats)}
    print("| measurement | value |\n|---|---|")
    print("\n".join(rows(result["gates"], result["speed"])))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
