"""Hostile uploads against a real ``abcd-serve`` process on 127.0.0.1: the status, the server still alive,
its peak memory under the bound. Slow: real decodes of images of tens of megapixels, real timeouts."""

from __future__ import annotations

import json
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.serve_utils import Server, body_json, chunked, exchange, multipart, png, post_head, serve
from tests.test_serve import image_bytes

pytestmark = pytest.mark.slow

BOUND_MB = 2000  # peak RSS of the server process, whatever the uploads
PHOTO = image_bytes(size=(320, 240), seed=5)
HUGE = (6000, 6500)  # 39 Mpx, under prepare.max_pixels (40 M): 130 kB as a flat PNG


def params_file(path: Path, **serve) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["serve"].update(serve)
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory):
    params = params_file(tmp_path_factory.mktemp("serve") / "params.yaml", body_timeout_s=2)
    with serve(exported["onnx"], params, "--access-log", "json") as running:
        yield running


def post(server: Server, body: bytes, **kw) -> tuple[int, bytes]:
    return exchange(server.port, post_head(len(body), **kw), [body])


def assert_alive(server: Server) -> None:
    assert server.alive and server.get("/health")[0] == 200
    status, response = post(server, multipart([("photo.jpg", PHOTO)]))
    assert status == 200 and body_json(response)["results"][0]["error"] is None


def test_1_a_thin_image_is_a_per_file_error_and_costs_nothing(server: Server) -> None:
    before = server.rss_mb()
    server.reset_peak()
    for thin in (png(1, 100_000), png(1, 4000)):
        status, response = post(server, multipart([("thin.png", thin), ("photo.jpg", PHOTO)]))
        assert status == 200
        bad, good = body_json(response)["results"]
        assert "aspect ratio" in bad["error"] and "over the limit of 20:1" in bad["error"]
        assert good["error"] is None and good["prediction"]
    assert server.peak_rss_mb() - before < 100  # the 1x4000 image took a gigabyte before the limit
    assert_alive(server)


def test_2_a_chunked_upload_is_413_once_past_the_limit_and_never_spooled_beyond(server: Server) -> None:
    before, sent = server.rss_mb(), []
    server.reset_peak()

    def blocks():
        yield b'--b0und\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'
        for _ in range(3000):  # 3 GB if it were all read
            sent.append(1)
            yield b"y" * 1_000_000

    status, response = exchange(server.port, post_head(None), chunked(blocks()))
    assert status == 413 and "serve.max_request_mb" in body_json(response)["detail"]
    assert len(sent) < 64 + 16  # the limit, and what the sockets' buffers held
    assert server.peak_rss_mb() - before < 100
    assert_alive(server)


def test_2_form_fields_are_refused_at_the_first_one_too_many_or_too_large(server: Server) -> None:
    before = server.rss_mb()
    server.reset_peak()
    field = multipart([], [("note", b"x" * 1_000_000)]).removesuffix(b"--b0und--\r\n")
    status, response = exchange(server.port, post_head(None), chunked(field for _ in range(900)))
    assert status == 413 and "form field over 64 KB" in body_json(response)["detail"]
    small = multipart([("photo.jpg", PHOTO)], [(f"f{i}", b"1") for i in range(900)])
    status, response = post(server, small)
    assert status == 413 and "serve.max_fields" in body_json(response)["detail"]
    assert server.peak_rss_mb() - before < 100
    assert_alive(server)


def test_2_a_declared_length_over_the_limit_is_413_before_any_body(server: Server) -> None:
    status, response = exchange(server.port, post_head(642_000_000))  # headers only
    assert status == 413 and "642000000 bytes" in body_json(response)["detail"]
    assert_alive(server)


