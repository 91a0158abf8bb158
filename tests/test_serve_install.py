"""The serve-only install (docs/deploy.md): the exported model served and classified without torch.

The slow test builds what a deploy builds: a fresh venv, ``pip install -r requirements/serve.txt
'.[serve]'`` through the package index (pip's cache makes a rerun quick), then, from a folder
holding only ``model.onnx``, ``abcd-serve`` answers ``POST /predict`` and ``abcd-predict --runtime
onnx`` classifies. Without the index it skips with the reason, and fails when ``CI`` is set. The
fast tests check where serve's settings come from when no params.yaml is around.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from abcd.serving.onnx_model import META_KEY
from abcd.serving.settings import MAX_PIXELS, SERVE_LIMITS, serve_settings
from tests.conftest import make_image

REPO = Path(__file__).resolve().parents[1]


def test_without_params_yaml_serve_uses_the_shipped_limits(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = yaml.safe_load((repo / "params.yaml").read_text())
    assert SERVE_LIMITS.model_dump() == shipped["serve"]
    assert shipped["prepare"]["max_pixels"] == MAX_PIXELS
    monkeypatch.chdir(tmp_path)
    found = serve_settings(None)
    assert (found.limits, found.max_pixels) == (SERVE_LIMITS, MAX_PIXELS)
    assert found.source == "the values params.yaml ships with (no params.yaml here)"


def test_a_params_file_sets_every_serve_setting(tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["serve"]["max_files"], params["prepare"]["max_pixels"], params["serve"]["batch_size"] = 3, 1000, 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    found = serve_settings(None)  # ./params.yaml, as inside the repo
    assert (found.limits.max_files, found.max_pixels, found.limits.batch_size, found.source) == (
        3,
        1000,
        4,
        "params.yaml",
    )


def skip_or_fail(message: str) -> None:
    """Skip; when ``CI`` is set, fail instead: CI must build the serve install."""
    if os.environ.get("CI"):
        pytest.fail(f"$CI is set, so the serve install must be built: {message}", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_venv(root: Path) -> Path:
    """A fresh venv with the project installed from requirements/serve.txt, as docs/deploy.md does it."""
    project = root / "project"  # a copy: pip builds in place, and the checkout must stay clean
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    for name in ("src", "requirements"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    install = subprocess.run(
        [*pip, "install", "-q", "-r", "requirements/serve.txt", ".[serve]"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if install.returncode != 0:
        # A failure of the index itself, or of the pins? Ask the index for any one package.
        probe = subprocess.run(
            [*pip, "download", "-q", "--no-deps", "--no-cache-dir", "-d", str(root / "probe"), "setuptools"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if probe.returncode != 0:
            lines = (probe.stdout + probe.stderr).strip().splitlines() or ["(no output)"]
            why = next((line for line in lines if "connection" in line.lower()), lines[-1])
            skip_or_fail(f"the package index cannot be reached (pip download setuptools: {why.strip()[:300]})")
    assert install.returncode == 0, f"pip install of the serve extra failed:\n{install.stdout + install.stderr}"
    return venv


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def model_file(dest: Path, request: pytest.FixtureRequest) -> Path:
    """The repo's exported model when the pipeline has made it; else the small test export, with the
    predict settings a trained checkpoint stores (train writes them; the test checkpoint has none)."""
    real = REPO / "models" / "model.onnx"
    if real.is_file():
        return Path(shutil.copy2(real, dest))
    import onnx

    model = onnx.load(str(request.getfixturevalue("exported")["onnx"]))
    (prop,) = [p for p in model.metadata_props if p.key == META_KEY]
    meta = json.loads(prop.value)
    meta["predict"] = {"method": meta["method"], "rule_threshold": 0.6, "batch_size": 12, "runtime": None}
    prop.value = json.dumps(meta)
    onnx.save(model, str(dest))
    return dest


def pinned_names(text: str) -> set[str]:
    """The package names of a requirements file or of ``pip freeze`` output, normalised."""
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.sub(r"[-_.]+", "-", re.split(r"[=@ ;]", line, maxsplit=1)[0]).lower())
    return names


@pytest.mark.slow
def test_serve_install_serves_and_predicts_without_torch(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    venv = serve_venv(tmp_path)
    python, bin_dir = str(venv / "bin" / "python"), venv / "bin"
    # Nothing of the checkout nor of the dev venv may leak in: the commands see the serve venv alone.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])

    frozen = run([python, "-m", "pip", "freeze"], tmp_path, env).stdout
    pinned = pinned_names((REPO / "requirements" / "serve.txt").read_text())
    assert pinned_names(frozen) - {"abcd-classifier"} == pinned, (
        "requirements/serve.txt is not the serve extra's whole closure: rerun tools/pin_requirements.py"
    )
    probe = "import importlib.util as u, abcd; print(u.find_spec('torch') is None, abcd.__file__)"
    no_torch, where = run([python, "-c", probe], tmp_path, env).stdout.split()
    assert no_torch == "True", "the serve install holds torch"
    assert Path(where).is_relative_to(venv), f"abcd imported from {where}, not from the serve venv"

    # A folder holding the model and nothing else: no params.yaml, no models/.
    site = tmp_path / "site"
    site.mkdir()
    model_file(site / "model.onnx", request)
    photo = make_image(tmp_path / "photos" / "photo.jpg", size=(320, 240))

    port = free_port()
    server = subprocess.Popen(
        [str(bin_dir / "abcd-serve"), "--model", "model.onnx", "--port", str(port)],
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"abcd-serve exited {server.returncode}:\n{server.stdout.read()}"
            try:
                health = httpx.get(f"{url}/health", timeout=5).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "abcd-serve did not answer within 120 s"
                time.sleep(0.5)
        files = [
            ("files", ("photo.jpg", photo.read_bytes(), "image/jpeg")),
            ("files", ("notes.txt", b"hi", "text/plain")),
        ]
        response = httpx.post(f"{url}/predict", files=files, timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    limits = {
        "max_file_mb": SERVE_LIMITS.max_file_mb,
        "max_files": SERVE_LIMITS.max_files,
        "max_request_mb": SERVE_LIMITS.max_request_mb,
        "max_pixels": MAX_PIXELS,
    }
    assert health["limits"] == limits
    assert response.status_code == 200, response.text
    found, not_image = response.json()["results"]
    classes = health["classes"]
    assert found["error"] is None and found["prediction"] in [*classes, "unknown"]
    assert list(found["probabilities"]) == classes
    assert sum(found["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert not_image["prediction"] is None and "cannot decode" in not_image["error"]

    argv = [str(bin_dir / "abcd-predict"), "--runtime", "onnx", "--model", "model.onnx", str(photo), "--format", "json"]
    predicted = run(argv, site, env)
    assert predicted.returncode == 0, predicted.stderr
    (result,) = json.loads(predicted.stdout)["results"]
    assert result["prediction"] == found["prediction"]
    assert result["probabilities"] == pytest.approx(found["probabilities"], abs=1e-6)
    # With no models/model.onnx here the default is the checkpoint's runtime: one line says what to do.
    refused = run([str(bin_dir / "abcd-predict"), str(photo)], site, env)
    assert refused.returncode == 1 and "--runtime onnx --model" in refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
