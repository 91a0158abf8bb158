"""Shared fixtures: small synthetic images, and the real photos beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "datasets" / "ants-bees-cats-dogs"
CLASSES = ["ants", "bees", "cats", "dogs"]


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_photos() -> Path:
    if not SHARED_PHOTOS.is_dir():
        pytest.skip(f"real photos not found at {SHARED_PHOTOS} (see README: Data)")
    return SHARED_PHOTOS


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