def test_3_decoded_pixels_of_one_request_are_bounded(server: Server) -> None:
    """16 images of 39 Mpx in one 2 MB request: 1.9 GB decoded at once, without the budget."""
    server.reset_peak()
    status, response = post(server, multipart([(f"{i}.png", png(*HUGE)) for i in range(16)]))
    assert status == 200 and all(r["error"] is None for r in body_json(response)["results"])
    assert server.peak_rss_mb() < BOUND_MB
    assert_alive(server)


def test_3_decoded_pixels_across_requests_are_bounded(server: Server) -> None:
    """3 concurrent requests of 4 images of 39 Mpx."""
    server.reset_peak()
    body = multipart([(f"{i}.png", png(*HUGE, colour=(i, 9, 9))) for i in range(4)])
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: post(server, body), range(3)))
    assert [status for status, _ in answers] == [200, 200, 200]
    assert server.peak_rss_mb() < BOUND_MB
    assert_alive(server)


def test_4_a_client_stalled_after_its_headers_gets_408(server: Server) -> None:
    start = time.monotonic()
    status, response = exchange(server.port, post_head(100_000) + b"--b0und\r\n")
    assert status == 408 and "serve.body_timeout_s" in body_json(response)["detail"]
    assert 1.5 < time.monotonic() - start < 30
    assert_alive(server)


def test_4_sigterm_ends_the_server_within_the_shutdown_timeout(exported, tmp_path: Path) -> None:
    """Stalled clients and a body timeout longer than the shutdown timeout: the latter ends it."""
    params = params_file(tmp_path / "params.yaml", body_timeout_s=300, shutdown_timeout_s=2)
    with serve(exported["onnx"], params) as server:
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        for sock in stalled:
            sock.sendall(post_head(100_000) + b"--b0und\r\n")
        time.sleep(0.5)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
        assert time.monotonic() - start < 15
        for sock in stalled:
            sock.close()
    assert "timeout graceful shutdown exceeded" in server.log.read_text()


def test_5_the_surface(server: Server) -> None:
    """A hang-up mid-upload is one INFO line; HEAD; docs off; case-insensitive type; long names; JSON log."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(post_head(100_000) + b'--b0und\r\nContent-Disposition: form-data; name="files"; filename="a"')
        time.sleep(0.3)
    time.sleep(1)
    assert server.get("/", "HEAD")[0] == 200 and server.get("/docs")[0] == 404
    body = multipart([("photo.jpg", PHOTO)])
    assert post(server, body, content_type="Multipart/Form-Data")[0] == 200
    status, response = post(server, multipart([("n" * 10_000 + ".jpg", PHOTO)]))
    assert status == 400 and "file names up to about 4,000 characters" in body_json(response)["detail"]
    log = server.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log
    assert len([line for line in log.splitlines() if "client disconnected during POST /predict" in line]) == 1
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"latency_ms", "status", "files", "path"} <= set(records[-1])
    assert any(r["status"] == 413 for r in records) and any(r["files"] == 1 for r in records)
    assert_alive(server)


def test_6_images_of_concurrent_clients_share_forward_passes(server: Server) -> None:
    start = json.loads(server.get("/health")[1].partition(b"\r\n\r\n")[2])["forward_passes"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: post(server, multipart([(f"{i}.jpg", PHOTO)])), range(32)))
    assert all(status == 200 for status, _ in answers)
    end = json.loads(server.get("/health")[1].partition(b"\r\n\r\n")[2])["forward_passes"]
    images, passes = end["images"] - start["images"], end["passes"] - start["passes"]
    assert images == 32 and passes < 32  # some passes carried images of two clients
    assert_alive(server)


@pytest.mark.parametrize("how", ["workers", "factory"])
def test_6_several_workers_and_the_app_factory(exported, tmp_path: Path, how: str) -> None:
    params = params_file(tmp_path / "params.yaml")
    args = ("--workers", "2") if how == "workers" else ()
    with serve(exported["onnx"], params, *args, factory=how == "factory") as server:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: post(server, multipart([(f"{i}.jpg", PHOTO)])), range(8)))
        assert all(status == 200 for status, _ in answers)
        assert_alive(server)
