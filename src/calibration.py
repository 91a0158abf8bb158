"""Temperature scaling: one scalar T, fitted on validation logits, makes softmax(logits / T) calibrated."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

# T is searched on log scale within [e^-4, e^4]: far wider than any sane head needs.
_LOG_T_BOUNDS = (-4.0, 4.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising validation NLL (argmax and accuracy are unchanged by T)."""
    if len(labels) == 0:
        raise ValueError("fit_temperature: no validation samples to fit the temperature on")
    res = minimize_scalar(lambda s: nll(logits, labels, float(np.exp(s))), bounds=_LOG_T_BOUNDS, method="bounded")
    return float(np.exp(res.x))


def calibrated_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) in float64."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
