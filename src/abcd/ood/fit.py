"""Fitting at train time: the temperature and every registered unknown detector, checkpoint-ready.

Only train imports this module (it needs scikit-learn); test and predict score with
``abcd.ood.detectors``, and the val scores that set the thresholds here come through that
same route.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from abcd.core.errors import InvalidFileError
from abcd.core.registry import UNKNOWN_METHODS
from abcd.evaluation.calibration import calibrated_probs, fit_temperature, nll
from abcd.evaluation.metrics import expected_calibration_error
from abcd.ood.base import Fusion, sample_rows, threshold_for_false_reject
from abcd.ood.detectors import Detector, head_logits


def _fit_rows(
    train_x: np.ndarray, train_y: np.ndarray, train_eval_x: np.ndarray | None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(the views' rows, kNN's bank rows), each ``(x (N, D), y (N,))`` and capped by :func:`sample_rows`."""
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
        # The views first, then the eval views, the bank's row order on the selection half.
        bank = (np.concatenate([train_x, train_eval_x]), np.r_[train_y, image_y])
    return sample_rows(train_x, train_y), sample_rows(*bank)


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
    rows, bank = _fit_rows(train_x, train_y, train_eval_x)
    val_x, val_y = np.asarray(val_x, np.float32), np.asarray(val_y)
    logits = head_logits(head, val_x)
    missing = sorted(set(range(logits.shape[1])) - set(np.unique(rows[1]).tolist()))
    if missing:
        raise InvalidFileError(f"unknown detectors: no training features for class index(es) {missing}")
    fitted = fit_temperature(logits, val_y)
    temperature = fitted if calibrate else 1.0
    unknown: dict[str, Any] = {}
    detectors: dict[str, Detector] = {}
    val_scores: dict[str, np.ndarray] = {}
    linear = head[-1]
    methods = dict(UNKNOWN_METHODS.items())
    # The single methods first: a fusion is fitted from their val scores.
    for name, method in sorted(methods.items(), key=lambda item: isinstance(item[1], Fusion)):
        if isinstance(method, Fusion):
            state = method.fit(val_scores)
            parts = tuple(detectors[part] for part in state)
            detector = Detector(name, method, state, math.nan, temperature, parts)
        else:
            extra = {"linear": (linear.weight.detach(), linear.bias.detach())} if method.uses_head else {}
            state = method.fit(*(bank if method.eval_view_bank else rows), knn_k, **extra)
            detector = detectors[name] = Detector(name, method, state, math.nan, temperature)
        val_scores[name] = detector.score(val_x, logits, val_scores)
        unknown[name] = {"state": state, "threshold": threshold_for_false_reject(val_scores[name], false_reject)}
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
