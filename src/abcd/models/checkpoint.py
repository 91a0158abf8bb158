"""Checkpoints: the trained classifier (``model.pt``) and the state to resume training from (``last.pt``).

Both are written atomically and hold plain data and tensors only, so they load with
``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run code on load.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.core.fileio import atomic_file
from abcd.core.preprocess import Preprocess
from abcd.core.registry import UNKNOWN_METHODS
from abcd.models.backbones import build_backbone, state_fingerprint
from abcd.models.head import Classifier, build_head

CHECKPOINT_FORMAT = 1


@dataclass
class LoadedModel:
    """A validated checkpoint. The full model is built on first use of ``model``: importing and
    building a backbone costs seconds, which stages that only need the head (on cached
    features) do not pay."""

    classes: list[str]
    backbone: str
    preprocess: Preprocess
    params: dict[str, Any]
    num_features: int
    dropout: float
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    source: str = ""
    # 0: backbone as pretrained (its features can be cached); N > 0: its last N blocks were fine-tuned.
    trainable_blocks: int = 0
    # Optional keys saved by train (temperature, fitted unknown detectors); {} in older checkpoints.
    extra: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def model(self) -> Classifier:
        backbone = build_backbone(self.backbone, pretrained=False)
        model = Classifier(backbone.module, self.num_features, len(self.classes), self.dropout)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as err:
            raise InvalidFileError(f"{self.source}: weights do not fit backbone {self.backbone!r}: {err}") from None
        return model.eval()

    @functools.cached_property
    def head(self) -> nn.Sequential:
        """The classifier head alone (the full model's own once that is built)."""
        if "model" in self.__dict__:
            return self.model.head
        head = build_head(self.num_features, len(self.classes), self.dropout)
        head.load_state_dict({k[len("head.") :]: v for k, v in self.state_dict.items() if k.startswith("head.")})
        return head.eval()

    @functools.cached_property
    def backbone_sha256(self) -> str:
        prefix = "backbone."
        return state_fingerprint({k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)})


def classifier_state(
    backbone_state: Mapping[str, torch.Tensor], head_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A :class:`Classifier`'s state dict from its two parts' state dicts."""
    return {
        **{f"backbone.{k}": v for k, v in backbone_state.items()},
        **{f"head.{k}": v for k, v in head_state.items()},
    }


def save_checkpoint(
    path: Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    dropout: float,
    classes: Sequence[str],
    backbone: str,
    preprocess: Preprocess,
    params: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    trainable_blocks: int = 0,
) -> None:
    """Write a ``weights_only``-loadable checkpoint atomically (temp file, then rename).

    ``state_dict`` is a :class:`Classifier`'s (``model.state_dict()`` or :func:`classifier_state`).
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "classes": list(classes),
        "backbone": backbone,
        "num_features": int(state_dict["head.1.weight"].shape[1]),
        "dropout": float(dropout),
        "preprocess": preprocess.to_dict(),
        "params": dict(params),
        "extra": dict(extra or {}),
        "trainable_blocks": int(trainable_blocks),
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: str | Path,
    expected_classes: Sequence[str] | None = None,
    expected_backbone: str | None = None,
    lazy: bool = False,
) -> LoadedModel:
    """Load a checkpoint written by :func:`save_checkpoint`, without unpickling objects.

    With ``lazy`` the full model is built (and its weights checked against the backbone) on
    first use of ``.model`` instead of now.
    """

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path} (train one with: dvc repro train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InvalidFileError(f"{path}: not a loadable checkpoint (weights_only load failed: {err})") from None
    required = ("format", "state_dict", "classes", "backbone", "num_features", "dropout", "preprocess", "params")
    missing = [k for k in required if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise InvalidFileError(f"{path}: not a checkpoint of this project (missing {', '.join(missing)})")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise InvalidFileError(f"{path}: checkpoint format {payload['format']}, this code reads {CHECKPOINT_FORMAT}")
    classes = list(payload["classes"])
    if expected_classes is not None and classes != list(expected_classes):
        raise InvalidFileError(
            f"{path}: checkpoint was trained for classes {classes}, expected {list(expected_classes)}"
        )
    if expected_backbone is not None and payload["backbone"] != expected_backbone:
        raise InvalidFileError(
            f"{path}: checkpoint was trained with backbone {payload['backbone']!r}, expected {expected_backbone!r}"
        )
    loaded = LoadedModel(
        classes=classes,
        backbone=payload["backbone"],
        preprocess=Preprocess.from_dict(payload["preprocess"]),
        params=payload["params"],
        num_features=int(payload["num_features"]),
        dropout=float(payload["dropout"]),
        state_dict=payload["state_dict"],
        source=str(path),
        trainable_blocks=int(payload.get("trainable_blocks", 0)),
        extra=_offered_detectors(dict(payload.get("extra") or {})),
    )
    if not lazy:
        loaded.model  # noqa: B018 (builds and checks the weights now)
    return loaded


def _offered_detectors(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with only the fitted unknown detectors this code registers.

    A checkpoint trained when more detectors were registered still loads and serves: test,
    export and evaluate see only the detectors the product offers.
    """
    fitted = extra.get("unknown")
    if isinstance(fitted, Mapping):
        extra["unknown"] = {name: v for name, v in fitted.items() if name in UNKNOWN_METHODS}
    return extra


# --- training state, for train.resume ------------------------------------------------------------


def training_state(model: nn.Module, optimizer, scheduler, generator, history, best, stale) -> dict:
    """Everything needed to continue a run exactly: plain data and tensors (``weights_only``-loadable).

    ``best`` is the best epoch so far (a :class:`abcd.training.fit.FitResult`).
    """
    return {
        "epoch": history[-1]["epoch"],
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": copy.deepcopy(history),
        "best_epoch": best.best_epoch,
        "best_model": best.head.state_dict(),
        "best_val": [best.best_val.loss, best.best_val.accuracy],
        "best_probs": best.val_probs,
        "stale": stale,
    }


def save_training_state(path: Path, params: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """The state after an epoch, with the params it was made with (atomic: a kill leaves the previous one)."""
    with atomic_file(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "params": dict(params), "state": dict(state)}, tmp)


def load_training_state(path: Path, params: Mapping[str, Any]) -> dict | None:
    """The state saved at ``path`` if it was made with the same params (bar where it runs); None if absent."""
    if not path.is_file():
        print(f"train: train.resume is set but {path} does not exist; starting from epoch 1", file=sys.stderr)
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if _resumable(payload.get("params", {})) != _resumable(params):
        raise InvalidFileError(
            f"{path}: the last checkpoint was made with other params; resuming needs the same ones "
            "(set train.resume: false to start over)"
        )
    print(f"train: resuming after epoch {payload['state']['epoch']} from {path}")
    return payload["state"]


def _resumable(params: Mapping[str, Any]) -> dict:
    """Params that must match to resume: all but train.resume itself, runtime (where it runs) and serve."""
    out = {k: v for k, v in params.items() if k not in ("runtime", "serve")}
    out["train"] = {k: v for k, v in out.get("train", {}).items() if k != "resume"}
    return out
