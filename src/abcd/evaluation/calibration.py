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

    # NLL is convex in 1/T, hence unimodal in log T: a golden-section search finds its minimum.
    # (NumPy only: scipy.optimize's import costs each stage that loads this module 0.4 s.)
    def f(s: float) -> float:
        return nll(logits, labels, math.exp(s))

    lo, hi = _LOG_T_BOUNDS
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > 1e-7:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return float(math.exp((lo + hi) / 2.0))


def calibrated_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) in float64."""
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))
