"""The unknown detectors the product offers, each a :class:`abcd.ood.base.Method` registered by name.

UNKNOWN_METHODS (src/abcd/core/registry.py) lists them. Each is fitted at train time on the
training features (every augmented view; kNN's bank also each training image's eval view)
and scored by one torch function that the pipeline runs in float64 and the ONNX graph traces
in float32:

- ``max_softmax``: 1 - the max calibrated class probability: the original rule.
- ``energy``: the free energy -logsumexp(logits) (Liu et al. 2020).
- ``knn``: distance to the k-th nearest training feature on the unit sphere (Sun et al. 2022).
- ``mahalanobis_pp``: Mahalanobis++ (Mueller & Hein 2025): the class-conditional Gaussian with
  a shared covariance, fitted on L2-normalised features. Normalising removes the feature
  norm's spread, which the plain Mahalanobis distance otherwise mostly measures.
- ``vim``: Virtual-logit Matching (Wang et al. 2022): the norm of the feature's residual outside
  the training features' principal subspace, scaled to the logits' range, minus the energy.
  Origin at the head's -pinv(W) b, as in the paper.
- ``fusion``: ``knn + energy + mahalanobis_pp + vim``, each standardised by its mean and standard
  deviation on val and summed (a :class:`abcd.ood.base.Fusion`). The default unknown.method:
  it rejected the most OOD photos at the target known false-reject rate on the OOD set's
  selection half, by a rule fixed before that table was read (research/README.md).

ViM's subspace dimension was chosen on that selection half too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from abcd.core.params import ParamsError
from abcd.ood.base import Fusion, Method, Ready, State, no_state

VIM_DIM = 256  # principal subspace kept by ViM, of lite2's 1280 feature dimensions (128-512 tied)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows on the unit sphere, float32: what the fits store (the bank in fp16, Mahalanobis++'s Gaussian)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _unit(feats: torch.Tensor) -> torch.Tensor:
    return feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _max_softmax_score(ready: Ready, feats: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # 1 - max calibrated probability: "max p < threshold" is "score > 1 - threshold".
    return 1.0 - torch.softmax(logits / temperature, dim=1).max(dim=1).values


def _energy_score(ready: Ready, feats: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # Free energy -T logsumexp(logits / T) at T = 1, as in the paper: a larger total logit mass
    # means more familiar, which the max probability throws away.
    return -torch.logsumexp(logits, dim=1)


def ledoit_wolf_covariance(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of already-centred rows (float64)."""
    # Imported here: only train fits the detectors; test and predict import this module to score.
    from sklearn.covariance import ledoit_wolf

    cov, _ = ledoit_wolf(np.asarray(x, np.float64), assume_centered=True)
    return cov


def _fit_mahalanobis_pp(x: np.ndarray, y: np.ndarray, k: int) -> State:
    x = _normalise_rows(x)
    means = np.stack([x[y == c].mean(axis=0) for c in range(int(y.max()) + 1)])
    centred = x - means[y]
    # Shared covariance (Lee et al. 2018) with Ledoit-Wolf shrinkage: D can be close to N,
    # where the sample covariance is singular or badly conditioned.
    cov = ledoit_wolf_covariance(centred)
    # Shrinkage makes it positive definite: a plain inverse (LU), not an eigh-based pseudo-inverse.
    precision = np.linalg.inv(cov)
    return {
        "means": torch.from_numpy(means.astype(np.float32)),
        "precision": torch.from_numpy(precision.astype(np.float32)),
    }


def _prepare_mahalanobis_pp(state: Mapping[str, torch.Tensor]) -> State:
    # With P = L L^T (Cholesky), (x - m) P (x - m)^T = |x L - m L|^2: one (N, D) x (D, D) product
    # for all classes, where multiplying each of the C differences by P costs C of them. The
    # factorisation happens here, once and in float64: ONNX has no Cholesky operator.
    factor = torch.linalg.cholesky(state["precision"].double())
    return {"factor": factor, "centres": state["means"].double() @ factor}


def _mahalanobis_pp_score(ready: Ready, feats: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    factor, centres = ready["factor"].to(feats.dtype), ready["centres"].to(feats.dtype)
    z = _unit(feats) @ factor
    return ((z[:, None, :] - centres[None]) ** 2).sum(dim=-1).min(dim=1).values


def _fit_knn(x: np.ndarray, y: np.ndarray, k: int) -> State:
    if k > len(x):
        raise ParamsError(f"params: 'unknown.knn_k' is {k} but the training bank has only {len(x)} features")
    # fp16 halves the checkpoint's size; cosine distances need no more precision than that.
    return {"bank": torch.from_numpy(_normalise_rows(x).astype(np.float16)), "k": torch.tensor(k)}


def _knn_score(ready: Ready, feats: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    bank = ready["bank"].to(feats.dtype)
    d = 2.0 - 2.0 * _unit(feats) @ bank.T  # squared Euclidean distance between unit vectors
    # The k smallest in ascending order, the k-th last (kthvalue has no ONNX operator; TopK has).
    kth = torch.topk(d, int(ready["k"]), dim=1, largest=False).values[:, -1]
    return kth.clamp_min(0).sqrt()  # a bank row a rounding error off the sphere can give d < 0


def _fit_vim(
    x: np.ndarray, y: np.ndarray, k: int, *, linear: tuple[torch.Tensor, torch.Tensor], dim: int = VIM_DIM
) -> State:
    w, b = (t.detach().double().numpy() for t in linear)
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


def _vim_score(ready: Ready, feats: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    origin, basis = ready["origin"].to(feats.dtype), ready["basis"].to(feats.dtype)
    centred = feats - origin
    residual = (centred - (centred @ basis) @ basis.T).norm(dim=1)
    # ViM's score is energy - virtual logit (higher = known); negated here.
    return float(ready["alpha"]) * residual + _energy_score(ready, feats, logits, temperature)


MAX_SOFTMAX = Method(no_state, _max_softmax_score, "1 - max calibrated class probability (original rule)")
ENERGY = Method(no_state, _energy_score, "free energy -logsumexp(logits)")
# kNN's bank holds the eval views too (k = 1 with them was chosen on the selection half): a known
# image's eval view is then near its own kind of view, not only near augmented ones.
KNN = Method(_fit_knn, _knn_score, "distance to the k-th nearest training feature (cosine)", eval_view_bank=True)
MAHALANOBIS_PP = Method(
    _fit_mahalanobis_pp,
    _mahalanobis_pp_score,
    "Mahalanobis++: min Mahalanobis distance on L2-normalised features",
    prepare=_prepare_mahalanobis_pp,
)
VIM = Method(_fit_vim, _vim_score, "ViM: residual outside the principal subspace minus energy", uses_head=True)
FUSION = Fusion(
    ("knn", "energy", "mahalanobis_pp", "vim"), "knn + energy + mahalanobis_pp + vim, each standardised on val, summed"
)
