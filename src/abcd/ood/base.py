"""What every unknown detector is made of: its fit, its one torch score, and the thresholding rule.

Every score is "higher = more likely unknown". A detector is fitted once, at train time, from
the TRAINING features with numpy and scikit-learn, and stored in the checkpoint as plain
tensors (``weights_only`` loading works). Its score is one torch function, written for any
floating dtype: the train and test stages and torch predict run it in float64, the ONNX
graph traces it in float32, so the two routes cannot drift apart. Its rejection threshold
is set on the validation split for a target false-reject rate of known images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

State = dict[str, torch.Tensor]
# A score-ready state (:attr:`Method.prepare`): tensors, and Python numbers for the 0-d entries, so
# that the ONNX trace holds them as constants instead of reading them out of a tensor.
Ready = Mapping[str, torch.Tensor | float | int]


def no_state(x: np.ndarray, y: np.ndarray, k: int) -> State:
    """The fit of a detector that reads only the logits."""
    return {}


def as_stored(state: Mapping[str, torch.Tensor]) -> State:
    """The :attr:`Method.prepare` of a detector that scores with its stored state as it is."""
    return dict(state)


@dataclass(frozen=True)
class Method:
    """One detector: ``fit``, ``prepare`` and ``score``.

    ``fit(train_x (N, D), train_y (N,), knn_k) -> state`` runs once at train time (numpy).
    ``prepare(state) -> ready`` derives, in float64, what the score reads from what the
    checkpoint stores (a factorisation, say), once per loaded detector rather than per batch.
    ``score(ready, feats (N, D), logits (N, C), temperature) -> (N,)`` is torch, in the dtype of
    ``feats`` (the ready tensors are cast to it), and traceable: no data-dependent Python.

    With ``uses_head``, ``fit`` also gets the head's last layer as ``linear=(weight, bias)``.
    With ``eval_view_bank``, ``fit``'s rows are the augmented views plus each training image's
    eval view (the transform val, test and predict see), not the views alone.
    """

    fit: Callable[..., State]
    score: Callable[[Ready, torch.Tensor, torch.Tensor, float], torch.Tensor]
    doc: str
    prepare: Callable[[Mapping[str, torch.Tensor]], State] = as_stored
    uses_head: bool = False
    eval_view_bank: bool = False

    @property
    def stateless(self) -> bool:
        """Whether the score reads the logits only: any checkpoint (even one without fitted detectors) has it."""
        return self.fit is no_state


@dataclass(frozen=True)
class Fusion:
    """The sum of other registered methods' scores, each standardised on val: sum of (s - mean) / std.

    Fitted after the single methods, from their val scores (:meth:`fit`). Its stored state is
    ``{component name: tensor([mean, std])}`` (float64; numpy's mean and std, ddof 0) and nothing
    else: the components' own states (kNN's bank, ...) stay under their own names in the
    checkpoint, and a fusion detector is built from them, so nothing is stored twice. The
    stored names, not :attr:`components`, say what a checkpoint's fusion sums.
    """

    components: tuple[str, ...]
    doc: str

    def fit(self, val_scores: Mapping[str, np.ndarray]) -> State:
        state = {}
        for name in self.components:
            v = np.asarray(val_scores[name], np.float64)
            # A constant component (never on real features) would divide by 0: it then adds nothing.
            std = float(v.std()) or 1.0
            state[name] = torch.tensor([float(v.mean()), std], dtype=torch.float64)
        return state

    @staticmethod
    def combine(state: Mapping[str, torch.Tensor], part_scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum over the stored components of (score - mean) / std, in the parts' dtype."""
        z = []
        for name, moments in state.items():
            part = part_scores[name]
            moments = moments.to(part.dtype)
            z.append((part - moments[0]) / moments[1])
        return torch.stack(z).sum(dim=0)


def threshold_for_false_reject(known_scores: np.ndarray, false_reject: float) -> float:
    """Threshold such that a new known image is rejected (score > threshold) with probability <= ``false_reject``.

    The plain empirical quantile of n validation scores holds the rate on those n images only:
    a new image is rejected with probability (floor(alpha n) + 1) / (n + 1), above alpha
    (2.2% for alpha 2%, n 184). The conformal rank ceil((n + 1)(1 - alpha)) makes
    ``false_reject`` a bound in expectation for any image exchangeable with the validation
    ones (split conformal prediction; Angelopoulos & Bates 2021).
    """
    if len(known_scores) == 0:
        raise ValueError("threshold_for_false_reject: no known scores")
    s = np.sort(np.asarray(known_scores, np.float64))
    rank = math.ceil((len(s) + 1) * (1.0 - false_reject))  # 1-based; beyond n: reject no known score
    return float(s[min(rank, len(s)) - 1])


# The detectors fit on at most this many training rows (views), a seeded random sample beyond it.
# kNN scores each image against its whole bank, so an uncapped bank made test and predict cost
# N_test x N_train (hours at 10^6 photos) and model.pt grow with the data; the covariance fits
# (Mahalanobis++, ViM) held float64 copies of every row in train. Sun et al. (2022) report kNN's
# OOD results holding with a 1% sample of ImageNet's train set, and 16384 rows estimate a
# 1280-dimensional covariance well. This repo's bank (about 1700 rows) is far below it and is
# used whole, so its numbers do not depend on the cap.
FIT_ROWS_MAX = 16384


def sample_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` whole when at most :data:`FIT_ROWS_MAX` rows, else a seeded sample in row order."""
    if len(x) <= FIT_ROWS_MAX:
        return x, y
    keep = np.sort(np.random.default_rng(0).permutation(len(x))[:FIT_ROWS_MAX])
    return x[keep], y[keep]
