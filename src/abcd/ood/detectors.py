"""Unknown-image scores from the backbone's features and the head's logits: a registry by name.

Every score is "higher = more likely unknown". Each method is fitted from the TRAINING
features (all augmented views; kNN's bank also holds each training image's eval view) and
stored in the checkpoint as plain tensors, so ``weights_only`` loading works; its rejection
threshold is set on the validation split for a target false-reject rate of known images.
A :class:`Fusion` (``fusion``) sums other methods' scores, each standardised on val; it
stores only those standardisations and is built from its components' stored states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from abcd.core.errors import InvalidFileError
from abcd.core.params import ParamsError
from abcd.core.registry import UNKNOWN_METHODS
from abcd.evaluation.calibration import calibrated_probs, fit_temperature, nll

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Method:
    """``fit(train_x (N, D), train_y (N,), knn_k) -> state``; ``score(state, feats (N, D), logits, T) -> (N,)``.

    With ``uses_head``, ``fit`` also gets the head's last layer as ``linear=(weight, bias)``.
    With ``eval_view_bank``, ``fit``'s rows are the augmented views plus each training image's
    eval view (the transform val, test and predict see), not the views alone.
    """

    fit: Callable[..., State]
    score: Callable[[Mapping[str, torch.Tensor], np.ndarray, np.ndarray, float], np.ndarray]
    doc: str
    uses_head: bool = False
    eval_view_bank: bool = False


@dataclass(frozen=True)
class Fusion:
    """The sum of other registered methods' scores, each standardised on val: sum of (s - mean) / std.

    Fitted after the single methods, from their val scores (:meth:`fit`). Its stored state is
    ``{component name: tensor([mean, std])}`` (float64; numpy's mean and std, ddof 0) and nothing
    else: the components' own states (kNN's bank, ...) stay under their own names in the
    checkpoint, and :func:`detector_from_extra` builds the fusion from them, so nothing is
    stored twice. The stored names, not :attr:`components`, say what a checkpoint's fusion sums.
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
    def combine(state: Mapping[str, torch.Tensor], part_scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """sum over the stored components of (score - mean) / std, float64."""
        z = []
        for name, moments in state.items():
            mean, std = moments.double().tolist()
            z.append((np.asarray(part_scores[name], np.float64) - mean) / std)
        return np.sum(np.stack(z), axis=0)


def _no_state(x: np.ndarray, y: np.ndarray, k: int) -> State:
    return {}


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def _max_softmax_score(state, feats, logits, temperature) -> np.ndarray:
    # 1 - max calibrated probability: "max p < threshold" is "score > 1 - threshold".
    return 1.0 - calibrated_probs(np.asarray(logits, np.float64), temperature).max(axis=1)


def _energy_score(state, feats, logits, temperature) -> np.ndarray:
    # Free energy -T logsumexp(logits / T) (Liu et al. 2020), at T = 1 as in the paper: a
    # larger total logit mass means more familiar, which the max probability throws away.
    return -_logsumexp(np.asarray(logits, np.float64))


def ledoit_wolf_covariance(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of already-centred rows (float64)."""
    # Imported here: only train fits the detectors; test and predict import this module to score.
    from sklearn.covariance import ledoit_wolf

    cov, _ = ledoit_wolf(np.asarray(x, np.float64), assume_centered=True)
    return cov


def _fit_mahalanobis(x: np.ndarray, y: np.ndarray, k: int) -> State:
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


def _mahalanobis_score(state, feats, logits, temperature) -> np.ndarray:
    means = state["means"].double().numpy()
    precision = state["precision"].double().numpy()
    # With P = L L^T (Cholesky), (x - m) P (x - m)^T = |x L - m L|^2: one (N, D) x (D, D) product
    # for all classes, where multiplying each of the C differences by P cost C of them (train
    # scores a 4096-feature bank sample: seconds of float64 BLAS on 2 cores).
    factor = np.linalg.cholesky(precision)
    z = np.asarray(feats, np.float64) @ factor
    d2 = ((z[:, None, :] - (means @ factor)[None]) ** 2).sum(axis=-1)  # (N, C)
    return d2.min(axis=1)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# The detectors fit on at most this many training rows (views), a seeded random sample beyond it.
# kNN scores each image against its whole bank, so an uncapped bank made test and predict cost
# N_test x N_train (hours at 10^6 photos) and model.pt grow with the data; the covariance fits
# (Mahalanobis, ViM) held float64 copies of every row in train. Sun et al. (2022) report kNN's OOD
# results holding with a 1% sample of ImageNet's train set, and 16384 rows estimate a
# 1280-dimensional covariance well. This repo's bank (about 1700
# rows) is far below it and is used whole, so its numbers do not depend on the cap.
FIT_ROWS_MAX = 16384


def sample_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` whole when at most :data:`FIT_ROWS_MAX` rows, else a seeded sample in row order."""
    if len(x) <= FIT_ROWS_MAX:
        return x, y
    keep = np.sort(np.random.default_rng(0).permutation(len(x))[:FIT_ROWS_MAX])
    return x[keep], y[keep]


def _fit_knn(x: np.ndarray, y: np.ndarray, k: int) -> State:
    if k > len(x):
        raise ParamsError(f"params: 'unknown.knn_k' is {k} but the training bank has only {len(x)} features")
    # fp16 halves the checkpoint's size; cosine distances need no more precision than that.
    return {"bank": torch.from_numpy(_normalise(x).astype(np.float16)), "k": torch.tensor(k)}


def _knn_score(state, feats, logits, temperature) -> np.ndarray:
    # Distance to the k-th nearest training feature on the unit sphere (Sun et al. 2022).
    bank = state["bank"].float()
    k = int(state["k"])
    q = torch.from_numpy(_normalise(feats))
    out = []
    for chunk in q.split(1024):
        d = 2.0 - 2.0 * chunk @ bank.T  # squared Euclidean distance between unit vectors
        out.append(d.kthvalue(k, dim=1).values.clamp_min(0).sqrt())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


# The methods by name: UNKNOWN_METHODS in src/abcd/core/registry.py.
MAX_SOFTMAX = Method(_no_state, _max_softmax_score, "1 - max calibrated class probability (original rule)")
ENERGY = Method(_no_state, _energy_score, "free energy -logsumexp(logits)")
# kNN's bank holds the eval views too: "views+eval" in benchmarks/ood_detectors.py, where (k = 1) it
# was chosen on the OOD set's selection half (README: Predict). A known image's eval view is then
# near its own kind of view, not only near augmented ones.
KNN = Method(_fit_knn, _knn_score, "distance to the k-th nearest training feature (cosine)", eval_view_bank=True)


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


def head_logits(head: torch.nn.Module, feats: np.ndarray) -> np.ndarray:
    """The head's logits on (N, D) features, fp32, dropout off."""
    was = head.training
    head.eval()
    with torch.inference_mode():
        logits = head(torch.as_tensor(np.asarray(feats, np.float32))).numpy()
    head.train(was)
    return logits.astype(np.float64)


def fit_inference_extras(
    head: torch.nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    train_eval_x: np.ndarray | None,
    false_reject: float,
    knn_k: int,
    ece_bins: int,
    calibrate: bool,
) -> dict[str, Any]:
    """Temperature (on val) and every unknown method (fitted on train, thresholded on val), checkpoint-ready.

    ``train_x`` is (N, K, D) augmented views or (N, D); all views are used as samples.
    ``train_eval_x`` (N, D) is each training image's eval view, added to the rows of the methods
    with :attr:`Method.eval_view_bank` (kNN); None: those fit on the views alone. Without
    ``calibrate`` the temperature is 1 (the one a fit would give is still recorded).
    """
    # Imported here: sklearn.metrics, below abcd.evaluation.metrics, is only needed to fit (train); test and
    # predict import this module to score, and its import would cost each of them about half a second.
    from abcd.evaluation.metrics import expected_calibration_error

    train_x = np.asarray(train_x, np.float32)
    image_y = train_y = np.asarray(train_y)
    if train_x.ndim == 3:
        views = train_x.shape[1]
        train_x, train_y = train_x.reshape(-1, train_x.shape[-1]), np.repeat(train_y, views)
    bank = (train_x, train_y)
    if train_eval_x is not None:
        train_eval_x = np.asarray(train_eval_x, np.float32)
        if train_eval_x.shape != (len(image_y), train_x.shape[-1]):
            raise ValueError(
                f"train_eval_x: shape {train_eval_x.shape}, expected one eval view per training image "
                f"{(len(image_y), train_x.shape[-1])}"
            )
        # The views first, then the eval views: the row order of benchmarks/ood_detectors.py's "views+eval".
        bank = (np.concatenate([train_x, train_eval_x]), np.r_[train_y, image_y])
    train_x, train_y = sample_rows(train_x, train_y)
    bank = sample_rows(*bank)
    val_x, val_y = np.asarray(val_x, np.float32), np.asarray(val_y)
    logits = head_logits(head, val_x)
    missing = sorted(set(range(logits.shape[1])) - set(np.unique(train_y).tolist()))
    if missing:
        raise InvalidFileError(f"unknown detectors: no training features for class index(es) {missing}")
    fitted = fit_temperature(logits, val_y)
    temperature = fitted if calibrate else 1.0
    unknown: dict[str, Any] = {}
    val_scores: dict[str, np.ndarray] = {}
    linear = head[-1]
    methods = dict(UNKNOWN_METHODS.items())
    for name, method in methods.items():
        if isinstance(method, Fusion):
            continue  # below, from the single methods' val scores
        extra = {"linear": (linear.weight.detach(), linear.bias.detach())} if method.uses_head else {}
        state = method.fit(*(bank if method.eval_view_bank else (train_x, train_y)), knn_k, **extra)
        val_scores[name] = method.score(state, val_x, logits, temperature)
        unknown[name] = {"state": state, "threshold": threshold_for_false_reject(val_scores[name], false_reject)}
    for name, method in methods.items():
        if isinstance(method, Fusion):
            state = method.fit(val_scores)
            fused = method.combine(state, val_scores)
            unknown[name] = {"state": state, "threshold": threshold_for_false_reject(fused, false_reject)}
    return {
        "temperature": temperature,
        "calibration": {
            "fitted_temperature": fitted,
            "val_nll_before": nll(logits, val_y),
            "val_nll_after": nll(logits, val_y, temperature),
            "val_ece_before": expected_calibration_error(val_y, calibrated_probs(logits, 1.0), ece_bins),
            "val_ece_after": expected_calibration_error(val_y, calibrated_probs(logits, temperature), ece_bins),
        },
        "unknown": unknown,
        "unknown_false_reject": false_reject,
    }


@dataclass(frozen=True)
class Detector:
    """One fitted method with its threshold: ``reject`` where ``score > threshold``.

    A :class:`Fusion`'s ``parts`` are its components' detectors, built from their own stored states.
    """

    name: str
    method: Method | Fusion
    state: Mapping[str, torch.Tensor]
    threshold: float
    temperature: float
    parts: tuple[Detector, ...] = ()

    def score(
        self, feats: np.ndarray, logits: np.ndarray, computed: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """The scores of (N, D) features with their (N, C) logits. ``computed``: scores of other
        detectors of the same checkpoint on the same rows, which a fusion reuses instead of recomputing."""
        if isinstance(self.method, Fusion):
            computed = computed or {}
            parts = {p.name: computed[p.name] if p.name in computed else p.score(feats, logits) for p in self.parts}
            return self.method.combine(self.state, parts)
        return self.method.score(self.state, feats, logits, self.temperature)


def detector_from_extra(extra: Mapping[str, Any], name: str, max_softmax_threshold: float | None) -> Detector:
    """The detector ``name`` stored in a checkpoint's ``extra``.

    ``max_softmax`` keeps the original rule: unknown when the (calibrated) max class
    probability is below ``max_softmax_threshold`` (predict.threshold); with None it uses
    its val threshold like the others. A checkpoint from before detectors were saved has
    only the original rule, at temperature 1.
    """
    method = UNKNOWN_METHODS.get(name, "unknown.method")
    temperature = float(extra.get("temperature", 1.0))
    if name == "max_softmax" and max_softmax_threshold is not None:
        return Detector(name, method, {}, 1.0 - max_softmax_threshold, temperature)
    fitted = extra.get("unknown", {})
    if name not in fitted:
        raise InvalidFileError(
            f"the checkpoint has no fitted unknown detector {name!r} (it has: {', '.join(fitted) or 'none'}); "
            "retrain it (dvc repro train) or choose unknown.method max_softmax"
        )
    state, threshold = fitted[name]["state"], float(fitted[name]["threshold"])
    if not isinstance(method, Fusion):
        return Detector(name, method, state, threshold, temperature)
    missing = [part for part in state if part not in fitted]
    if missing or not state:
        raise InvalidFileError(
            f"the checkpoint's unknown detector {name!r} sums {', '.join(state) or 'no detector'}, but it has no "
            f"fitted {', '.join(repr(m) for m in missing) or 'component'} (it has: {', '.join(fitted)}); "
            "retrain it (dvc repro train)"
        )
    parts = tuple(detector_from_extra(extra, part, None) for part in state)
    return Detector(name, method, state, threshold, temperature, parts)
