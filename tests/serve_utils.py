"""A real ``abcd-serve`` process on 127.0.0.1, raw HTTP/1.1 over a socket, and the server's peak memory."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory (VmHWM) since start or the last :meth:`reset_peak`."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS in /proc")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        return exchange(self.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


@contextmanager
def serve(model: Path, params: Path, *args: str, factory: bool = False, timeout: float = 120) -> Iterator[Server]:
    """``python -m abcd.serving.app`` (or, with ``factory``, ``uvicorn --factory`` on the app factory) on a
    free port with this checkout's code, until /ready answers 200."""
    port = free_port()
    log = params.parent / f"serve-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    if factory:
        env.update(ABCD_SERVE_MODEL=str(model), ABCD_SERVE_PARAMS=str(params))
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "abcd.serving.app:create_app_from_env"]
        cmd += ["--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "abcd.serving.app", "--port", str(port), "--model", str(model)]
        cmd += ["--params", str(params)]
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.alive, log.read_text()
            try:
                if server.get("/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready in {timeout} s:\n{log.read_text()}"
            time.sleep(0.2)
        yield server
    finally:
        if server.alive:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def exchange(port: int, head: bytes, chunks: Iterable[bytes] = (), timeout: float = 60) -> tuple[int, bytes]:
    """Send ``head`` then ``chunks`` until the server answers; (status, everything read). 0: no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:  # answered early (413): stop sending
                break
            try:
                sock.sendall(chunk)
            except OSError:  # closed on us: read what it said
                break
        return read_response(sock)


def body_json(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    try:
        while block := sock.recv(65536):
            data += block
            if b"\r\n\r\n" in data and _complete(data):
                break
    except OSError:
        pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def multipart(
    files: Iterable[tuple[str, bytes]], fields: Iterable[tuple[str, bytes]] = (), boundary: str = "b0und"
) -> bytes:
    """A multipart/form-data body: files in the field ``files``, then the named text ``fields``."""
    out = io.BytesIO()
    for name, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'.encode())
        out.write(b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    for name, value in fields:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def post_head(length: int | None, boundary: str = "b0und", content_type: str = "multipart/form-data") -> bytes:
    """Request line and headers of a POST /predict: with a Content-Length, or chunked when ``length`` is None."""
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}; boundary={boundary}\r\n{size}\r\n\r\n"
    ).encode()


def chunked(blocks: Iterable[bytes]) -> Iterator[bytes]:
    for block in blocks:
        yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
    yield b"0\r\n\r\n"


def png(width: int, height: int, colour: tuple[int, int, int] = (30, 140, 60)) -> bytes:
    """A flat PNG: large when decoded, a few hundred bytes per megapixel on the wire."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()
