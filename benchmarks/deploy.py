"""The deployment path, measured in one run: ONNX against torch, and the HTTP service under load.

    python benchmarks/deploy.py [--repeats 5] [--requests 100] [--json out.json]

 1. parity on the test split: ONNX (onnxruntime, CPU) against the torch model in fp32: max abs
    difference of the probabilities, same predictions, same unknown decisions (every method);
 2. cold start: `python -m abcd.serving.predict ONE_PHOTO --runtime onnx|torch`, fresh processes,
    alternating, median of --repeats (start to exit: imports, model load, decode, forward);
 3. per-image latency of the forward pass at batch 1 and 12: onnxruntime, and torch as predict
    runs it (runtime.precision from params: bf16 where the CPU has it) and in fp32;
 4. the service: `python -m abcd.serving.app` in its own process, --requests concurrent POST /predict
    of mixed files (a good photo; a photo and a non-image; a non-image alone); requests/s,
    p50/p95 latency, status codes, and whether each answer is the expected one;
 5. throughput against the in-process ceiling, side by side (ceiling, service, ceiling again): the
    same --photos test photos decoded, preprocessed and classified in this process at the best batch
    size, no HTTP; then the service with 32 clients sending one photo per request (photos/s, ratio
    to the ceiling, target >= 0.95) and with 1 client (median latency against one decode + one
    batch-1 forward + 15 ms, target <= 1).
Needs the pipeline's outputs (models/model.pt, models/model.onnx, data/prepared): `dvc repro`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]  # this checkout's code, whichever copy the venv has installed

METHODS = ("max_softmax", "energy", "knn", "fusion")
BATCH_SIZES = (1, 4, 8, 12, 16, 32)
# Subprocesses run this checkout's code, whichever copy the venv has installed.
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


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
            threshold = onnx.detector(method, params.predict.threshold).threshold
            assert abs(threshold - detector.threshold) < 1e-9, (method, threshold, detector.threshold)
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


@contextlib.contextmanager
def server(*args: str) -> Iterator[tuple[str, int]]:
    """``python -m abcd.serving.app`` with this checkout's code on a free port, once /ready answers; its URL and pid."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "abcd.serving.app", "--port", str(port), "--access-log", "off", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(1200):
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(60)


def serve_and_load(photo: Path, requests: int) -> dict:
    with server() as (url, _):
        return asyncio.run(load_test(photo.read_bytes(), url, requests))


class Ceiling:
    """The photos in this process, no HTTP: decoded, preprocessed and classified in batches, sequentially."""

    def __init__(self, photos: list[bytes]) -> None:
        from abcd.core.params import load_params
        from abcd.serving.onnx_model import OnnxClassifier, OnnxRuntime

        self.photos, self.max_pixels = photos, load_params(REPO / "params.yaml").prepare.max_pixels
        self.runtimes = {}
        for spin in (True, False):  # onnxruntime's threads busy-waiting or not: the faster counts
            model = OnnxClassifier(REPO / "models/model.onnx", spin=spin)
            self.runtimes[spin] = OnnxRuntime(model, model.detector())

    def prepare(self, photo: bytes, spin: bool) -> np.ndarray:
        from abcd.inference.pipeline import decode_upload

        return self.runtimes[spin].preprocess(decode_upload(photo, self.max_pixels))

    def rate(self, spin: bool, size: int, photos: list[bytes] | None = None) -> float:
        """Photos/s over one pass at batch ``size`` (of ``photos``, default all)."""
        from abcd.inference.pipeline import batches, predict_batch

        photos = self.photos if photos is None else photos
        start = time.perf_counter()
        for chunk in batches(photos, size):
            predict_batch(self.runtimes[spin], np.stack([self.prepare(p, spin) for p in chunk]))
        return len(photos) / (time.perf_counter() - start)

    def best(self) -> tuple[bool, int]:
        """The fastest (spin, batch size): one pass each, after a warm-up pass of each runtime."""
        for spin in self.runtimes:
            self.rate(spin, max(BATCH_SIZES))
        rates = {(spin, size): self.rate(spin, size) for spin in self.runtimes for size in BATCH_SIZES}
        return max(rates, key=rates.__getitem__)

    def parts_ms(self, spin: bool) -> tuple[float, float]:
        """Medians over the photos of one decode + preprocess and of one batch-1 forward pass."""
        from abcd.inference.pipeline import predict_batch

        decode = [_seconds(lambda p=p: self.prepare(p, spin)) for p in self.photos]
        one = self.prepare(self.photos[0], spin)[None]
        forward = [_seconds(lambda: predict_batch(self.runtimes[spin], one)) for _ in self.photos]
        return 1000 * statistics.median(decode), 1000 * statistics.median(forward)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def post_requests(photos: list[bytes]) -> list[bytes]:
    """Each photo as a whole HTTP/1.1 POST /predict, built once: the load generator spends no CPU on it."""
    out = []
    for i, photo in enumerate(photos):
        part = f'--bnd\r\nContent-Disposition: form-data; name="files"; filename="{i}.jpg"\r\n\r\n'.encode()
        body = part + photo + b"\r\n--bnd--\r\n"
        head = "POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: multipart/form-data; boundary=bnd\r\n"
        out.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


