"""Optimizers, lr schedules and class weights by name (the registries in src/abcd/core/registry.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from abcd.core.params import TrainParams
from abcd.core.registry import OPTIMIZERS, SCHEDULERS


# --- optimizers: (param groups, lr, weight decay) -> optimizer ------------------------------------
def sgd(groups: list[dict], lr: float, wd: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)


def adam(groups: list[dict], lr: float, wd: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, weight_decay=wd)


def adamw(groups: list[dict], lr: float, wd: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


# --- schedules: lr multiplier as a function of progress t in [0, 1) through the epochs after warm-up --
def constant(t: float) -> float:
    return 1.0


def cosine(t: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * t))


def step(t: float) -> float:
    return 0.1 ** math.floor(3 * t)  # x0.1 after 1/3 and after 2/3 of the epochs


# --- class weights: per-class loss weights from the training label counts ------------------------
def no_weights(counts: torch.Tensor) -> torch.Tensor | None:
    return None


def balanced(counts: torch.Tensor) -> torch.Tensor:
    return counts.sum() / (len(counts) * counts.clamp(min=1))


def param_groups(model: nn.Module, params: TrainParams, lr: float) -> list[dict]:
    """The head at ``lr`` (the top-level param); any other trainable parameter (fine-tuned blocks) at
    ``train.backbone_lr``."""
    head = getattr(model, "head", model)
    head_params = [p for p in head.parameters() if p.requires_grad]
    ids = {id(p) for p in head_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": head_params, "lr": lr}]
    if rest:
        groups.append({"params": rest, "lr": params.backbone_lr})
    return groups


def build_optimizer(model: nn.Module, params: TrainParams, lr: float) -> torch.optim.Optimizer:
    """``train.optimizer`` over :func:`param_groups`, the head at ``lr``."""
    return OPTIMIZERS.get(params.optimizer, "train.optimizer")(param_groups(model, params, lr), lr, params.weight_decay)


def lr_factor(epoch: int, params: TrainParams) -> float:
    """lr multiplier for 0-based ``epoch``: linear warm-up, then the schedule over the rest."""
    warm = params.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    return SCHEDULERS.get(params.scheduler, "train.scheduler")((epoch - warm) / (params.epochs - warm))
