"""The linear probe: L2-regularised multinomial logistic regression on frozen features.

It is the baseline the trained head must match (research/compare_backbones.py) and, with
``train.init: probe``, the head's starting point: the head then trains on the augmented
views from the probe's solution, and epoch 0 (the probe itself) competes for the best
epoch on val loss. Cross-validated, this start is what lets the head match the probe
(research/README.md). The model is scikit-learn's ``StandardScaler`` + ``LogisticRegression(
solver="lbfgs")`` at its default stopping tolerance: that early iterate generalises better
than the exact optimum (a torch L-BFGS with the same tolerance stops elsewhere, and chose
another C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from abcd.evaluation.metrics import log_loss

TOL = 1e-4  # lbfgs stops when the largest projected gradient entry is <= TOL (sklearn's default)
MAX_ITER = 5000  # never reached on this project's features; sklearn's default of 100 sometimes is


@dataclass
class ProbeFit:
    weight: torch.Tensor  # (classes, features), on the raw (unstandardised) features, float64
    bias: torch.Tensor  # (classes,)
    c: float  # the chosen inverse L2 strength
    val_loss: float


def _class_rows(clf: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) with one row per class, whose softmax is ``clf.predict_proba``."""
    if len(clf.classes_) == 2:
        # Binary: sklearn fits one logit z for class 1, p = sigmoid(z) = softmax([-z/2, z/2])[1].
        return np.r_[-clf.coef_, clf.coef_] / 2, np.r_[-clf.intercept_, clf.intercept_] / 2
    return clf.coef_, clf.intercept_


def fit_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: Sequence[float],
) -> ProbeFit:
    """Standardise (train statistics), fit one probe per C in ``grid``, keep the lowest val log loss.

    The standardisation is folded into the returned weights, so ``x @ weight.T + bias`` takes raw features.
    """
    if not grid:
        raise ValueError("fit_probe: the grid of C values is empty")
    x, y = train[0].double().numpy(), train[1].long().numpy()
    if not np.array_equal(np.unique(y), np.arange(num_classes)):
        raise ValueError(f"fit_probe: training labels {np.unique(y).tolist()}, expected each of 0..{num_classes - 1}")
    scaler = StandardScaler().fit(x)  # a constant feature gets scale 1
    xs, vs = scaler.transform(x), scaler.transform(val[0].double().numpy())
    best: tuple[float, float, LogisticRegression] | None = None
    # One BLAS thread: the products are too small to share, and between them OpenBLAS's idle
    # threads spin against L-BFGS-B's own (serial) step: 8 fits took 2.3 s on 2 cores, 0.34 s like this.
    with threadpool_limits(1, user_api="blas"):
        for c in grid:
            clf = LogisticRegression(C=c, solver="lbfgs", tol=TOL, max_iter=MAX_ITER).fit(xs, y)
            loss = log_loss(val[1].long().numpy(), clf.predict_proba(vs))
            if best is None or loss < best[1]:
                best = (c, loss, clf)
    c, loss, clf = best
    coef, intercept = _class_rows(clf)
    weight = coef / scaler.scale_
    return ProbeFit(torch.from_numpy(weight), torch.from_numpy(intercept - weight @ scaler.mean_), c, loss)
