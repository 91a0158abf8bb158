import numpy as np
import pytest
import torch

from abcd.core.params import AugmentParams
from abcd.core.preprocess import Preprocess
from abcd.features.transforms import denormalize, eval_transform, train_transform

PRE = Preprocess(input_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
AUG = AugmentParams(
    scale=(0.3, 1.0), hflip=0.5, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, rotate=0.0, blur=0.0, noise=0.0
)


def _image(h: int = 60, w: int = 90) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_eval_transform_resizes_crops_and_normalises_with_the_backbone_stats() -> None:
    x = eval_transform(PRE)(_image())
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0  # (v - 0.5) / 0.5 on [0, 1]
    white = eval_transform(PRE)(np.full((40, 40, 3), 255, np.uint8))
    assert torch.allclose(white, torch.ones_like(white))
    assert torch.allclose(denormalize(white, PRE), torch.ones_like(white))


def test_eval_transform_is_deterministic() -> None:
    t = eval_transform(PRE)
    assert torch.equal(t(_image(), 1), t(_image(), 2))


def test_train_transform_is_a_function_of_its_seed() -> None:
    t = train_transform(PRE, AUG)
    a, b, c = t(_image(), 7), t(_image(), 7), t(_image(), 8)
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_switched_off_transforms_leave_the_other_draws_unchanged() -> None:
    """rotate/blur/noise at 0 are left out, so the default policy's views do not move when they exist."""
    on = AUG.model_copy(update={"rotate": 20.0, "blur": 1.0, "noise": 1.0})
    names = [type(t).__name__ for t in train_transform(PRE, on).compose.transforms]
    assert {"Rotate", "GaussianBlur", "GaussNoise"} <= set(names)
    off = [type(t).__name__ for t in train_transform(PRE, AUG).compose.transforms]
    assert not {"Rotate", "GaussianBlur", "GaussNoise"} & set(off)


@pytest.mark.parametrize("field", ["rotate", "blur", "noise"])
def test_each_optional_augmentation_changes_the_view(field: str) -> None:
    value = 30.0 if field == "rotate" else 1.0
    a = train_transform(PRE, AUG)(_image(), 3)
    b = train_transform(PRE, AUG.model_copy(update={field: value}))(_image(), 3)
    assert a.shape == b.shape and not torch.equal(a, b)
