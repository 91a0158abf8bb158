"""Fitting a head (or fine-tuned blocks + head) on precomputed inputs: one epoch, evaluation, the loop.

In the manner of torchvision's classification reference: :func:`train_one_epoch` and
:func:`evaluate` do one job each, and :func:`fit` alternates them, keeps the best epoch by
validation loss, stops early, and can resume from a saved state exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from abcd.core.params import TrainParams
from abcd.core.registry import CLASS_WEIGHTS
from abcd.evaluation.metrics import f1_macro
from abcd.features.distributed import SINGLE, World
from abcd.models.checkpoint import training_state
from abcd.models.head import Split
from abcd.training.optim import build_optimizer, lr_factor


@dataclass
class EpochStats:
    loss: float
    accuracy: float


def train_one_epoch(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: TrainParams,
    generator: torch.Generator,
    class_weights: torch.Tensor | None = None,
    desc: str = "train",
    world: World = SINGLE,
) -> EpochStats:
    """One pass over the training set. ``features`` is (N, K, ...): one random view per image.

    The inputs are pooled features (frozen backbone) or a frozen prefix's activations
    (fine-tuning): ``model`` maps them to logits either way.

    With several ranks (``model`` in DistributedDataParallel) every rank draws the same views and
    order (the same generator), so each global batch is the one a single process takes, and each
    rank runs its contiguous part of it. A rank's loss is its part's sum over the whole batch's
    denominator (its size, or its summed class weights: what ``cross_entropy``'s mean divides by)
    times the number of ranks, which DDP's gradient average divides out again: the gradient is the
    whole batch's, up to the order of float additions, even when a batch does not split evenly.
    With one process that is ``cross_entropy``'s mean (bit-identical without label smoothing).
    """
    model.train()
    n, views = features.shape[0], features.shape[1]
    view = torch.randint(views, (n,), generator=generator)
    order = torch.randperm(n, generator=generator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total_loss, correct = 0.0, 0
    for start in tqdm(range(0, n, params.batch_size), desc=desc, unit="batch", leave=False, disable=None):
        idx = order[start : start + params.batch_size]
        mine = idx.tensor_split(world.size)[world.rank]
        logits = model(features[mine, view[mine]])
        summed = nn.functional.cross_entropy(
            logits, labels[mine], weight=class_weights, label_smoothing=params.label_smoothing, reduction="sum"
        )
        denominator = len(idx) if class_weights is None else class_weights[labels[idx]].sum()
        optimizer.zero_grad(set_to_none=True)
        (summed * world.size / denominator).backward()
        if params.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, params.grad_clip)
        optimizer.step()
        total_loss += (summed / denominator).item() * len(idx)  # this rank's share of the batch's mean loss
        correct += (logits.argmax(1) == labels[mine]).sum().item()
    if world.distributed:
        total_loss, correct = world.all_reduce_sum([total_loss, correct])
    return EpochStats(total_loss / n, correct / n)


@torch.no_grad()
def evaluate(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> tuple[EpochStats, torch.Tensor]:
    """Plain cross-entropy (no smoothing or weights: the log loss), accuracy and probabilities."""
    model.eval()
    logits = torch.cat([model(features[i : i + batch_size]) for i in range(0, len(features), batch_size)])
    loss = nn.functional.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return EpochStats(loss, acc), torch.softmax(logits, dim=1)


@dataclass
class FitResult:
    head: nn.Module  # the module that was fitted (head, or fine-tuned blocks + head), at its best epoch
    best_epoch: int
    best_val: EpochStats
    history: list[dict[str, float]]
    val_probs: torch.Tensor
    interrupted: bool = False
    stopped_early: bool = False


def _history_row(
    epoch: int, tr: EpochStats, va: EpochStats, val_labels: torch.Tensor, probs: torch.Tensor, lr: float
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": tr.loss,
        "train_accuracy": tr.accuracy,
        "val_loss": va.loss,
        "val_accuracy": va.accuracy,
        "val_f1": f1_macro(val_labels.numpy(), probs.argmax(1).numpy(), probs.shape[1]),
        "lr": lr,
    }


def fit(
    head: nn.Module,
    train: Split,
    val: Split,
    params: TrainParams,
    seed: int,
    log: Callable[[dict[str, float], torch.Tensor], None] = lambda row, probs: None,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    num_classes: int | None = None,
    keep_start: bool = False,
    *,
    lr: float,
    world: World = SINGLE,
) -> FitResult:
    """Alternate training and validation at head learning rate ``lr``; return the best model by val loss.

    Stops after ``params.epochs``, or earlier when val loss has not improved for
    ``params.patience`` epochs. ``on_epoch_end`` gets the full training state after each
    epoch; passing such a state back as ``resume`` continues exactly where it stopped.
    ``keep_start``: the starting weights are epoch 0 (validated, logged, in the history) and
    are returned if no epoch has a lower val loss. With several ranks (``world``), every rank
    calls this: the head trains in DistributedDataParallel, every rank validates on the whole
    val split (so all agree on the best epoch and on stopping), and ``on_epoch_end`` should
    save on rank 0 only.
    """
    if num_classes is None:
        num_classes = int(max(int(train[1].max()), int(val[1].max())) + 1)
    counts = torch.bincount(train[1], minlength=num_classes).float()
    class_weights = CLASS_WEIGHTS.get(params.class_weights, "train.class_weights")(counts)
    optimizer = build_optimizer(head, params, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, params))
    generator = torch.Generator().manual_seed(seed)
    best: FitResult | None = None
    history: list[dict[str, float]] = []
    stale = 0
    if resume is not None:
        history, best, stale = _restore(resume, head, optimizer, scheduler, generator, seed, world)
    elif keep_start:
        # Train-set numbers of epoch 0 are measured like val's (eval mode, first view): no step was taken.
        tr, _ = evaluate(head, train[0][:, 0], train[1])
        va, probs = evaluate(head, *val)
        row = _history_row(0, tr, va, val[1], probs, 0.0)
        history.append(row)
        log(row, probs)
        best = FitResult(copy.deepcopy(head), 0, va, history, probs)
    if world.distributed and resume is None:
        torch.manual_seed(seed + 1_000_003 * world.rank)  # dropout masks: each rank draws its own
    # The ranks' gradients are averaged in backward (DistributedDataParallel); everything else uses `head`.
    model = nn.parallel.DistributedDataParallel(head) if world.distributed else head
    try:
        for epoch in range((history[-1]["epoch"] + 1) if history else 1, params.epochs + 1):
            if params.patience and stale >= params.patience:
                best.stopped_early = True
                break
            lr = optimizer.param_groups[0]["lr"]
            tr = train_one_epoch(model, *train, optimizer, params, generator, class_weights, f"epoch {epoch}", world)
            va, probs = evaluate(head, *val)
            scheduler.step()
            row = _history_row(epoch, tr, va, val[1], probs, lr)
            history.append(row)
            log(row, probs)
            if best is None or va.loss < best.best_val.loss:
                best = FitResult(copy.deepcopy(head), epoch, va, history, probs)
                stale = 0
            else:
                stale += 1
            # Every rank's dropout stream, for resuming on as many ranks (a collective: all ranks call it).
            rngs = world.all_gather(torch.get_rng_state()) if world.distributed else None
            if on_epoch_end is not None:
                state = training_state(head, optimizer, scheduler, generator, history, best, stale)
                on_epoch_end({**state, "torch_rng_ranks": rngs} if rngs else state)
    except KeyboardInterrupt:
        # Ctrl-C stops between steps; the best epoch so far goes back to the caller to save.
        if best is None:
            raise
        best.interrupted = True
    assert best is not None  # epochs >= 1 is validated in params
    best.history = history
    return best


def _restore(
    resume: Mapping[str, Any],
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    seed: int,
    world: World,
) -> tuple[list[dict[str, float]], FitResult, int]:
    """Load a :func:`training_state` into the live objects; (history, best so far, stale epochs)."""
    head.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    generator.set_state(resume["generator"])
    torch.set_rng_state(resume["torch_rng"])
    history = list(resume["history"])
    best_head = copy.deepcopy(head)
    best_head.load_state_dict(resume["best_model"])
    best = FitResult(best_head, resume["best_epoch"], EpochStats(*resume["best_val"]), history, resume["best_probs"])
    if world.distributed:
        # Each rank's own dropout stream; a run resumed on another number of ranks re-seeds them.
        ranks = resume.get("torch_rng_ranks") or []
        if len(ranks) == world.size:
            torch.set_rng_state(ranks[world.rank])
        elif world.rank:
            torch.manual_seed(seed + 1_000_003 * world.rank + len(history))
    return history, best, int(resume["stale"])
