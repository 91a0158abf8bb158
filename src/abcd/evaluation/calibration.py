"""Temperature scaling: one scalar T, fitted on validation logits, makes softmax(logits / T) calibrated."""

from __future__ import annotations

import math

import numpy as np

# T is searched on log scale within [e^-4, e^4]: far wider than any sane head needs.
_LOG_T_BOUNDS = (-4.0, 4.0)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising validation NLL (argmax and accuracy are unchanged by T)."""
    if len(labels) == 0:
        raise ValueError("fit_temperature: no validation samples to fit the temperature on")
    # Imported here: scipy.optimize costs 0.4 s to import, and only train fits T (sklearn has loaded it there).
    from scipy.optimize import minimize_scalar

    # NLL is convex in 1/T, hence unimodal in log T: a bounded scalar search finds its minimum.
    result = minimize_scalar(
        lambda s: nll(logits, labels, math.exp(s)), bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-7}
    )
    return float(math.exp(result.x))


def calibrated_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) in float64."""
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))
