"""The deployment path, measured in one run: ONNX against torch, and the HTTP service under load.

    python benchmarks/deploy.py [--repeats 5] [--requests 100] [--json out.json]

 1. parity on the test split: ONNX (onnxruntime, CPU) against the torch model in fp32: max abs
    difference of the probabilities, same predictions, same unknown decisions (every method, at the
    export's threshold);
 2. cold start: `python -m abcd.serving.predict ONE_PHOTO --runtime onnx|torch`, fresh processes,
    alternating, median of --repeats (start to exit: imports, model load, decode, forward);
 3. per-image latency of the forward pass at batch 1 and 12: onnxruntime, and torch as predict
    runs it (runtime.precision from params: bf16 where the CPU has it) and in fp32;
 4. the service: `python -m abcd.serving.app` in its own process, --requests concurrent POST /predict
    of mixed files (a good photo; a photo and a non-image; a non-image alone); requests/s,
    p50/p95 latency, status codes, and whether each answer is the expected one;
 5. throughput against the in-process ceiling (benchmarks/serve_load.py): the same --photos test
    photos decoded, preprocessed and classified in this process, no HTTP, at the best batch size and
    onnxruntime setting; the service with 1 client, each request right after its decode and batch-1
    forward in process (median latency against their sum + 15 ms: target <= 1), then --rounds of (a
    ceiling pass of 64 photos, 32 clients sending 2 photos each, one per request), so that both see the same machine
    load: photos/s of each (target for the ratio >= 0.95) and CPU time per photo.
 6. the int8 model against the fp32 one: its gates and speed (benchmarks/int8.py, which runs it alone).
Needs the pipeline's outputs (models/model.pt, models/model.onnx, models/model.int8.onnx, data/prepared,
data/ood): `dvc repro`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import int8  # benchmarks/int8.py, beside this script
import numpy as np
from serve_load import ENV, REPO, print_throughput, server, throughput

METHODS = ("max_softmax", "energy", "knn", "mahalanobis_pp", "vim", "fusion")  # every registered detector


def parity(split_csv: Path, batch_size: int = 12) -> dict:
    """ONNX against torch fp32 on every image of the split."""
    import csv

    import torch

    from abcd.core.params import load_params
    from abcd.data.images import load_rgb
    from abcd.evaluation.calibration import calibrated_probs
    from abcd.features.transforms import eval_transform
    from abcd.models.checkpoint import load_checkpoint
    from abcd.ood.detectors import detector_from_extra
    from abcd.serving.onnx_model import OnnxClassifier

    params = load_params(REPO / "params.yaml")
    with split_csv.open() as f:
        paths = [REPO / r["path"] for r in csv.DictReader(f)]  # manifest paths are relative to the repo
    loaded = load_checkpoint(REPO / "models/model.pt")
    onnx = OnnxClassifier(REPO / "models/model.onnx")
    transform = eval_transform(loaded.preprocess)
    worst, same_class, same_unknown = 0.0, 0, dict.fromkeys(METHODS, 0)
    for i in range(0, len(paths), batch_size):
        images = [load_rgb(p) for p in paths[i : i + batch_size]]
        x = torch.stack([transform(im) for im in images])
        with torch.inference_mode():
            feats = loaded.model.backbone(x).float()
            logits = loaded.model.head(feats).double().numpy()
        probs = calibrated_probs(logits, float(loaded.extra.get("temperature", 1.0)))
        batch = np.stack([onnx.preprocess(im) for im in images])
        for method in METHODS:
            detector = detector_from_extra(loaded.extra, method, params.predict.threshold)
            scores = detector.score(feats.numpy(), logits)
            onnx_probs, onnx_scores = onnx.run(batch, method)
            worst = max(worst, float(np.abs(onnx_probs - probs).max()))
            if method == METHODS[0]:
                same_class += int((onnx_probs.argmax(1) == probs.argmax(1)).sum())
            # Each route at its own threshold, as each predicts: the export recalibrates the fitted
            # detectors' thresholds on the graph's own val scores (src/abcd/stages/export.py).
            threshold = onnx.detector(method, params.predict.threshold).threshold
            same_unknown[method] += int(((onnx_scores > threshold) == (scores > detector.threshold)).sum())
    return {"images": len(paths), "max_abs_diff": worst, "same_class": same_class, "same_unknown": same_unknown}


def cold_start(photo: Path, repeats: int) -> dict:
    times: dict[str, list[float]] = {"onnx": [], "torch": []}
    for _ in range(repeats):
        for runtime in times:
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "abcd.serving.predict", str(photo), "--runtime", runtime],
                cwd=REPO,
                env=ENV,
                capture_output=True,
                text=True,
            )
            times[runtime].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"predict --runtime {runtime} failed:\n{proc.stderr[-2000:]}")
    return {k: {"median": statistics.median(v), "runs": v} for k, v in times.items()}


def latency(photo: Path, repeats: int) -> dict:
    """Forward-only seconds per image at batch 1 and 12 (median of ``repeats`` after a warm-up)."""
    import torch

    from abcd.core.params import load_params
    from abcd.data.images import load_rgb
    from abcd.features.engine import prepare_model
    from abcd.features.runtime import inference, resolve_runtime
    from abcd.models.checkpoint import load_checkpoint
    from abcd.serving.onnx_model import OnnxClassifier

    onnx = OnnxClassifier(REPO / "models/model.onnx")
    one = onnx.preprocess(load_rgb(photo))
    loaded = load_checkpoint(REPO / "models/model.pt")
    runtime = resolve_runtime(load_params(REPO / "params.yaml").runtime)
    prepare_model(loaded.model, runtime)
    out: dict[str, dict[int, float]] = {"onnx": {}, f"torch {runtime.precision}": {}, "torch fp32": {}}

    def best(fn, n: int) -> float:
        fn()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        return statistics.median(runs) / n

    for n in (1, 12):
        batch = np.repeat(one[None], n, axis=0)
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        out["onnx"][n] = best(lambda b=batch: onnx.run(b, "knn"), n)
        with inference(loaded.model):

            def forward(x=x):
                with runtime.autocast():
                    loaded.model.backbone(x)

            out[f"torch {runtime.precision}"][n] = best(forward, n)
            out["torch fp32"][n] = best(lambda x=x: loaded.model.backbone(x), n)
    return out


async def load_test(good: bytes, url: str, requests: int) -> dict:
    import httpx

    bad = b"this is not an image"
    kinds = [
        [("files", ("good.jpg", good, "image/jpeg"))],
        [("files", ("good.jpg", good, "image/jpeg")), ("files", ("bad.jpg", bad, "image/jpeg"))],
        [("files", ("bad.jpg", bad, "image/jpeg"))],
    ]
    async with httpx.AsyncClient(timeout=600) as client:
        reference = (await client.post(url + "/predict", files=kinds[0])).json()["results"][0]

        async def one(i: int) -> tuple[float, int, bool]:
            files = kinds[i % 3]
            start = time.perf_counter()
            r = await client.post(url + "/predict", files=files)
            seconds = time.perf_counter() - start
            results = r.json()["results"]
            ok = len(results) == len(files) and r.status_code == (415 if i % 3 == 2 else 200)
            for (_, (name, _, _)), res in zip(files, results):
                if name == "good.jpg":
                    ok &= res["prediction"] == reference["prediction"] and res["error"] is None
                else:
                    ok &= "cannot decode" in (res["error"] or "")
            return seconds, r.status_code, ok

        start = time.perf_counter()
        answers = await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
    latencies = sorted(a[0] for a in answers)
    codes: dict[int, int] = {}
    for _, code, _ in answers:
        codes[code] = codes.get(code, 0) + 1
    return {
        "requests": requests,
        "files": sum(len(kinds[i % 3]) for i in range(requests)),
        "wall_s": wall,
        "requests_per_s": requests / wall,
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "status_codes": codes,
        "all_answers_right": all(a[2] for a in answers),
    }


def serve_and_load(photo: Path, requests: int) -> dict:
    with server() as (url, _):
        return asyncio.run(load_test(photo.read_bytes(), url, requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--photos", type=int, default=48, help="test photos for the throughput measurement")
    parser.add_argument("--rounds", type=int, default=15, help="of (ceiling, service) for the throughput")
    parser.add_argument("--only-throughput", action="store_true", help="measure 5. alone")
    parser.add_argument(
        "--model", type=Path, default=REPO / "models/model.int8.onnx", help="the ONNX file of 5. (int8: the default)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import csv

    with (REPO / "data/prepared/test.csv").open() as f:
        paths = [REPO / row["path"] for row in csv.DictReader(f)]
    photo = paths[0]
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    if not args.only_throughput:
        result["cold_start"] = cold_start(photo, args.repeats)
        result["latency"] = latency(photo, args.repeats)
        result["parity"] = parity(REPO / "data/prepared/test.csv")
        result["serve"] = serve_and_load(photo, args.requests)
        result["int8"] = {"gates": int8.gate_report(), "speed": int8.speed(args.repeats * 4)}
    result["throughput"] = throughput([p.read_bytes() for p in paths[: args.photos]], args.rounds, args.model)
    print("| measurement | value |\n|---|---|")
    if not args.only_throughput:
        print_deploy(result)
        print("\n".join(int8.rows(result["int8"]["gates"], result["int8"]["speed"])))
    print_throughput(result["throughput"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def print_deploy(result: dict) -> None:
    cs, lat, par, srv = result["cold_start"], result["latency"], result["parity"], result["serve"]
    ratio = cs["onnx"]["median"] / cs["torch"]["median"]
    print(
        f"| cold start, one photo: onnx / torch | {cs['onnx']['median']:.2f} s / {cs['torch']['median']:.2f} s"
        f" = **{ratio:.2f}** |"
    )
    for name, by_batch in lat.items():
        print(f"| forward per image, {name}: batch 1 / 12 | {1000 * by_batch[1]:.1f} / {1000 * by_batch[12]:.1f} ms |")
    n = par["images"]
    print(f"| parity on {n} test images: max abs diff of probabilities | {par['max_abs_diff']:.2e} |")
    print(f"| same predicted class | {par['same_class']} / {n} |")
    print(f"| same unknown decision | {', '.join(f'{m} {v}/{n}' for m, v in par['same_unknown'].items())} |")
    print(
        f"| service, {srv['requests']} concurrent requests ({srv['files']} files) | {srv['requests_per_s']:.1f} req/s, "
        f"p50 {srv['p50_s']:.2f} s, p95 {srv['p95_s']:.2f} s, status {srv['status_codes']}, "
        f"answers right: {srv['all_answers_right']} |"
    )


if __name__ == "__main__":
    main()
