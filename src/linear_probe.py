"""The linear probe: L2-regularised multinomial logistic regression on frozen features.

It is the baseline the trained head must match (benchmarks/compare_backbones.py) and, with
``train.init: probe``, the head's starting point: the head then trains on the augmented
views from the probe's solution, and epoch 0 (the probe itself) competes for the best
epoch on val loss. Cross-validated, this start is what lets the head match the probe
(README: Training). The solver is scikit-learn's ``LogisticRegression(solver="lbfgs")``
written out on scipy (scikit-learn's import costs 0.8 s per head-only experiment, scipy's
0.3 s): its stopping tolerance matters, because that early iterate generalises better than
the exact optimum (a torch L-BFGS with the same tolerance stops elsewhere, and chose other C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class ProbeFit:
    weight: torch.Tensor  # (classes, features), on the raw (unstandardised) features
    bias: torch.Tensor  # (classes,)
    c: float  # the chosen inverse L2 strength
    val_loss: float


def _loss_and_grad(w: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy + l2/2 ||coef||^2 and its gradient; ``w`` is (classes, features + 1) in Fortran order."""
    k, d = onehot.shape[1], x.shape[1]
    coef_bias = w.reshape(k, d + 1, order="F")
    coef, bias = coef_bias[:, :d], coef_bias[:, d]
    z = x @ coef.T + bias
    z -= z.max(1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(1, keepdims=True))
    loss = float((log_norm[:, 0] - (z * onehot).sum(1)).mean() + 0.5 * l2 * (coef * coef).sum())
    residual = (np.exp(z - log_norm) - onehot) / len(x)
    grad = np.empty_like(coef_bias)
    grad[:, :d] = residual.T @ x + l2 * coef
    grad[:, d] = residual.sum(0)
    return loss, grad.ravel(order="F")


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, tol: float = 1e-4, max_iter: int = 5000
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) minimising mean cross-entropy + ||weight||^2 / (2 c n); the bias is not penalised.

    scikit-learn's ``LogisticRegression(C=c, solver="lbfgs")``, step for step: the same objective,
    parameter layout, starting point (zero) and scipy L-BFGS-B options, so the same early iterate
    is returned (it stops when the largest projected gradient entry is <= ``tol``). float64.
    """
    from scipy.optimize import minimize  # 0.3 s; imported by the stages that fit a probe only
    from threadpoolctl import threadpool_limits

    xs = x.double().numpy()
    onehot = np.eye(num_classes)[y.long().numpy()]
    w0 = np.zeros((num_classes, xs.shape[1] + 1), order="F").ravel(order="F")
    options = {"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps}
    # One BLAS thread: the products are too small to share, and between them OpenBLAS's idle
    # threads spin against L-BFGS-B's own (serial) step: 8 fits took 2.3 s on 2 cores, 0.34 s like this.
    with threadpool_limits(1, user_api="blas"):
        res = minimize(_loss_and_grad, w0, (xs, onehot, 1.0 / (c * len(xs))), "L-BFGS-B", jac=True, options=options)
    w = torch.from_numpy(res.x.reshape(num_classes, -1, order="F").copy())
    return w[:, :-1].contiguous(), w[:, -1].contiguous()


def fit_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: Sequence[float],
) -> ProbeFit:
    """Standardise (train statistics), fit one probe per C in ``grid``, keep the lowest val log loss.

    The standardisation is folded into the returned weights, so ``x @ weight.T + bias`` takes raw features.
    """
    x, y = train[0].double(), train[1].long()
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature: scale 1, as scikit-learn
    xs, vs = (x - mean) / std, (val[0].double() - mean) / std
    best: ProbeFit | None = None
    for c in grid:
        w, b = fit_logistic(xs, y, num_classes, c)
        loss = nn.functional.cross_entropy(vs @ w.T + b, val[1].long()).item()
        if best is None or loss < best.val_loss:
            best = ProbeFit(w, b, c, loss)
    if best is None:
        raise ValueError("fit_probe: the grid of C values is empty")
    weight = best.weight / std
    best.bias = best.bias - weight @ mean
    best.weight = weight
    return best
