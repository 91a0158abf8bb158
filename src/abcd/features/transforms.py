"""albumentations presets built from the backbone's own preprocessing (:class:`abcd.core.preprocess.Preprocess`)."""

from __future__ import annotations

import os

# albumentations checks PyPI for a newer release at import; a pipeline must not phone home.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from abcd.core.params import AugmentParams
from abcd.core.preprocess import MAX_PIXEL_VALUE, Preprocess


class SeededTransform:
    """An albumentations pipeline called as ``transform(image, seed) -> CHW float tensor``.

    Seeding per call makes each augmented view a function of its seed alone, so results
    do not depend on DataLoader worker count or order.
    """

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose

    def __call__(self, image: np.ndarray, seed: int = 0) -> torch.Tensor:
        self.compose.set_random_seed(seed)
        return self.compose(image=image)["image"]


def _normalize(pre: Preprocess) -> list[A.BasicTransform]:
    return [A.Normalize(mean=pre.mean, std=pre.std, max_pixel_value=MAX_PIXEL_VALUE), ToTensorV2()]


def eval_transform(pre: Preprocess) -> SeededTransform:
    """Resize the short side, centre-crop, normalise: the backbone's ImageNet eval recipe.

    ``abcd.serving.onnx_model.preprocess`` is the same recipe in OpenCV (tests/test_export.py holds them equal).
    """
    size = pre.input_size
    return SeededTransform(
        A.Compose(
            [
                A.SmallestMaxSize(max_size=pre.resize_size, interpolation=pre.cv2_interpolation),
                A.CenterCrop(height=size, width=size),
                *_normalize(pre),
            ]
        )
    )


def train_transform(pre: Preprocess, aug: AugmentParams) -> SeededTransform:
    """Rotation, random resized crop, horizontal flip, colour jitter, blur and noise, then normalisation.

    A transform switched off in params (0) is left out of the pipeline rather than added
    with p=0, so the random draws, and the cached views, of the other transforms stay the same.
    """
    size = pre.input_size
    rotate = (
        # Reflected borders: no black corners for the crop to pick up as a class cue.
        [A.Rotate(limit=aug.rotate, interpolation=pre.cv2_interpolation, border_mode=cv2.BORDER_REFLECT_101, p=1.0)]
        if aug.rotate > 0
        else []
    )
    blur = [A.GaussianBlur(blur_limit=(3, 7), p=aug.blur)] if aug.blur > 0 else []
    noise = [A.GaussNoise(std_range=(0.02, 0.08), p=aug.noise)] if aug.noise > 0 else []
    return SeededTransform(
        A.Compose(
            [
                *rotate,
                A.RandomResizedCrop(size=(size, size), scale=aug.scale, interpolation=pre.cv2_interpolation),
                A.HorizontalFlip(p=aug.hflip),
                A.ColorJitter(
                    brightness=aug.brightness,
                    contrast=aug.contrast,
                    saturation=aug.saturation,
                    hue=aug.hue,
                    p=0.8,
                ),
                *blur,
                *noise,
                *_normalize(pre),
            ]
        )
    )


def denormalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Undo normalisation for display: (..., 3, H, W) tensor -> values in [0, 1]."""
    mean = torch.tensor(pre.mean, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
