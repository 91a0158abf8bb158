"""The service's bounds and surface, in process: body and form limits, timeouts, the pixel budget, batching
across requests, HEAD, docs, readiness, the JSON access log, a client hanging up."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from abcd.inference.pipeline import Rule
from abcd.serving.app import create_app, create_app_from_env, main
from abcd.serving.batching import Batcher
from abcd.serving.limits import PixelBudget
from abcd.serving.onnx_model import OnnxClassifier
from tests.conftest import CLASSES
from tests.serve_utils import multipart
from tests.test_serve import image_bytes, serve_limits

LIMITS = serve_limits(max_file_mb=0.1, max_request_mb=0.2, max_fields=2, body_timeout_s=0.3)
START = b'--b0und\r\nContent-Disposition: form-data; name="files"'  # a body cut short


@pytest.fixture(scope="module")
def model(exported) -> OnnxClassifier:
    return OnnxClassifier(exported["onnx"])


@pytest.fixture(scope="module")
def app(model):
    return create_app(model, LIMITS, max_pixels=None, access_log=True)


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


def post(client: TestClient, body: bytes, content_type: str = "multipart/form-data; boundary=b0und", **kw):
    return client.post("/predict", content=body, headers={"content-type": content_type}, **kw)


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(client) -> None:
    body = multipart([("a.png", b"x" * 300_000)])
    response = post(client, body)
    assert response.status_code == 413 and "serve.max_request_mb" in response.json()["detail"]
    assert response.headers["connection"] == "close"


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ([("a", b"1"), ("b", b"2"), ("c", b"3")], "more than 2 non-file form fields per request (serve.max_fields)"),
        ([("a", b"x" * 70_000)], "a non-file form field over 64 KB"),
    ],
)
def test_form_fields_are_bounded_in_count_and_size(client, fields, detail) -> None:
    response = post(client, multipart([("a.png", image_bytes("PNG"))], fields))
    assert response.status_code == 413 and response.json()["detail"] == detail


def test_content_type_is_matched_case_insensitively(client) -> None:
    body = multipart([("a.png", image_bytes("PNG"))])
    response = post(client, body, content_type="Multipart/Form-Data; boundary=b0und")
    assert response.status_code == 200 and response.json()["results"][0]["error"] is None


def test_long_file_names_up_to_the_parsers_limit_and_a_message_past_it(client) -> None:
    ok = post(client, multipart([("n" * 4000 + ".png", image_bytes("PNG"))]))
    assert ok.status_code == 200 and ok.json()["results"][0]["filename"] == "n" * 4000 + ".png"
    too_long = post(client, multipart([("n" * 10_000 + ".png", image_bytes("PNG"))]))
    assert too_long.status_code == 400
    assert "file names up to about 4,000 characters" in too_long.json()["detail"]


def test_head_works_and_docs_are_off_unless_asked_for(client, model) -> None:
    for path in ("/", "/health", "/ready"):
        assert client.head(path).status_code in (200, 503) and client.head(path).content == b""
    assert client.head("/").status_code == 200
    assert [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [404, 404, 404]
    with_docs = TestClient(create_app(model, LIMITS, max_pixels=None, docs=True))
    assert with_docs.get("/docs").status_code == 200 and with_docs.get("/openapi.json").status_code == 200


def test_ready_only_after_the_warm_up_and_health_before(model) -> None:
    app = create_app(model, LIMITS, max_pixels=None)
    plain = TestClient(app)  # no lifespan: no warm-up has run
    assert plain.get("/health").status_code == 200
    not_ready = plain.get("/ready")
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
    with TestClient(app) as started:  # runs the lifespan: the warm-up in the background
        deadline = time.monotonic() + 120
        while started.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert started.get("/ready").json() == {"ready": True}


def test_the_access_log_is_one_json_line_with_latency_status_and_files(client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="abcd.serving.access"):
        post(client, multipart([("a.png", image_bytes("PNG")), ("b.txt", b"text")]))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "abcd.serving.access"]
    record = json.loads(line)
    assert record["method"] == "POST" and record["path"] == "/predict"
    assert record["status"] == 200 and record["files"] == 2 and record["latency_ms"] > 0


def _call(app, messages: Iterable[dict], timeout: float = 30) -> tuple[list[dict], float]:
    """Run the ASGI app on one POST /predict whose body arrives as ``messages`` (then never)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b0und")],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 80),
    }
    queue = iter(messages)
    sent: list[dict] = []

    async def receive() -> dict:
        for message in queue:
            return message
        await asyncio.sleep(3600)  # a client that stopped sending
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    start = time.perf_counter()
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout))
    return sent, time.perf_counter() - start


