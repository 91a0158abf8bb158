"""The HTTP service through FastAPI's TestClient: every status code, per-file errors, limits, load."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from abcd.core.params import ServeParams, load_params
from abcd.serving.app import create_app
from abcd.serving.onnx_model import OnnxClassifier
from tests.conftest import CLASSES, REPO, make_image


def serve_limits(**changes) -> ServeParams:
    """params.yaml's serve section with ``changes``."""
    return load_params(REPO / "params.yaml").serve.model_copy(update=changes)


LIMITS = serve_limits(
    max_file_mb=0.05, max_files=4, max_request_mb=1, batch_size=3
)  # 50 kB: a small image fits, a big one not


def image_bytes(fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = (96, 72), seed: int = 0, **save) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(exported) -> OnnxClassifier:
    return OnnxClassifier(exported["onnx"])


@pytest.fixture(scope="module")
def client(model) -> TestClient:
    return TestClient(create_app(model, LIMITS, max_pixels=200 * 200))


def test_health_names_the_model(client: TestClient, exported) -> None:
    doc = client.get("/health").json()
    assert doc["classes"] == CLASSES and doc["backbone"] == "efficientnet_lite0" and doc["model"] == "model.onnx"
    assert doc["checkpoint"]["sha256"] == OnnxClassifier(exported["onnx"]).meta["checkpoint"]["sha256"]
    assert doc["method"] == "fusion"


