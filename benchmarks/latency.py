"""Inference latency and throughput of the predict command, against the test stage.

    python benchmarks/latency.py [--repeats 3] [--images 500] [--json out.json]

Every number is a wall-clock time of a fresh process, from start to exit, so it includes
Python and torch start-up, reading the checkpoint and the backbone's first call:
 1. one image end to end: `python -m abcd.serving.predict IMAGE` (median of --repeats runs);
 2. throughput: `python -m abcd.serving.predict` on --images distinct prepared photos at once;
 3. the test stage (`python -m abcd.stages.test`) on the test split and the OOD set, the same way: as the
    pipeline runs it (cached features) and forced through the images.
Needs the pipeline's outputs (models/model.pt, data/prepared): run `dvc repro` first.
The method and batch size are those of params.yaml (unknown.method, predict.batch_size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    """Seconds from process start to exit; the command must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def prepared_images(n: int) -> list[str]:
    """``n`` distinct prepared photos (all splits, sorted): predict drops duplicate paths."""
    images = sorted(str(p.relative_to(REPO)) for p in (REPO / "data/prepared/images").rglob("*") if p.is_file())
    if len(images) < n:
        raise SystemExit(f"only {len(images)} prepared images, asked for {n} (run: dvc repro prepare)")
    return images[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    py = sys.executable
    n_test = 0
    for manifest in (REPO / "data/prepared/test.csv", REPO / "data/ood/manifest.csv"):
        with manifest.open() as f:
            n_test += sum(1 for _ in f) - 1
    images = prepared_images(args.images)

    one = [timed([py, "-m", "abcd.serving.predict", images[0], "--format", "json"]) for _ in range(args.repeats)]
    many = timed([py, "-m", "abcd.serving.predict", *images, "--format", "csv"])
    stage = [py, "-m", "abcd.stages.test", "--model", "models/model.pt", "--data", "data/prepared", "--ood", "data/ood"]
    with tempfile.TemporaryDirectory() as tmp:
        outs = ["--out", f"{tmp}/t.csv", "--ood-out", f"{tmp}/o.csv", "--detectors", f"{tmp}/d.json"]
        # As the pipeline runs it (head on featurize's cached features), and forced through the
        # images (no cache: decode + backbone, predict's path) for a like-for-like comparison.
        test = timed([*stage, "--features", "data/features", *outs])
        test_images = timed([*stage, "--features", f"{tmp}/no-cache", *outs])

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "one_image_s": {"median": statistics.median(one), "runs": one},
        "predict_many": {"images": len(images), "seconds": many, "images_per_s": len(images) / many},
        "test_stage": {"images": n_test, "seconds": test, "images_per_s": n_test / test},
        "test_stage_from_images": {"images": n_test, "seconds": test_images, "images_per_s": n_test / test_images},
    }
    print(f"machine: {result['machine']}")
    print(f"one image, process start to answer: {result['one_image_s']['median']:.2f} s (median of {args.repeats})")
    print(f"predict, {len(images)} images in one process: {many:.1f} s = {len(images) / many:.1f} images/s")
    for how, seconds in (("cached features", test), ("from the images", test_images)):
        print(f"test stage, {n_test} test + OOD images, {how}: {seconds:.1f} s = {n_test / seconds:.1f} images/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