def test_a_streamed_body_is_413_as_soon_as_it_crosses_the_limit(app) -> None:
    """No Content-Length (chunked): the body is counted as it arrives and never read past the limit."""
    read = []

    def chunks():
        yield {"type": "http.request", "body": START + b'; filename="a.png"\r\n\r\n', "more_body": True}
        for _ in range(1000):  # 64 MB if it were all read
            read.append(1)
            yield {"type": "http.request", "body": b"y" * 65536, "more_body": True}

    sent, _ = _call(app, chunks())
    assert sent[0]["status"] == 413 and "over 200000 bytes" in json.loads(sent[1]["body"])["detail"]
    assert len(read) == 4  # 200 kB is 4 chunks of 64 KiB: the one that crossed it was the last read


def test_a_client_silent_mid_body_gets_408_and_the_connection_closed(app) -> None:
    first = {
        "type": "http.request",
        "body": b'--b0und\r\nContent-Disposition: form-data; name="files"',
        "more_body": True,
    }
    sent, seconds = _call(app, [first])
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert "serve.body_timeout_s" in json.loads(sent[1]["body"])["detail"]
    assert 0.25 < seconds < 10


def test_a_client_hanging_up_mid_upload_is_one_info_line(app, caplog) -> None:
    first = {
        "type": "http.request",
        "body": b'--b0und\r\nContent-Disposition: form-data; name="files"',
        "more_body": True,
    }
    with caplog.at_level(logging.INFO):
        sent, _ = _call(app, [first, {"type": "http.disconnect"}])
    assert sent == []  # nobody to answer
    logged = [r for r in caplog.records if r.name.startswith(("abcd", "uvicorn")) and r.name != "abcd.serving.access"]
    lines = [(r.levelname, r.getMessage()) for r in logged]
    assert [level for level, _ in lines] == ["INFO"]
    assert "127.0.0.1:5555: client disconnected during POST /predict" in lines[0][1]


def test_the_pixel_budget_serves_in_order_and_cuts_a_claim_to_its_capacity() -> None:
    budget = PixelBudget(100)
    assert budget.acquire(60) == 60
    order: list[str] = []

    def claim(name: str, n: int) -> None:
        budget.acquire(n)
        order.append(name)

    big = threading.Thread(target=claim, args=("big", 60))
    big.start()
    time.sleep(0.1)
    small = threading.Thread(target=claim, args=("small", 10))  # fits now, but comes after "big"
    small.start()
    time.sleep(0.1)
    assert order == [] and budget.used == 60
    budget.release(60)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"] and budget.used == 70
    budget.release(70)
    assert budget.acquire(10**9) == 100  # the largest image still gets its turn, alone


class CountingRuntime:
    """A model stand-in that records its batch sizes."""

    classes = CLASSES
    rule = Rule("fusion", 0.5, 1.0)

    def __init__(self, seconds: float) -> None:
        self.seconds, self.sizes = seconds, []

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.seconds)
        self.sizes.append(len(batch))
        n = len(batch)
        return np.full((n, len(CLASSES)), 1 / len(CLASSES)), batch[:, 0, 0, 0].astype(np.float64)


def test_images_of_concurrent_requests_share_forward_passes_and_keep_their_answers() -> None:
    runtime = CountingRuntime(0.05)
    batcher = Batcher(runtime, batch_size=4, wait_s=0.2)
    batcher.expect(12)
    futures = []

    def request(i: int) -> None:
        futures.append((i, batcher.submit(np.full((3, 2, 2), i, np.float32))))
        batcher.arrived()

    threads = [threading.Thread(target=request, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(f.result(10).score == i for i, f in futures)  # each request its own image's answer
    assert sum(runtime.sizes) == 12 and max(runtime.sizes) == 4 and len(runtime.sizes) <= 6
    batcher.close()


def test_a_lone_image_does_not_wait_for_a_batch() -> None:
    runtime = CountingRuntime(0.0)
    batcher = Batcher(runtime, batch_size=8, wait_s=30.0)
    start = time.perf_counter()
    batcher.submit(np.zeros((3, 2, 2), np.float32)).result(10)
    assert time.perf_counter() - start < 5 and runtime.sizes == [1]
    batcher.close()


def test_the_app_factory_reads_its_settings_from_the_environment(exported, repo, monkeypatch) -> None:
    monkeypatch.setenv("ABCD_SERVE_MODEL", str(exported["onnx"]))
    monkeypatch.setenv("ABCD_SERVE_PARAMS", str(repo / "params.yaml"))
    monkeypatch.setenv("ABCD_SERVE_THREADS", "1")
    monkeypatch.setenv("ABCD_SERVE_DOCS", "1")
    for name in ("abcd", "abcd.serving.access"):  # the factory gives them handlers: undone after the test
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    client = TestClient(create_app_from_env())
    assert logging.getLogger("abcd").handlers and not logging.getLogger("abcd.serving.access").propagate
    assert client.get("/health").json()["limits"]["max_request_mb"] == 64
    assert client.get("/docs").status_code == 200
    files = [("files", ("a.png", image_bytes("PNG"), "image/png"))]
    assert client.post("/predict", files=files).status_code == 200


def test_workers_must_be_a_positive_count(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--workers", "0"])
    assert "--workers must be >= 1" in capsys.readouterr().err
