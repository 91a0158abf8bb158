"""How the head's last linear layer starts (``train.init``; the ``HEAD_INITS`` registry)."""

from __future__ import annotations

import torch
from torch import nn

from abcd.core.params import TrainParams
from abcd.core.registry import HEAD_INITS
from abcd.models.head import Split
from abcd.training.probe import fit_probe


def init_random(linear: nn.Linear, train: Split, val: Split, params: TrainParams) -> dict:
    return {}  # PyTorch's default initialisation, drawn when the head was built


def init_probe(linear: nn.Linear, train: Split, val: Split, params: TrainParams) -> dict:
    # Linear-probe-then-train: the head starts at the probe's solution on clean (eval-view)
    # features and adapts to the augmented views with a small lr. Cross-validated, a random
    # start at any of 86 settings stayed behind the probe; this one matches it (research/README.md).
    probe = fit_probe(train, val, linear.out_features, params.probe_c)
    with torch.no_grad():
        linear.weight.copy_(probe.weight)
        linear.bias.copy_(probe.bias)
    return {"probe_c": probe.c, "probe_val_loss": probe.val_loss}


def init_head(linear: nn.Linear, train: Split, val: Split, params: TrainParams) -> dict:
    """Set the head's starting weights by ``train.init``; return what was chosen (for the checkpoint)."""
    return {"init": params.init, **HEAD_INITS.get(params.init, "train.init")(linear, train, val, params)}
