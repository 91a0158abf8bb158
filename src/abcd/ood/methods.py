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
- ``fusion``: ``knn + energy + mahalanobis_pp + vim``, each score standardised by its mean and
  standard deviation on val (z-scores), summed (a :class:`abcd.ood.detectors.Fusion`: its state is
  only those means and deviations; the four components' states are their own entries). The
  default unknown.method: chosen on the selection half by the rule fixed in advance
  (benchmarks/ood_candidates.py, reports/ood_candidates.md: 42/46 photos at 3/184 known
  rejected, kNN alone 40/46 at 3/184).

The head-dependent one (``vim``) reads the head's last layer through ``fit``'s ``linear``
keyword (:attr:`Method.uses_head`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from abcd.ood.detectors import (
    Fusion,
    Method,
    State,
    _fit_mahalanobis,
    _logsumexp,
    _mahalanobis_score,
    _normalise,
)

# Settings chosen on the OOD set's selection half (benchmarks/ood_detectors.py, reports/ood_selection.md).
VIM_DIM = 256  # principal subspace kept by ViM, of lite2's 1280 feature dimensions (128-512 tied there)


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


MAHALANOBIS_PP = Method(
    _fit_mahalanobis_pp, _mahalanobis_pp_score, "Mahalanobis++: min Mahalanobis distance on L2-normalised features"
)
VIM = Method(_fit_vim, _vim_score, "ViM: residual outside the principal subspace minus energy", uses_head=True)
FUSION = Fusion(
    ("knn", "energy", "mahalanobis_pp", "vim"), "knn + energy + mahalanobis_pp + vim, each standardised on val, summed"
)
