"""The one definition of how an image becomes a model's input, shared by every runtime.

A backbone's weights fix it (``abcd.models.backbones`` reads it off the model), the checkpoint
and the ONNX export store it, and both image pipelines are built from it: the albumentations
eval transform (``abcd.features.transforms``, torch) and the OpenCV one
(``abcd.serving.onnx_model``, no torch). It lives here, importing neither, so the serve-only
install can read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from abcd.core.registry import INTERPOLATIONS

# Both pipelines take pixel values in [0, 255]: mean and std are given on [0, 1].
MAX_PIXEL_VALUE = 255.0

# The resize scales the short side to ``resize_size`` whatever the long side, so a thin image grows
# by its aspect ratio: 1x4000 pixels would become 292x1,168,000 (1 GB). Every decoder of the project
# (prepare, predict, serve) refuses images thinner than this, so the resized image of any accepted
# file is at most resize_size x (resize_size * MAX_ASPECT) pixels (292 x 5840: 5 MB). 20:1 keeps
# panoramas; the model sees only the centre square of one anyway.
MAX_ASPECT = 20.0


def aspect_problem(width: int, height: int, max_aspect: float = MAX_ASPECT) -> str | None:
    """Why a ``width`` x ``height`` image is too thin to preprocess, or None when it is not."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio <= max_aspect:
        return None
    return (
        f"{width}x{height} pixels: aspect ratio {ratio:.0f}:1 is over the limit of {max_aspect:g}:1 "
        "(preprocessing scales the short side, so the long side would grow by as much)"
    )


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize_size``, centre-crop ``input_size``, normalise with ``mean``/``std``."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # a name in INTERPOLATIONS: "bilinear" | "bicubic" | "nearest"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        return cls(
            input_size=int(d["input_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d["interpolation"]),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @property
    def cv2_interpolation(self) -> int:
        """The OpenCV flag of :attr:`interpolation` (imports cv2)."""
        return INTERPOLATIONS.get(self.interpolation)
