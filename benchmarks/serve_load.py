"""The service against the in-process ceiling, for benchmarks/deploy.py: a server process, a light load
generator (prepared requests on raw keep-alive connections), and the ceiling it is held to: the same
photos decoded, preprocessed and classified in this process at the best batch size, no HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
BATCH_SIZES = (1, 4, 8, 12, 16, 32)
# Subprocesses run this checkout's code too.
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


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


class Ceiling:
    """The photos in this process, no HTTP: decoded, preprocessed and classified in batches, sequentially."""

    def __init__(self, photos: list[bytes], model_path: Path) -> None:
        from abcd.core.params import load_params
        from abcd.serving.onnx_model import OnnxClassifier, OnnxRuntime

        self.photos, self.max_pixels = photos, load_params(REPO / "params.yaml").prepare.max_pixels
        self.runtimes = {}
        for spin in (True, False):  # onnxruntime's threads busy-waiting or not: the faster counts
            model = OnnxClassifier(model_path, spin=spin)
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


def throughput(photos: list[bytes], rounds: int, model: Path, clients: int = 32, per_client: int = 2) -> dict:
    """The service against the in-process ceiling, side by side: once the ceiling's best configuration is
    found, 1 client (interleaved with its in-process parts), then ``rounds`` of (a ceiling pass, ``clients``
    sending ``per_client`` photos each, the same photos): short alternating runs see the same machine load
    (other jobs come and go), and each side's photos/s is its photos over its seconds, all rounds together."""
    ceiling = Ceiling(photos, model)
    spin, size = ceiling.best()
    requests = post_requests(photos)
    n = clients * per_client
    totals = {"ceiling": np.zeros(3), "service": np.zeros(3)}  # photos, seconds, CPU seconds
    ratios = []
    with server("--model", str(model)) as (url, pid):
        port = int(url.rsplit(":", 1)[1])
        http_load(port, requests, clients, 1)  # warm-up: connections, the service's buffers
        one = one_client(ceiling, spin, port, requests)
        for i in range(rounds):
            take = [(n * i + k) % len(photos) for k in range(n)]
            cpu = cpu_seconds()
            rate = ceiling.rate(spin, size, [photos[k] for k in take])
            totals["ceiling"] += (n, n / rate, cpu_seconds() - cpu)
            cpu = cpu_seconds(pid)
            served = http_load(port, [requests[k] for k in take], clients, per_client)
            assert served["all_answered"], "the service failed a photo"
            totals["service"] += (n, n / served["photos_per_s"], cpu_seconds(pid) - cpu)
            ratios.append(served["photos_per_s"] / rate)
    rates = {k: photos_ / seconds for k, (photos_, seconds, _) in totals.items()}
    budget_ms = one["decode_ms"] + one["forward_1_ms"] + 15
    return {
        "ceiling": {"spin": spin, "batch_size": size},
        "photos_per_s": rates,
        "cpu_ms_per_photo": {k: 1000 * cpu / photos_ for k, (photos_, _, cpu) in totals.items()},
        "rounds": rounds,
        "photos_per_round": n,
        "one_client": one,
        "ratio_32_clients": rates["service"] / rates["ceiling"],
        "ratios_per_round": ratios,
        "one_client_budget_ms": budget_ms,
        "ratio_1_client": one["median_ms"] / budget_ms,
    }


def print_throughput(tp: dict) -> None:
    ceil, one, rates, cpu = tp["ceiling"], tp["one_client"], tp["photos_per_s"], tp["cpu_ms_per_photo"]
    n = tp["photos_per_round"]
    spin = "spinning" if ceil["spin"] else "not spinning"
    print(
        f"| in-process ceiling: decode + preprocess + forward, best of batch sizes {BATCH_SIZES}, onnxruntime "
        f"threads spinning or not (batch {ceil['batch_size']}, {spin}); {tp['rounds']} passes of {n} photos | "
        f"{rates['ceiling']:.1f} photos/s, {cpu['ceiling']:.0f} CPU ms per photo |"
    )
    print(
        f"| service, 32 clients, one photo per request; {tp['rounds']} rounds of {n}, each after a ceiling pass | "
        f"{rates['service']:.1f} photos/s, {cpu['service']:.0f} CPU ms per photo (server process) |"
    )
    low, high = min(tp["ratios_per_round"]), max(tp["ratios_per_round"])
    print(
        f"| **32 clients / ceiling** (target >= 0.95) | **{tp['ratio_32_clients']:.3f}** "
        f"(single rounds: {low:.2f} to {high:.2f}) |"
    )
    print(
        f"| service, 1 client ({one['photos']} photos, each after its in-process parts) | median "
        f"{one['median_ms']:.1f} ms; one decode + preprocess {one['decode_ms']:.1f} ms + batch-1 forward "
        f"{one['forward_1_ms']:.1f} ms + 15 ms = {tp['one_client_budget_ms']:.1f} ms |"
    )
    print(f"| **1-client median / that sum** (target <= 1) | **{tp['ratio_1_client']:.3f}** |")
