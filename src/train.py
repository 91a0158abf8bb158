"""Stage `train`: fit the classifier head on cached features; keep the best epoch.

    python -m src.train --features data/features --data data/prepared --model models/model.pt \
        --logdir runs/train --metrics metrics/train.json --history plots/train_history.csv

Train and validation alternate each epoch; the epoch with the lowest validation loss
is kept. The saved checkpoint is the full model (backbone + head), so test and
predict need nothing else.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src import figures
from src.cli import run
from src.data import ImageDataset, read_manifest
from src.fileio import atomic_write_text
from src.metrics import f1_macro
from src.models import Classifier, build_backbone, build_head, save_checkpoint
from src.params import Params, TrainParams, load_params
from src.runtime import seed_everything
from src.transforms import denormalize, eval_transform
from src.unknown import fit_inference_extras

OptimizerFactory = Callable[[Iterable[nn.Parameter], float, float], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
    "adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
    "adamw": lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd),
}
SchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
SCHEDULERS: dict[str, SchedulerFactory] = {
    "none": lambda opt, epochs: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
    "cosine": lambda opt, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
}


def _choose(registry: dict, key: str, value: str):
    try:
        return registry[value]
    except KeyError:
        raise ValueError(f"params: '{key}' is {value!r}; choose one of {', '.join(sorted(registry))}") from None


def check_choices(train: TrainParams) -> None:
    """Fail at stage start, not after featurising, on an unknown optimizer or schedule."""
    _choose(OPTIMIZERS, "train.optimizer", train.optimizer)
    _choose(SCHEDULERS, "train.scheduler", train.scheduler)


@dataclass
class EpochStats:
    loss: float
    accuracy: float


def train_one_epoch(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
) -> EpochStats:
    """One pass over the training set. ``features`` is (N, K, D): one random view per image."""
    head.train()
    n, views = features.shape[0], features.shape[1]
    view = torch.randint(views, (n,), generator=generator)
    x_all = features[torch.arange(n), view]
    order = torch.randperm(n, generator=generator)
    total_loss, correct = 0.0, 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        logits = head(x_all[idx])
        loss = nn.functional.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == labels[idx]).sum().item()
    return EpochStats(total_loss / n, correct / n)


@torch.no_grad()
def evaluate(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> tuple[EpochStats, torch.Tensor]:
    """Loss, accuracy and probabilities on (N, D) features."""
    head.eval()
    logits = head(features)
    loss = nn.functional.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return EpochStats(loss, acc), torch.softmax(logits, dim=1)


@dataclass
class FitResult:
    head: nn.Module
    best_epoch: int
    best_val: EpochStats
    history: list[dict[str, float]]
    val_probs: torch.Tensor
    interrupted: bool = False


def fit(
    head: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    seed: int,
    log: Callable[[dict[str, float]], None] = lambda row: None,
) -> FitResult:
    """Alternate training and validation for ``params.epochs``; return the best head by val loss."""
    optimizer = _choose(OPTIMIZERS, "train.optimizer", params.optimizer)(
        head.parameters(), params.lr, params.weight_decay
    )
    scheduler = _choose(SCHEDULERS, "train.scheduler", params.scheduler)(optimizer, params.epochs)
    generator = torch.Generator().manual_seed(seed)
    best: FitResult | None = None
    history: list[dict[str, float]] = []
    try:
        for epoch in range(1, params.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            tr = train_one_epoch(head, *train, optimizer, params.batch_size, generator)
            va, probs = evaluate(head, *val)
            scheduler.step()
            row = {
                "epoch": epoch,
                "train_loss": tr.loss,
                "train_accuracy": tr.accuracy,
                "val_loss": va.loss,
                "val_accuracy": va.accuracy,
                "lr": lr,
            }
            history.append(row)
            log(row)
            if best is None or va.loss < best.best_val.loss:
                best = FitResult(copy.deepcopy(head), epoch, va, history, probs)
    except KeyboardInterrupt:
        # Ctrl-C stops between steps; the best epoch so far goes back to the caller to save.
        if best is None:
            raise
        best.interrupted = True
    assert best is not None  # epochs >= 1 is validated in params
    best.history = history
    return best


def _load_features(path: Path, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"features not found: {path} (run: dvc repro featurize)")
    with np.load(path) as npz:
        x, y = torch.from_numpy(npz["features"]), torch.from_numpy(npz["labels"]).long()
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"{path}: labels outside 0..{len(classes) - 1} for classes {list(classes)}")
    return x, y


def log_val_images(writer, params: Params, val_samples, val_labels: torch.Tensor, result: FitResult, pre) -> None:
    """A fixed, seeded sample of validation images with the best head's predictions."""
    pick = np.random.default_rng(params.seed).choice(len(val_samples), size=min(16, len(val_samples)), replace=False)
    dataset = ImageDataset(val_samples, params.classes, eval_transform(pre))
    images = torch.stack([denormalize(dataset[int(i)][0], pre) for i in pick])
    titles, colors = [], []
    for p, y in zip(result.val_probs[pick], val_labels[pick]):
        k = int(p.argmax())
        titles.append(f"{params.classes[k]} {p[k]:.2f}\ntrue: {params.classes[int(y)]}")
        colors.append("green" if k == int(y) else "red")
    fig = figures.image_grid([img.permute(1, 2, 0).numpy() for img in images], titles, colors)
    writer.add_figure("val/predictions", fig, global_step=result.best_epoch)
    writer.add_images("val/samples", images, global_step=result.best_epoch)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (for TensorBoard images)")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--logdir", type=Path, required=True, help="TensorBoard run directory")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV (a DVC plot)")
    args = parser.parse_args(argv)
    params: Params = load_params(args.params)
    check_choices(params.train)
    seed_everything(params.seed)
    torch.use_deterministic_algorithms(params.train.deterministic)

    meta = json.loads((args.features / "meta.json").read_text())
    if meta["backbone"] != params.model.backbone or meta["classes"] != params.classes:
        raise ValueError(
            f"{args.features}: features are for backbone {meta['backbone']!r} and classes {meta['classes']}, "
            f"params ask for {params.model.backbone!r} and {params.classes} (run: dvc repro featurize)"
        )
    train = _load_features(args.features / "train.npz", params.classes)
    val = _load_features(args.features / "val.npz", params.classes)
    val_samples = read_manifest(args.data / "val.csv", params.classes)
    # Built before training so that a missing weight file fails now, not after the epochs.
    backbone = build_backbone(params.model.backbone, pretrained=True)

    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(args.logdir, ignore_errors=True)
    writer = SummaryWriter(str(args.logdir))

    def log(row: dict[str, float]) -> None:
        step = int(row["epoch"])
        for split in ("train", "val"):
            writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], step)
            writer.add_scalar(f"accuracy/{split}", row[f"{split}_accuracy"], step)
        writer.add_scalar("lr", row["lr"], step)
        print(
            f"epoch {step:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}  lr {row['lr']:.2e}"
        )

    head = build_head(meta["num_features"], len(params.classes), params.model.dropout)
    result = fit(head, train, val, params.train, params.seed, log)
    model = Classifier(backbone.module, backbone.num_features, len(params.classes), params.model.dropout)
    model.head.load_state_dict(result.head.state_dict())
    # Temperature (val) and unknown detectors (train features, val thresholds), saved with the weights.
    extras = fit_inference_extras(
        result.head, *train, *val, **params.unknown.fit_kwargs(), ece_bins=params.evaluate.ece_bins
    )
    save_checkpoint(
        args.model,
        model,
        classes=params.classes,
        backbone=params.model.backbone,
        preprocess=backbone.preprocess,
        params=params.to_dict(),
        extra={
            "best_epoch": result.best_epoch,
            "val_loss": result.best_val.loss,
            "feature_precision": meta["precision"],
            **extras,
        },
    )
    summary = f"best epoch {result.best_epoch}: val loss {result.best_val.loss:.4f} acc {result.best_val.accuracy:.3f}"
    if result.interrupted:
        writer.close()
        print(
            f"train: interrupted after epoch {len(result.history)}; {summary}, saved to {args.model}. "
            "DVC records nothing for an interrupted stage: run `dvc repro` to train to the end.",
            file=sys.stderr,
        )
        return 130
    print(summary)

    log_val_images(writer, params, val_samples, val[1], result, backbone.preprocess)
    hparams = {
        "lr": params.train.lr,
        "optimizer": params.train.optimizer,
        "epochs": params.train.epochs,
        "backbone": params.model.backbone,
        "dropout": params.model.dropout,
    }
    writer.add_hparams(
        hparams,
        {"hparam/val_loss": result.best_val.loss, "hparam/val_accuracy": result.best_val.accuracy},
        run_name=".",
    )
    writer.close()

    val_f1 = f1_macro(val[1].numpy(), result.val_probs.argmax(1).numpy(), len(params.classes))
    val_metrics = {"loss": result.best_val.loss, "accuracy": result.best_val.accuracy, "f1_macro": val_f1}
    atomic_write_text(args.metrics, json.dumps({"best_epoch": result.best_epoch, "val": val_metrics}, indent=2) + "\n")
    figures.save(figures.history_figure(result.history, result.best_epoch), args.history.with_suffix(".png"))
    lines = [",".join(result.history[0])] + [",".join(str(v) for v in row.values()) for row in result.history]
    atomic_write_text(args.history, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    run(main, "train")
