"""Classification metrics on (labels, probabilities): scikit-learn's, plus what it lacks.

sklearn.metrics computes every metric and curve it has (F1, log loss, Brier, confusion,
ROC and precision-recall curves, AUC, average precision). Written here: thin wrappers
giving them this project's shape (labels are class indices ``0..k-1``, all ``k`` passed,
so a class missing from a split or a bootstrap resample still counts), equal-width
calibration bins and ECE (sklearn's ``calibration_curve`` is binary), and the seeded
percentile bootstrap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sklearn import metrics as skm

# scikit-learn's ranking functions, under this module's names.
roc_curve = skm.roc_curve
precision_recall_curve = skm.precision_recall_curve
roc_auc = skm.roc_auc_score
average_precision = skm.average_precision_score


@contextmanager
def _stored_probabilities() -> Iterator[None]:
    """Silence sklearn's "do not sum to one" warning for probabilities as the predictions CSV stores them.

    The CSV keeps 6 significant digits, so a row sums to 1 only within about 1e-6 (read_predictions
    rejects more than 1e-3); sklearn warns beyond 1.5e-8, once per call of a bootstrap, and uses the
    values as they are (it does not renormalise).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
        yield


def confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts, rows = true class, columns = predicted class."""
    return skm.confusion_matrix(labels, predicted, labels=np.arange(k))


def f1_macro(labels: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Unweighted mean of per-class F1 over all ``k`` classes (0 where a class has no support)."""
    return float(skm.f1_score(labels, predicted, labels=np.arange(k), average="macro", zero_division=0))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy; sklearn clips probabilities to [eps, 1 - eps] (float64 eps: at most 36 per image)."""
    with _stored_probabilities():
        return float(skm.log_loss(labels, probs, labels=np.arange(probs.shape[1])))


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot label.

    Not halved for two classes (sklearn's binary convention), so it means the same for any ``k``.
    """
    with _stored_probabilities():
        return float(skm.brier_score_loss(labels, probs, labels=np.arange(probs.shape[1]), scale_by_half=False))


def calibration_bins(labels: np.ndarray, probs: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Reliability diagram data: per non-empty confidence bin, mean confidence, accuracy, count."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin i holds confidences in (i/bins, (i+1)/bins]; confidence 0 can only occur with k=1.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append(
                {
                    "bin": b,
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return rows


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """ECE: count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    n = len(labels)
    return float(
        sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in calibration_bins(labels, probs, bins))
    )


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int,
    level: float,
    seed: int,
) -> dict[str, float]:
    """Percentile bootstrap interval of ``statistic(labels, probs)`` over images, seeded."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    values = np.array([statistic(labels[idx], probs[idx]) for idx in rng.integers(0, n, size=(n_resamples, n))])
    alpha = (1.0 - level) / 2
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high)}


def classification_report(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    ece_bins: int,
    bootstrap: int,
    ci_level: float,
    seed: int,
) -> dict:
    """Every metric of the evaluate stage, as one nested dict (``dvc exp show`` flattens it)."""
    k = len(classes)
    predicted = probs.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=np.arange(k), zero_division=0
    )
    per_class = {}
    for i, name in enumerate(classes):
        positives = labels == i
        defined = 0 < positives.sum() < len(labels)  # AUC/AP need both positives and negatives
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "roc_auc": float(roc_auc(positives, probs[:, i])) if defined else None,
            "average_precision": float(average_precision(positives, probs[:, i])) if defined else None,
        }
    aucs = [c["roc_auc"] for c in per_class.values() if c["roc_auc"] is not None]
    level = round(ci_level * 100)
    return {
        "n": len(labels),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        # Mean recall over the classes present (sklearn warns if a class is predicted but absent).
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predicted)),
        "f1_macro": f1_macro(labels, predicted, k),
        "f1_micro": float(skm.f1_score(labels, predicted, labels=np.arange(k), average="micro", zero_division=0)),
        "log_loss": log_loss(labels, probs),
        "brier": brier(labels, probs),
        "ece": expected_calibration_error(labels, probs, ece_bins),
        # Macro one-vs-rest AUC (what roc_auc_score(multi_class="ovr") gives), over the classes where it is defined.
        "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
        f"ci{level}": {
            "f1_macro": bootstrap_ci(
                labels, probs, lambda y, p: f1_macro(y, p.argmax(1), k), bootstrap, ci_level, seed
            ),
            "log_loss": bootstrap_ci(labels, probs, log_loss, bootstrap, ci_level, seed),
        },
        "per_class": per_class,
    }