def _answered(head: bytes, body: bytes) -> bool:
    return head.startswith(b"HTTP/1.1 200") and json.loads(body)["results"][0]["error"] is None


def _length(head: bytes) -> int:
    fields = dict(line.lower().split(b": ", 1) for line in head.strip().split(b"\r\n")[1:])
    return int(fields[b"content-length"])


async def _client(port: int, requests: list[bytes], latencies: list[float], ok: list[bool]) -> None:
    """One keep-alive connection sending prepared requests one after another (no client library: its CPU
    time would be taken from the server's, on the same cores)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for request in requests:
        start = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(_length(head))
        latencies.append(time.perf_counter() - start)
        ok.append(_answered(head, body))
    writer.close()


def http_load(port: int, requests: list[bytes], clients: int, per_client: int) -> dict:
    """``clients`` connections, each POSTing one photo per request ``per_client`` times: photos/s, latencies."""
    plans = [[requests[(c * per_client + k) % len(requests)] for k in range(per_client)] for c in range(clients)]

    async def run() -> tuple[float, list[float], list[bool]]:
        latencies: list[float] = []
        ok: list[bool] = []
        start = time.perf_counter()
        await asyncio.gather(*(_client(port, plan, latencies, ok) for plan in plans))
        return time.perf_counter() - start, latencies, ok

    wall, latencies, ok = asyncio.run(run())
    return {
        "photos": len(latencies),
        "photos_per_s": len(latencies) / wall,
        "median_ms": 1000 * statistics.median(latencies),
        "all_answered": all(ok),
    }


def one_client(ceiling: Ceiling, spin: bool, port: int, requests: list[bytes]) -> dict:
    """Per photo, in turn: its decode + preprocess and a batch-1 forward in this process, then its request
    to the service on one keep-alive connection; the medians of each, measured under the same load."""
    from abcd.inference.pipeline import predict_batch

    decode, forward, latencies, ok = [], [], [], []
    with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rb") as stream:
        for photo, request in zip(ceiling.photos, requests):
            x = ceiling.prepare(photo, spin)
            decode.append(_seconds(lambda p=photo: ceiling.prepare(p, spin)))
            forward.append(_seconds(lambda x=x: predict_batch(ceiling.runtimes[spin], x[None])))
            start = time.perf_counter()
            sock.sendall(request)
            head = b"".join(iter(stream.readline, b"\r\n")) + b"\r\n"
            body = stream.read(_length(head))
            latencies.append(time.perf_counter() - start)
            ok.append(_answered(head, body))
    return {
        "photos": len(latencies),
        "median_ms": 1000 * statistics.median(latencies),
        "decode_ms": 1000 * statistics.median(decode),
        "forward_1_ms": 1000 * statistics.median(forward),
        "all_answered": all(ok),
    }


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of this process (every thread), or of process ``pid``."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(photos: list[bytes], rounds: int) -> dict:
    """The service against the in-process ceiling, side by side: once the ceiling's best configuration is
    found, 1 client (interleaved with its in-process parts), then ``rounds`` of (a ceiling pass, 32 clients
    sending one photo each): alternating short runs see the same machine load (other jobs come and go)."""
    ceiling = Ceiling(photos)
    spin, size = ceiling.best()
    requests = post_requests(photos)
    totals = {"ceiling": [0, 0.0, 0.0], "service": [0, 0.0, 0.0]}  # photos, seconds, CPU seconds
    with server() as (url, pid):
        port = int(url.rsplit(":", 1)[1])
        http_load(port, requests, 32, 1)  # warm-up: connections, the service's buffers
        one = one_client(ceiling, spin, port, requests)
        for i in range(rounds):
            batch = [requests[(32 * i + k) % len(requests)] for k in range(32)]
            cpu = cpu_seconds()
            rate = ceiling.rate(spin, size, [ceiling.photos[(32 * i + k) % len(photos)] for k in range(32)])
            totals["ceiling"] = [a + b for a, b in zip(totals["ceiling"], (32, 32 / rate, cpu_seconds() - cpu))]
            cpu = cpu_seconds(pid)
            served = http_load(port, batch, 32, 1)
            assert served["all_answered"], "the service failed a photo"
            used = (32, 32 / served["photos_per_s"], cpu_seconds(pid) - cpu)
            totals["service"] = [a + b for a, b in zip(totals["service"], used)]
    rates = {k: n / s for k, (n, s, _) in totals.items()}
    cpu_ms = {k: 1000 * c / n for k, (n, _, c) in totals.items()}
    budget_ms = one["decode_ms"] + one["forward_1_ms"] + 15
    return {
        "ceiling": {"spin": spin, "batch_size": size},
        "photos_per_s": rates,
        "cpu_ms_per_photo": cpu_ms,
        "rounds": rounds,
        "one_client": one,
        "ratio_32_clients": rates["service"] / rates["ceiling"],
        "one_client_budget_ms": budget_ms,
        "ratio_1_client": one["median_ms"] / budget_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--photos", type=int, default=48, help="test photos for the throughput measurement")
    parser.add_argument("--rounds", type=int, default=15, help="of (ceiling, service) for the throughput")
    parser.add_argument("--only-throughput", action="store_true", help="measure 5. alone")
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
    result["throughput"] = throughput([p.read_bytes() for p in paths[: args.photos]], args.rounds)
    print("| measurement | value |\n|---|---|")
    if not args.only_throughput:
        print_deploy(result)
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


def print_throughput(tp: dict) -> None:
    ceil, one, rates, cpu = tp["ceiling"], tp["one_client"], tp["photos_per_s"], tp["cpu_ms_per_photo"]
    spin = "spinning" if ceil["spin"] else "not spinning"
    print(
        f"| in-process ceiling: decode + preprocess + forward, best of batch sizes {BATCH_SIZES}, onnxruntime "
        f"threads spinning or not (batch {ceil['batch_size']}, {spin}); {tp['rounds']} passes of 32 photos | "
        f"{rates['ceiling']:.1f} photos/s, {cpu['ceiling']:.0f} CPU ms per photo |"
    )
    print(
        f"| service, 32 clients, one photo per request; {tp['rounds']} rounds of 32, each after a ceiling pass | "
        f"{rates['service']:.1f} photos/s, {cpu['service']:.0f} CPU ms per photo (server process) |"
    )
    print(f"| **32 clients / ceiling** (target >= 0.95) | **{tp['ratio_32_clients']:.3f}** |")
    print(
        f"| service, 1 client ({one['photos']} photos, each after its in-process parts) | median "
        f"{one['median_ms']:.1f} ms; one decode + preprocess {one['decode_ms']:.1f} ms + batch-1 forward "
        f"{one['forward_1_ms']:.1f} ms + 15 ms = {tp['one_client_budget_ms']:.1f} ms |"
    )
    print(f"| **1-client median / that sum** (target <= 1) | **{tp['ratio_1_client']:.3f}** |")


if __name__ == "__main__":
    main()
