"""Candidate classifiers on frozen backbone features, all with one interface (used by cv.py and final_test.py).

    candidate(views, eval_view, y, x_sel, y_sel, x_out) -> Fit

views (n, V, D): augmented views of the training images; eval_view (n, D): their eval view (resize +
centre crop); y (n,): labels. x_sel / y_sel: the selection set (eval view), used as the pipeline uses
val: best epoch for a head, L2 strength C for logistic regression. x_out: the images to score (eval view).
Candidates return logits (T = 1); temperature scaling is applied afterwards from the selection logits.
Settings come from ./params.yaml (run from the repo root).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from abcd.core.params import load_params
from abcd.evaluation.metrics import f1_macro, log_loss
from abcd.features.runtime import seed_everything, use_deterministic_algorithms
from abcd.models.head import build_head
from abcd.training.fit import fit
from abcd.training.init import init_head

torch.set_num_threads(1)
PARAMS = load_params(Path("params.yaml"))
PROBE_C = tuple(PARAMS.train.probe_c)  # the probe's C grid, as the pipeline's (the study's: the same 8 values)
NUM_CLASSES = len(PARAMS.classes)
use_deterministic_algorithms(PARAMS.train.deterministic)


@dataclass
class Fit:
    sel_logits: np.ndarray
    out_logits: np.ndarray
    info: dict = field(default_factory=dict)  # best_epoch / C, fit seconds


def scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    p = np.asarray(probs, dtype=np.float64)
    return {"f1": f1_macro(np.asarray(y), p.argmax(1), p.shape[1]), "ll": log_loss(np.asarray(y), p)}


class Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double().numpy()


def _views(views: np.ndarray, k: int) -> np.ndarray:
    if views.shape[1] < k:
        raise SystemExit(
            f"candidate needs {k} augmented views, the features have {views.shape[1]}: "
            f"run research/head_cv/features.py --views {k}"
        )
    return views[:, :k]


def head(
    views, eval_view, y, x_sel, y_sel, x_out, *, n_views=None, all_views=False, std=False, train=None, lr=None
) -> Fit:
    """The pipeline's head: abcd.training.init.init_head + abcd.training.fit.fit with params.yaml's model/train settings
    (or ``train``), best epoch by selection loss (epoch 0, the start, included unless train.init is random).

    n_views: augmented views per image (default featurize.views), one sampled per epoch as in the pipeline;
    all_views: every view every epoch (views become separate samples); std: standardise the inputs first.
    """
    tp = train or PARAMS.train
    lr = lr or PARAMS.lr  # the head's lr is the top-level param
    x = _views(views, n_views or PARAMS.featurize.views)
    pool = (torch.from_numpy(eval_view), torch.from_numpy(y).long())  # what the probe start is fitted on
    if all_views:
        y = np.repeat(y, x.shape[1])
        x = x.reshape(-1, 1, x.shape[-1])
    seed_everything(PARAMS.seed)
    d = x.shape[-1]
    model = build_head(d, NUM_CLASSES, PARAMS.model.dropout)
    if std:
        flat = torch.from_numpy(x.reshape(-1, d))
        model = nn.Sequential(Standardize(flat.mean(0), flat.std(0).clamp_min(1e-6)), *model)
    data = (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long())
    sel = (torch.from_numpy(x_sel), torch.from_numpy(y_sel).long())
    info = {} if std else init_head(model[-1], pool, sel, tp)  # the probe is fitted on raw features
    keep = bool(info) and tp.init != "random"
    res = fit(model, data, sel, tp, PARAMS.seed, num_classes=NUM_CLASSES, keep_start=keep, lr=lr)
    return Fit(_logits(res.head, x_sel), _logits(res.head, x_out), {**info, "best_epoch": res.best_epoch})


# The default before train.init existed: a randomly initialised head at lr 3e-3.
RANDOM_START = PARAMS.train.model_copy(update={"init": "random"})
RANDOM_LR = 0.003


def _logreg(x, y, x_sel, y_sel, x_out, grid) -> Fit:
    """Standardise (fitted on x) + multinomial L2 logistic regression (lbfgs); C by selection log loss."""
    scaler = StandardScaler().fit(x)
    xs = [scaler.transform(a) for a in (x, x_sel, x_out)]
    best = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=5000).fit(xs[0], y)
        ll = scores(y_sel, clf.predict_proba(xs[1]))["ll"]
        if best is None or ll < best[1]:
            best = (clf, ll, c)
    clf, _, c = best
    return Fit(clf.decision_function(xs[1]), clf.decision_function(xs[2]), {"C": c})


def probe(views, eval_view, y, x_sel, y_sel, x_out, *, grid=PROBE_C) -> Fit:
    """research/compare_backbones.linear_probe's model: logistic regression on the eval view (no augmentation)."""
    return _logreg(eval_view, y, x_sel, y_sel, x_out, grid)


def lr_views(views, eval_view, y, x_sel, y_sel, x_out, *, n_views=2, grid=PROBE_C) -> Fit:
    """The probe's model trained on the augmented views instead (each view a sample)."""
    x = _views(views, n_views)
    return _logreg(x.reshape(-1, x.shape[-1]), np.repeat(y, x.shape[1]), x_sel, y_sel, x_out, grid)


CANDIDATES: dict[str, Callable[..., Fit]] = {
    "a_head": head,  # the pipeline's default head (params.yaml)
    "a_head_random": lambda *a: head(*a, train=RANDOM_START, lr=RANDOM_LR),  # the previous default
    "b_probe": probe,  # the linear probe of research/compare_backbones.py
    "c_head_std": lambda *a: head(*a, std=True),  # the head with standardised inputs
    "d_head_all": lambda *a: head(*a, all_views=True),  # the head on every view every epoch
    "e_lr_views": lr_views,  # the probe's model on the 2 augmented views
    "f_probe_C1": lambda *a: probe(*a, grid=(1.0,)),  # the probe with C fixed at 1 (no selection)
}


def run(name: str, *args) -> Fit:
    if name not in CANDIDATES:
        raise SystemExit(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    start = time.perf_counter()
    out = CANDIDATES[name](*args)
    out.info["seconds"] = time.perf_counter() - start
    return out