def test_page_is_served_with_no_external_resource(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'id="files"' in page and 'fetch("predict"' in page
    assert "http://" not in page and "https://" not in page  # no CDN


def test_batch_with_good_and_bad_files_is_200_with_per_file_answers(client: TestClient, model, tmp_path: Path) -> None:
    files = [
        ("files", ("a.jpg", image_bytes(seed=1), "image/jpeg")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
        ("files", ("cmyk.jpg", image_bytes(mode="CMYK", seed=2), "image/jpeg")),
        ("files", ("alpha.png", image_bytes("PNG", mode="RGBA", seed=3), "image/png")),
    ]
    response = client.post("/predict", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.jpg", "notes.txt", "cmyk.jpg", "alpha.png"]
    assert "cannot decode" in results[1]["error"] and results[1]["prediction"] is None
    assert "BytesIO" not in results[1]["error"]  # no object address in the message
    detector = model.detector()
    for r in (results[0], results[2], results[3]):
        assert r["error"] is None and set(r["probabilities"]) == set(CLASSES)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        best = max(r["probabilities"], key=r["probabilities"].get)
        assert r["prediction"] == ("unknown" if r["unknown_score"] > detector.threshold else best)
    # The same answer as the inference path gives for the decoded image directly.
    from abcd.inference.pipeline import classify, decode_upload
    from abcd.serving.onnx_model import OnnxRuntime

    (found,) = classify(OnnxRuntime(model, detector), [decode_upload(image_bytes(seed=1), None)], 1)
    assert results[0]["prediction"] == found.label and results[0]["unknown_score"] == found.score
    assert results[0]["probabilities"] == dict(zip(CLASSES, found.probs.tolist()))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (image_bytes(size=(300, 300), quality=10), "exceeds the limit of 40000"),
        (animated_gif(), "animated image (2 frames)"),
        (image_bytes()[:200], "cannot decode"),
        (b"", "empty file"),
    ],
)
def test_prepare_decode_rules_apply_to_uploads(client: TestClient, data: bytes, error: str) -> None:
    files = [
        ("files", ("bad", data, "application/octet-stream")),
        ("files", ("ok.png", image_bytes("PNG"), "image/png")),
    ]
    response = client.post("/predict", files=files)
    assert response.status_code == 200
    bad, ok = response.json()["results"]
    assert error in bad["error"] and ok["error"] is None


def test_no_usable_file_is_415_with_the_reasons(client: TestClient) -> None:
    response = client.post("/predict", files=[("files", ("x.txt", b"hello", "text/plain"))])
    assert response.status_code == 415
    assert "cannot decode" in response.json()["results"][0]["error"]


def test_not_multipart_is_415(client: TestClient) -> None:
    assert client.post("/predict", json={"files": []}).status_code == 415
    assert client.post("/predict", content=image_bytes(), headers={"content-type": "image/jpeg"}).status_code == 415


def test_no_file_is_400(client: TestClient) -> None:
    response = client.post("/predict", data={"other": "x"}, files=[("other", ("a.jpg", image_bytes(), "image/jpeg"))])
    assert response.status_code == 400 and "no file in the field 'files'" in response.json()["detail"]
    bad_body = client.post("/predict", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"})
    assert bad_body.status_code == 400


def test_limits_are_413(client: TestClient) -> None:
    big = image_bytes("PNG", size=(160, 160))
    assert len(big) > LIMITS.max_file_bytes
    response = client.post("/predict", files=[("files", ("big.png", big, "image/png"))])
    assert response.status_code == 413 and "big.png: over 0.05 MB" in response.json()["detail"]
    many = [("files", (f"{i}.jpg", image_bytes(seed=i), "image/jpeg")) for i in range(LIMITS.max_files + 1)]
    response = client.post("/predict", files=many)
    assert response.status_code == 413 and "serve.max_files" in response.json()["detail"]
    assert client.post("/predict", files=many[: LIMITS.max_files]).status_code == 200


def test_concurrent_mixed_requests_get_their_own_answers_and_no_5xx(client: TestClient) -> None:
    good, bad = image_bytes(seed=7), b"GIF89a broken"
    expected = client.post("/predict", files=[("files", ("g.jpg", good, "image/jpeg"))]).json()["results"][0]

    def one(i: int) -> tuple[int, list[dict]]:
        files = [("files", (f"g{i}.jpg", good, "image/jpeg"))] if i % 3 != 2 else []
        files += [("files", (f"b{i}.gif", bad, "image/gif"))] if i % 3 != 0 else []
        r = client.post("/predict", files=files)
        return r.status_code, r.json()["results"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(48)))
    for i, (status, results) in enumerate(answers):
        assert status == (415 if i % 3 == 2 else 200)
        names = [r["filename"] for r in results]
        assert names == [n for n, keep in ((f"g{i}.jpg", i % 3 != 2), (f"b{i}.gif", i % 3 != 0)) if keep]
        for r in results:
            if r["filename"].startswith("g"):
                assert r["prediction"] == expected["prediction"]
                assert r["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
            else:
                assert "cannot decode" in r["error"]


def test_serve_command_reads_its_limits_from_params(tmp_path: Path, repo: Path) -> None:
    import yaml

    from abcd.core.params import ParamsError

    params = yaml.safe_load((repo / "params.yaml").read_text())
    serve = load_params(repo / "params.yaml").serve
    assert (serve.max_file_mb, serve.max_files, serve.max_request_mb, serve.body_timeout_s) == (20, 32, 64, 30)
    params["serve"]["max_files"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"serve\.max_files"):
        load_params(tmp_path / "params.yaml")
    make_image(tmp_path / "unused.jpg")


def test_serving_never_imports_torch_nor_albumentations(exported, repo: Path) -> None:
    """A serve-only install has neither: the app's whole import chain and a request must do without them."""
    code = (
        "import io, json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from PIL import Image\n"
        "from abcd.core.params import load_params\n"
        "from abcd.serving.app import create_app\n"
        "from abcd.serving.onnx_model import OnnxClassifier\n"
        "limits = load_params('params.yaml').serve\n"
        f"app = create_app(OnnxClassifier({str(exported['onnx'])!r}), limits, max_pixels=None)\n"
        "buf = io.BytesIO()\n"
        "Image.new('RGB', (90, 70), 'orange').save(buf, 'PNG')\n"
        "r = TestClient(app).post('/predict', files=[('files', ('a.png', buf.getvalue(), 'image/png'))])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'albumentations'))\n"
        "print(json.dumps({'status': r.status_code, 'prediction': r.json()['results'][0]['prediction'], "
        "'imported': heavy}))"
    )
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}  # this checkout's code, whichever the venv installed
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == 200 and summary["prediction"] in [*CLASSES, "unknown"]
    assert summary["imported"] == []
