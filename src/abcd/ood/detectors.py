"""A fitted unknown detector as loaded from a checkpoint, and the route that scores with it.

The train, test and torch predict route scores numpy features in float64 through
:meth:`Detector.score`; the ONNX graph (``abcd.serving.export``) builds its detectors here
too, in float32, and calls :meth:`Detector.score_tensor`, so both run each detector's one
torch score (``abcd.ood.methods``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from abcd.core.errors import InvalidFileError
from abcd.core.registry import UNKNOWN_METHODS
from abcd.ood.base import Fusion, Method, Ready

# Rows the route scores at once: bounds kNN's (rows, bank) distances and Mahalanobis++'s
# (rows, classes, D) differences, whatever the number of images.
ROUTE_ROWS = 1024


@dataclass(frozen=True)
class Detector:
    """One fitted method with its threshold: ``reject`` where ``score > threshold``.

    ``state`` is what the checkpoint stores; the score reads :attr:`ready`, derived from it in
    ``dtype``. A :class:`Fusion`'s ``parts`` are its components' detectors, built from their
    own stored states.
    """

    name: str
    method: Method | Fusion
    state: Mapping[str, torch.Tensor]
    threshold: float
    temperature: float
    parts: tuple[Detector, ...] = ()
    dtype: torch.dtype = torch.float64

    @functools.cached_property
    def ready(self) -> Ready:
        """The state the score reads, in ``dtype``; 0-d entries as Python numbers (constants in a trace)."""
        prepared = self.method.prepare(self.state) if isinstance(self.method, Method) else self.state
        return {
            k: v.item() if v.ndim == 0 else v.to(self.dtype) if v.is_floating_point() else v
            for k, v in prepared.items()
        }

    def score_tensor(
        self, feats: torch.Tensor, logits: torch.Tensor, computed: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The scores of (N, D) features with their (N, C) logits, as tensors in their dtype.

        ``computed``: scores of other detectors of the same checkpoint on the same rows, which a
        fusion reuses instead of recomputing."""
        if isinstance(self.method, Fusion):
            computed = computed or {}
            parts = {
                p.name: computed[p.name] if p.name in computed else p.score_tensor(feats, logits) for p in self.parts
            }
            return self.method.combine(self.ready, parts)
        return self.method.score(self.ready, feats, logits, self.temperature)

    def score(
        self, feats: np.ndarray, logits: np.ndarray, computed: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """:meth:`score_tensor` of numpy rows, in ``dtype`` (float64 unless built otherwise), as numpy."""
        if isinstance(self.method, Fusion):
            computed = computed or {}
            parts = {p.name: computed[p.name] if p.name in computed else p.score(feats, logits) for p in self.parts}
            return self.method.combine(self.ready, {k: _tensor(v, self.dtype) for k, v in parts.items()}).numpy()
        out = [
            self.score_tensor(
                _tensor(feats[i : i + ROUTE_ROWS], self.dtype), _tensor(logits[i : i + ROUTE_ROWS], self.dtype)
            )
            for i in range(0, len(feats), ROUTE_ROWS)
        ]
        return torch.cat(out).numpy() if out else np.zeros(0)


def _tensor(rows: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A copy in ``dtype``: features may be a read-only memory map, which torch cannot wrap."""
    return torch.tensor(np.asarray(rows), dtype=dtype)


def head_logits(head: torch.nn.Module, feats: np.ndarray) -> np.ndarray:
    """The head's logits on (N, D) features, fp32, dropout off."""
    was = head.training
    head.eval()
    with torch.inference_mode():
        logits = head(torch.as_tensor(np.asarray(feats, np.float32))).numpy()
    head.train(was)
    return logits.astype(np.float64)


def detector_from_extra(
    extra: Mapping[str, Any], name: str, max_softmax_threshold: float | None, dtype: torch.dtype = torch.float64
) -> Detector:
    """The detector ``name`` stored in a checkpoint's ``extra``, scoring in ``dtype``.

    ``max_softmax`` keeps the original rule: unknown when the (calibrated) max class
    probability is below ``max_softmax_threshold`` (predict.threshold); with None it uses
    its val threshold like the others. A checkpoint from before detectors were saved has
    only the original rule, at temperature 1.
    """
    method = UNKNOWN_METHODS.get(name, "unknown.method")
    temperature = float(extra.get("temperature", 1.0))
    if name == "max_softmax" and max_softmax_threshold is not None:
        return Detector(name, method, {}, 1.0 - max_softmax_threshold, temperature, dtype=dtype)
    fitted = extra.get("unknown", {})
    if name not in fitted:
        raise InvalidFileError(
            f"the checkpoint has no fitted unknown detector {name!r} (it has: {', '.join(fitted) or 'none'}); "
            "retrain it (dvc repro train) or choose unknown.method max_softmax"
        )
    state, threshold = fitted[name]["state"], float(fitted[name]["threshold"])
    if not isinstance(method, Fusion):
        return Detector(name, method, state, threshold, temperature, dtype=dtype)
    missing = [part for part in state if part not in fitted]
    if missing or not state:
        raise InvalidFileError(
            f"the checkpoint's unknown detector {name!r} sums {', '.join(state) or 'no detector'}, but it has no "
            f"fitted {', '.join(repr(m) for m in missing) or 'component'} (it has: {', '.join(fitted)}); "
            "retrain it (dvc repro train)"
        )
    parts = tuple(detector_from_extra(extra, part, None, dtype) for part in state)
    return Detector(name, method, state, threshold, temperature, parts, dtype)
