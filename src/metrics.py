"""Classification metrics on (labels, probabilities): NumPy only.

The ranking metrics (ROC, precision-recall, AUC, AP) follow scikit-learn's definitions
exactly and are tested against it; they are written out here because importing
sklearn.metrics costs the evaluate stage 0.8 s of a head-only experiment's budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

EPS = 1e-15  # probability floor for log loss: one confident miss costs at most -log(1e-15) = 34.5


def confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts, rows = true class, columns = predicted class."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def f1_macro(labels: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Unweighted mean of per-class F1 over all ``k`` classes (0 where a class has no support)."""
    cm = confusion(labels, predicted, k)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean())


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, 1.0))))


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance to the one-hot label."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def _binary_clf_curve(positives: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at each distinct score, highest first (sklearn's ``_binary_clf_curve``)."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    s, y = np.asarray(scores, np.float64)[order], np.asarray(positives, bool)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[last].astype(np.float64)
    return 1.0 + last - tps, tps, s[last]


def roc_curve(positives: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as ``sklearn.metrics.roc_curve`` (collinear points dropped; first threshold inf)."""
    fps, tps, thr = _binary_clf_curve(positives, scores)
    if len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps, thr = np.r_[0.0, fps], np.r_[0.0, tps], np.r_[np.inf, thr]
    return fps / fps[-1], tps / tps[-1], thr


def roc_auc(positives: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a positive outscores a negative (ties count half)."""
    fpr, tpr, _ = roc_curve(positives, scores)
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(positives: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) as ``sklearn.metrics.precision_recall_curve``, ending at (1, 0)."""
    fps, tps, thr = _binary_clf_curve(positives, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(positives: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve (sklearn's ``average_precision_score``)."""
    precision, recall, _ = precision_recall_curve(positives, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


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
    cm = confusion(labels, predicted, k)
    tp, support = np.diag(cm).astype(float), cm.sum(axis=1)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros(k), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    per_class = {}
    for i, name in enumerate(classes):
        positives = labels == i
        defined = 0 < positives.sum() < len(labels)  # AUC/AP need both positives and negatives
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "roc_auc": roc_auc(positives, probs[:, i]) if defined else None,
            "average_precision": average_precision(positives, probs[:, i]) if defined else None,
        }
    aucs = [c["roc_auc"] for c in per_class.values() if c["roc_auc"] is not None]
    level = round(ci_level * 100)
    return {
        "n": len(labels),
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": float(np.mean([r for r, s in zip(recall, support) if s > 0])),
        "f1_macro": f1_macro(labels, predicted, k),
        # Single-label, every label among the classes: micro F1 is the accuracy.
        "f1_micro": float(np.mean(predicted == labels)),
        "log_loss": log_loss(labels, probs),
        "brier": brier(labels, probs),
        "ece": expected_calibration_error(labels, probs, ece_bins),
        "roc_auc_macro": float(np.mean(aucs)) if aucs else None,
        f"ci{level}": {
            "f1_macro": bootstrap_ci(
                labels, probs, lambda y, p: f1_macro(y, p.argmax(1), k), bootstrap, ci_level, seed
            ),
            "log_loss": bootstrap_ci(labels, probs, log_loss, bootstrap, ci_level, seed),
        },
        "per_class": per_class,
    }
