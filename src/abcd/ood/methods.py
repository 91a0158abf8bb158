"""Post-hoc unknown detectors from OpenOOD v1.5's leaders for a frozen backbone.

Each is a :class:`abcd.ood.detectors.Method` ("higher = more likely unknown"), registered in
UNKNOWN_METHODS (src/abcd/core/registry.py) beside the older four and fitted at train time on the
training features (every augmented view), its state plain tensors:

- ``mahalanobis_pp``: Mahalanobis++ (Mueller & Hein 2025): the class-conditional Gaussian
  with a shared covariance, fitted on L2-normalised features. Normalising removes the
  feature norm's spread, which the plain Mahalanobis distance otherwise mostly measures.
- ``vim``: Virtual-logit Matching (Wang et al. 2022): the norm of the feature's residual
  outside the training features' principal subspace, scaled to the logits' range, minus
  the energy. Origin at the head's -pinv(W) b, as in the paper.
- ``scale``: SCALE (Xu et al. 2024), ASH's scaling without its pruning: the features are
  multiplied by exp(sum(a) / sum of the top (100 - p)% of a) before the head, and scored by
  energy. The head is linear, so the scaled logits are s (logits - b) + b: no second pass.
- ``knn_mahalanobis_pp``: the sum of the two feature-distance scores, each divided by its
  median over the training bank, so that neither dominates by its units. Tried, not better
  on the selection half: training-bank medians are biased low (a view's nearest neighbour is
  its own image's other view; Mahalanobis is fitted on the bank), so one term dominates.
- ``fusion``: ``knn + energy + mahalanobis_pp + vim``, each score standardised by its mean and
  standard deviation on val (z-scores), summed (a :class:`abcd.ood.detectors.Fusion`: its state is
  only those means and deviations; the four components' states are their own entries). The
  default unknown.method: chosen on the selection half by the rule fixed in advance
  (benchmarks/ood_candidates.py, reports/ood_candidates.md: 42/46 photos at 3/184 known
  rejected, kNN alone 40/46 at 3/184).

The head-dependent ones (``vim``, ``scale``) read the head's last layer through ``fit``'s
``linear`` keyword (:attr:`Method.uses_head`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from abcd.ood.detectors import (
    KNN,
    Fusion,
    Method,
    State,
    _fit_knn,
    _fit_mahalanobis,
    _knn_score,
    _logsumexp,
    _mahalanobis_score,
    _normalise,
)

# Settings chosen on the OOD set's selection half (benchmarks/ood_detectors.py, reports/ood_selection.md).
SCALE_PERCENTILE = 65.0  # SCALE's p: the best of 65-95 there (the paper's ImageNet 85 was worse)
VIM_DIM = 256  # principal subspace kept by ViM, of lite2's 1280 feature dimensions (128-512 tied there)
BANK_SAMPLE = 4096  # training features on which the combination's medians are taken


def _fit_mahalanobis_pp(x: np.ndarray, y: np.ndarray, k: int) -> State:
    return _fit_mahalanobis(_normalise(x), y, k)


def _mahalanobis_pp_score(state: Mapping[str, torch.Tensor], feats, logits, temperature) -> np.ndarray:
    return _mahalanobis_score(state, _normalise(feats), logits, temperature)


def _linear_arrays(linear: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    weight, bias = linear
    return weight.detach().double().numpy(), bias.detach().double().numpy()


def _fit_vim(
    x: np.ndarray, y: np.ndarray, k: int, *, linear: tuple[torch.Tensor, torch.Tensor], dim: int = VIM_DIM
) -> State:
    w, b = _linear_arrays(linear)
    x = np.asarray(x, np.float64)
    origin = -np.linalg.pinv(w) @ b
    centred = x - origin
    # Principal directions of the training features around the origin (the eigenvectors of
    # their second-moment matrix); the residual is what lies outside the first VIM_DIM.
    dim = min(dim, x.shape[1] // 2)  # a residual space at least as large as the kept one
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:dim].T  # (D, dim)
    residual = np.linalg.norm(centred - (centred @ basis) @ basis.T, axis=1)
    logits = x @ w.T + b
    # alpha matches the virtual logit's scale to the largest real logit's, on the training set.
    alpha = logits.max(axis=1).mean() / residual.mean()
    return {
        "origin": torch.from_numpy(origin.astype(np.float32)),
        "basis": torch.from_numpy(basis.astype(np.float32)),
        "alpha": torch.tensor(float(alpha)),
    }


def _vim_score(state: Mapping[str, torch.Tensor], feats, logits, temperature) -> np.ndarray:
    origin = state["origin"].double().numpy()
    basis = state["basis"].double().numpy()
    centred = np.asarray(feats, np.float64) - origin
    residual = np.linalg.norm(centred - (centred @ basis) @ basis.T, axis=1)
    # ViM's score is energy - virtual logit (higher = known); negated here.
    return float(state["alpha"]) * residual - _logsumexp(np.asarray(logits, np.float64))


def _fit_scale(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    *,
    linear: tuple[torch.Tensor, torch.Tensor],
    percentile: float = SCALE_PERCENTILE,
) -> State:
    _, b = _linear_arrays(linear)
    return {"bias": torch.from_numpy(b.astype(np.float32)), "percentile": torch.tensor(float(percentile))}


def scale_factor(feats: np.ndarray, percentile: float) -> np.ndarray:
    """exp(sum(a) / sum(a at or above its own ``percentile``-th percentile)) per row: SCALE's multiplier.

    SCALE is defined on post-ReLU activations (lite's and ResNet's pooled features are);
    a backbone with negative features (hard-swish) gets the ratio of their positive parts.
    """
    a = np.clip(np.asarray(feats, np.float64), 0.0, None)
    cut = np.percentile(a, percentile, axis=1, keepdims=True)
    kept = np.where(a >= cut, a, 0.0).sum(axis=1)
    return np.exp(a.sum(axis=1) / np.maximum(kept, 1e-12))


def _scale_score(state: Mapping[str, torch.Tensor], feats, logits, temperature) -> np.ndarray:
    b = state["bias"].double().numpy()
    s = scale_factor(feats, float(state["percentile"]))
    scaled = s[:, None] * (np.asarray(logits, np.float64) - b) + b
    return -_logsumexp(scaled)


def _fit_knn_mahalanobis_pp(x: np.ndarray, y: np.ndarray, k: int) -> State:
    knn, maha = _fit_knn(x, y, k), _fit_mahalanobis_pp(x, y, k)
    # Medians of each score over a seeded sample of the bank: the units each is divided by.
    # (The bank's kNN distances skip no self-match, so this median is a little low: it is a scale.)
    pick = np.random.default_rng(0).permutation(len(x))[:BANK_SAMPLE]
    knn_med = float(np.median(_knn_score(knn, x[pick], None, 1.0)))
    maha_med = float(np.median(_mahalanobis_pp_score(maha, x[pick], None, 1.0)))
    return {
        **{f"knn_{n}": v for n, v in knn.items()},
        **{f"maha_{n}": v for n, v in maha.items()},
        "medians": torch.tensor([max(knn_med, 1e-12), max(maha_med, 1e-12)], dtype=torch.float64),
    }


def _knn_mahalanobis_pp_score(state: Mapping[str, torch.Tensor], feats, logits, temperature) -> np.ndarray:
    knn = {n[4:]: v for n, v in state.items() if n.startswith("knn_")}
    maha = {n[5:]: v for n, v in state.items() if n.startswith("maha_")}
    medians = state["medians"].numpy()
    return (
        KNN.score(knn, feats, logits, temperature) / medians[0]
        + _mahalanobis_pp_score(maha, feats, logits, temperature) / medians[1]
    )


MAHALANOBIS_PP = Method(
    _fit_mahalanobis_pp, _mahalanobis_pp_score, "Mahalanobis++: min Mahalanobis distance on L2-normalised features"
)
VIM = Method(_fit_vim, _vim_score, "ViM: residual outside the principal subspace minus energy", uses_head=True)
SCALE = Method(_fit_scale, _scale_score, "SCALE: energy of the percentile-scaled features", uses_head=True)
KNN_MAHALANOBIS_PP = Method(
    _fit_knn_mahalanobis_pp, _knn_mahalanobis_pp_score, "kNN + Mahalanobis++, each over its training median"
)
FUSION = Fusion(
    ("knn", "energy", "mahalanobis_pp", "vim"), "knn + energy + mahalanobis_pp + vim, each standardised on val, summed"
)
