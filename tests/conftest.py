"""Shared fixtures: small synthetic images, the real photos beside the repo, one pipeline run for the slow tests.

Two loops (Makefile): `make test-fast` runs every test not marked ``slow`` with the ``fast`` Hypothesis profile;
`make test` runs everything with each property test's full example count.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "datasets" / "ants-bees-cats-dogs"
SHARED_OOD_PHOTOS = REPO.parent / "shared" / "datasets" / "ood-package-photos"  # the OOD set's Debian photos
CLASSES = ["ants", "bees", "cats", "dogs"]
FAST_EXAMPLES = 25  # each property test's examples at most, under the "fast" Hypothesis profile


# One torch thread and one BLAS thread in the test process. Its forward passes and fits are small, and idle
# OpenMP and OpenBLAS threads spin against the serial work, onnxruntime's threads and other jobs on the same
# cores: on a busy 2-core machine the quick loop's tests took 127 CPU seconds with the default thread counts
# and 49 with one thread of each. (The train stage sets one torch thread itself, so before this the count
# changed with the order tests ran in.) Stage commands that tests start are processes of their own, with the
# user's defaults. Set once torch and the BLAS libraries are loaded, not by importing them here: a run of a
# file that needs neither stays quick.
def pytest_collection_finish(session: pytest.Session) -> None:
    threadpool_limits(1, user_api="blas")  # NumPy's and SciPy's OpenBLAS, loaded by the collected modules


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    torch = sys.modules.get("torch")  # before the test's fixtures: they may run forward passes
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before Hypothesis's pytest plugin loads the profile that --hypothesis-profile names.
    if config.getoption("--hypothesis-profile", None) == "fast":
        from hypothesis import settings

        settings.register_profile("fast", max_examples=FAST_EXAMPLES)


def examples(full: int) -> int:
    """A property test's example count: ``full``, or at most FAST_EXAMPLES under the ``fast`` profile."""
    from hypothesis import settings

    return min(full, FAST_EXAMPLES) if settings.get_current_profile_name() == "fast" else full


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--hypothesis-profile", None) == "fast":
        return f"hypothesis profile 'fast': property tests run at most {FAST_EXAMPLES} examples (make test: all)"
    return None


@pytest.fixture
def repo() -> Path:
    return REPO


def require_shared_photos(path: Path | None = None) -> Path:
    """The real photo mirror (``SHARED_PHOTOS`` unless ``path`` is given), for the tests that need it.

    Where it is missing, or lacks a class folder, the test is skipped with the reason; but when the
    environment variable ``CI`` is set (non-empty) it fails instead: CI must run every test, and a
    skip there would hide that the end-to-end tests never ran.
    """
    path = SHARED_PHOTOS if path is None else path
    missing = [c for c in CLASSES if not (path / c).is_dir()]
    if not missing:
        return path
    problem = "does not exist" if not path.is_dir() else f"has no folder for class(es) {', '.join(missing)}"
    message = (
        f"real photos not found: {path} {problem}; expected one folder of JPEG photos per class "
        f"({', '.join(CLASSES)}) there (see docs/data.md)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"$CI is set, so the photo mirror is required: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def shared_photos() -> Path:
    return require_shared_photos()


def make_image(path: Path, seed: int = 0, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Path:
    """Write a small random image in ``mode`` (RGB, L, P, RGBA, ...) to ``path``."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "RGB" else rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """A source folder with 10 synthetic JPEGs per class."""
    root = tmp_path / "source"
    for c, label in enumerate(CLASSES):
        for i in range(10):
            make_image(root / label / f"{label}_{i}.jpg", seed=100 * c + i)
    return root


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-weight lite0 checkpoint with fitted unknown detectors, and its ONNX export (stage `export`)."""
    import torch

    from abcd.models.backbones import build_backbone
    from abcd.models.checkpoint import load_checkpoint, save_checkpoint
    from abcd.models.head import Classifier
    from abcd.ood.fit import fit_inference_extras
    from abcd.serving.export import export_metadata, export_onnx

    tmp = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    # Dropout 0.5, as trained: the export must switch it off (eval mode) in the graph and after tracing.
    model = Classifier(backbone.module, backbone.num_features, len(CLASSES), 0.5).eval()
    rng = np.random.default_rng(0)
    train_x = rng.normal(0, 1, (64, 2, backbone.num_features)).astype(np.float32)
    val_x = rng.normal(0, 1, (40, backbone.num_features)).astype(np.float32)
    extras = fit_inference_extras(
        model.head,
        train_x,
        np.arange(64) % 4,
        val_x,
        np.arange(40) % 4,
        # kNN's bank: the views and the eval view (as train fits it), so the export holds 3 x 64 rows.
        train_eval_x=rng.normal(0, 1, (64, backbone.num_features)).astype(np.float32),
        false_reject=0.02,
        knn_k=3,
        ece_bins=10,
        calibrate=True,
    )
    checkpoint, onnx = tmp / "model.pt", tmp / "model.onnx"
    save_checkpoint(
        checkpoint,
        model.state_dict(),
        dropout=0.5,
        classes=CLASSES,
        backbone="efficientnet_lite0",
        preprocess=backbone.preprocess,
        params={},
        extra=extras,
    )
    loaded = load_checkpoint(checkpoint)
    export_onnx(loaded, onnx, export_metadata(loaded, checkpoint, "fusion", 0.6))
    return {"checkpoint": checkpoint, "onnx": onnx}


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """One `dvc repro` of a copy of this repo on a few real photos (``make_project``), committed as "baseline":
    (repo, env, the repro's output). Shared by the slow tests: those that only read it use it in place, those
    that change the project work on their own copy (``pipeline_utils.copy_project``)."""
    from tests.pipeline_utils import make_project, run

    repo, env = make_project(tmp_path_factory.mktemp("pipeline"), require_shared_photos())
    out = run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline"], repo, env)
    return repo, env, out
