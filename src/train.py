"""Stage `train`: fit the classifier head (and optionally the backbone's last blocks); keep the best epoch.

    python -m src.train --features data/features --data data/prepared --model models/model.pt \
        --last models/last.pt --logdir runs/train --metrics metrics/train.json --history plots/train_history.csv

With ``train.trainable_blocks: 0`` the head trains on featurize's cached features. With
N > 0 the backbone's last N blocks are fine-tuned too, from the images: the frozen
prefix runs once per augmented view (the same views as featurize's), and the last
blocks + head train on its cached output. Train and validation alternate each epoch;
the epoch with the lowest validation loss is kept. The saved checkpoint is the full
model (backbone + head), so test and predict need nothing else; with a frozen backbone
its weights are the ones featurize saved with the features, so this stage never builds
the backbone. ``--last`` holds the state after the latest epoch, from which
``train.resume: true`` continues.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from src import figures
from src.cli import run
from src.data import ImageDataset, Sample, load_thumbnail, read_manifest
from src.engine import make_loader
from src.fileio import atomic_write_text
from src.linear_probe import fit_probe
from src.metrics import confusion, f1_macro
from src.models import (
    BACKBONE_WEIGHTS,
    CHECKPOINT_FORMAT,
    Classifier,
    Preprocess,
    build_backbone,
    build_head,
    classifier_state,
    save_checkpoint,
    set_trainable_blocks,
)
from src.params import Params, TrainParams, load_params
from src.runtime import Runtime, inference, resolve_runtime, seed_everything, use_deterministic_algorithms
from src.unknown import fit_inference_extras

OptimizerFactory = Callable[[list[dict], float, float], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda groups, lr, wd: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
    "adam": lambda groups, lr, wd: torch.optim.Adam(groups, lr=lr, weight_decay=wd),
    "adamw": lambda groups, lr, wd: torch.optim.AdamW(groups, lr=lr, weight_decay=wd),
}
# lr multiplier as a function of progress t in [0, 1) through the epochs after warm-up.
SCHEDULERS: dict[str, Callable[[float], float]] = {
    "none": lambda t: 1.0,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "step": lambda t: 0.1 ** math.floor(3 * t),  # x0.1 after 1/3 and after 2/3 of the epochs
}
# Per-class loss weights from the training label counts.
CLASS_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor | None]] = {
    "none": lambda counts: None,
    "balanced": lambda counts: counts.sum() / (len(counts) * counts.clamp(min=1)),
}


def _init_random(linear: nn.Linear, train, val, params: TrainParams) -> dict:
    return {}  # PyTorch's default initialisation, drawn when the head was built


def _init_probe(linear: nn.Linear, train, val, params: TrainParams) -> dict:
    # Linear-probe-then-train: the head starts at the probe's solution on clean (eval-view)
    # features and adapts to the augmented views with a small lr. Cross-validated, a random
    # start at any of 86 settings stayed behind the probe; this one matches it (README: Training).
    probe = fit_probe(train, val, linear.out_features, params.probe_c)
    with torch.no_grad():
        linear.weight.copy_(probe.weight)
        linear.bias.copy_(probe.bias)
    return {"probe_c": probe.c, "probe_val_loss": probe.val_loss}


# How the head's last linear layer starts, from (train eval-view features, labels) and val (features, labels).
Split = tuple[torch.Tensor, torch.Tensor]
HeadInit = Callable[[nn.Linear, Split, Split, TrainParams], dict]
HEAD_INITS: dict[str, HeadInit] = {"random": _init_random, "probe": _init_probe}


def _choose(registry: dict, key: str, value: str):
    try:
        return registry[value]
    except KeyError:
        raise ValueError(f"params: '{key}' is {value!r}; choose one of {', '.join(sorted(registry))}") from None


def check_choices(train: TrainParams) -> None:
    """Fail at stage start, not after featurising, on an unknown optimizer, schedule or weighting."""
    _choose(OPTIMIZERS, "train.optimizer", train.optimizer)
    _choose(SCHEDULERS, "train.scheduler", train.scheduler)
    _choose(CLASS_WEIGHTS, "train.class_weights", train.class_weights)
    _choose(HEAD_INITS, "train.init", train.init)


def init_head(
    linear: nn.Linear,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
) -> dict:
    """Set the head's starting weights by ``train.init``; return what was chosen (for the checkpoint)."""
    return {"init": params.init, **_choose(HEAD_INITS, "train.init", params.init)(linear, train, val, params)}


def lr_factor(epoch: int, params: TrainParams) -> float:
    """lr multiplier for 0-based ``epoch``: linear warm-up, then the schedule over the rest."""
    warm = params.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    return _choose(SCHEDULERS, "train.scheduler", params.scheduler)((epoch - warm) / (params.epochs - warm))


def param_groups(model: nn.Module, params: TrainParams) -> list[dict]:
    """The head at ``train.lr``; any other trainable parameter (fine-tuned blocks) at ``train.backbone_lr``."""
    head = getattr(model, "head", model)
    head_params = [p for p in head.parameters() if p.requires_grad]
    ids = {id(p) for p in head_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": head_params, "lr": params.lr}]
    if rest:
        groups.append({"params": rest, "lr": params.backbone_lr})
    return groups


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
) -> EpochStats:
    """One pass over the training set. ``features`` is (N, K, ...): one random view per image.

    The inputs are pooled features (frozen backbone) or a frozen prefix's activations
    (fine-tuning): ``model`` maps them to logits either way.
    """
    model.train()
    n, views = features.shape[0], features.shape[1]
    view = torch.randint(views, (n,), generator=generator)
    x_all = features[torch.arange(n), view]
    order = torch.randperm(n, generator=generator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total_loss, correct = 0.0, 0
    starts = range(0, n, params.batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=None):
        idx = order[start : start + params.batch_size]
        logits = model(x_all[idx])
        loss = nn.functional.cross_entropy(
            logits, labels[idx], weight=class_weights, label_smoothing=params.label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, params.grad_clip)
        optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == labels[idx]).sum().item()
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


def _state(model, optimizer, scheduler, generator, history, best, stale) -> dict:
    """Everything needed to continue a run exactly: plain data and tensors (``weights_only``-loadable)."""
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
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    seed: int,
    log: Callable[[dict[str, float], torch.Tensor], None] = lambda row, probs: None,
    resume: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    num_classes: int | None = None,
    keep_start: bool = False,
) -> FitResult:
    """Alternate training and validation; return the best model by val loss.

    Stops after ``params.epochs``, or earlier when val loss has not improved for
    ``params.patience`` epochs. ``on_epoch_end`` gets the full training state after each
    epoch; passing such a state back as ``resume`` continues exactly where it stopped.
    ``keep_start``: the starting weights are epoch 0 (validated, logged, in the history) and
    are returned if no epoch has a lower val loss.
    """
    if num_classes is None:
        num_classes = int(max(int(train[1].max()), int(val[1].max())) + 1)
    counts = torch.bincount(train[1], minlength=num_classes).float()
    class_weights = _choose(CLASS_WEIGHTS, "train.class_weights", params.class_weights)(counts)
    optimizer = _choose(OPTIMIZERS, "train.optimizer", params.optimizer)(
        param_groups(head, params), params.lr, params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, params))
    generator = torch.Generator().manual_seed(seed)
    best: FitResult | None = None
    history: list[dict[str, float]] = []
    stale = 0
    if resume is not None:
        head.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        history = list(resume["history"])
        best_head = copy.deepcopy(head)
        best_head.load_state_dict(resume["best_model"])
        best = FitResult(
            best_head, resume["best_epoch"], EpochStats(*resume["best_val"]), history, resume["best_probs"]
        )
        stale = int(resume["stale"])
    elif keep_start:
        # Train-set numbers of epoch 0 are measured like val's (eval mode, first view): no step was taken.
        tr, _ = evaluate(head, train[0][:, 0], train[1])
        va, probs = evaluate(head, *val)
        row = _history_row(0, tr, va, val[1], probs, 0.0)
        history.append(row)
        log(row, probs)
        best = FitResult(copy.deepcopy(head), 0, va, history, probs)
    try:
        for epoch in range((history[-1]["epoch"] + 1) if history else 1, params.epochs + 1):
            if params.patience and stale >= params.patience:
                best.stopped_early = True
                break
            lr = optimizer.param_groups[0]["lr"]
            tr = train_one_epoch(head, *train, optimizer, params, generator, class_weights, f"epoch {epoch}")
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
            if on_epoch_end is not None:
                on_epoch_end(_state(head, optimizer, scheduler, generator, history, best, stale))
    except KeyboardInterrupt:
        # Ctrl-C stops between steps; the best epoch so far goes back to the caller to save.
        if best is None:
            raise
        best.interrupted = True
    assert best is not None  # epochs >= 1 is validated in params
    best.history = history
    return best


def _load_features(path: Path, classes: Sequence[str], key: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of one split of featurize's cache; ``key`` picks the array (npz loads it alone)."""
    if not path.is_file():
        raise FileNotFoundError(f"features not found: {path} (run: dvc repro featurize)")
    with np.load(path) as npz:
        if key not in npz:
            raise ValueError(f"{path}: no {key} (made by an older featurize): run dvc repro featurize")
        x, y = torch.from_numpy(npz[key]), torch.from_numpy(npz["labels"]).long()
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"{path}: labels outside 0..{len(classes) - 1} for classes {list(classes)}")
    return x, y


def _pooled_eval_features(
    features: Path, classes: Sequence[str]
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(train eval-view features, labels) and (val features, labels) from featurize's cache."""
    train = _load_features(features / "train.npz", classes, "eval_features")
    return train, _load_features(features / "val.npz", classes)


def val_image_grid(
    params: Params, val_samples: Sequence[Sample], val_labels: torch.Tensor, result: FitResult
) -> np.ndarray:
    """A fixed, seeded sample of 16 validation images with the best head's predictions (HxWx3 uint8)."""
    pick = np.random.default_rng(params.seed).choice(len(val_samples), size=min(16, len(val_samples)), replace=False)
    images, titles, colors = [], [], []
    for i in pick:
        p, y = result.val_probs[i], int(val_labels[i])
        k = int(p.argmax())
        images.append(load_thumbnail(val_samples[i].path, 192))
        titles.append(f"{params.classes[k]} {p[k]:.2f}\ntrue: {params.classes[y]}")
        colors.append("green" if k == y else "red")
    return figures.image_grid(images, titles, colors)


@torch.no_grad()
def prefix_activations(prefix: nn.Module, batches: Iterable, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen prefix's outputs for every image (or view: N,K,3,H,W -> N,K,C,h,w), as fp32 on the CPU.

    Computed once, so fine-tuning the last blocks costs one prefix pass per view instead
    of one per epoch. The views are the same seeded draws as featurize's.
    """
    prefix = prefix.to(runtime.device, memory_format=torch.channels_last).eval()
    outs, labels = [], []
    for x, y in tqdm(batches, desc="prefix", unit="batch", leave=False, disable=None):
        views = x.shape[1] if x.ndim == 5 else None
        flat = (x.flatten(0, 1) if views else x).to(runtime.device).contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            a = prefix(flat)
        a = a.float().cpu().contiguous()
        outs.append(a.unflatten(0, (-1, views)) if views else a)
        labels.append(torch.as_tensor(y))
    prefix.cpu()
    return torch.cat(outs), torch.cat(labels).long()


def _load_backbone_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path} (written by featurize; run: dvc repro featurize)")
    return torch.load(path, map_location="cpu", weights_only=True)


def _pooled(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], trainable_blocks: int):
    """(features, labels) as pooled backbone features: as cached, or the fine-tuned suffix run on prefix activations."""
    x, y = data
    if trainable_blocks == 0:
        return x, y
    flat = x.flatten(0, 1) if x.ndim == 5 else x  # (N, K, C, h, w) views -> one batch axis
    with inference(model.backbone):
        feats = torch.cat([model.backbone(chunk) for chunk in flat.split(64)]).float()
    return (feats.unflatten(0, x.shape[:2]) if x.ndim == 5 else feats), y


def _check_features(meta: Mapping[str, Any], params: Params, path: Path) -> None:
    if meta["backbone"] != params.model.backbone or meta["classes"] != params.classes:
        raise ValueError(
            f"{path}: features are for backbone {meta['backbone']!r} and classes {meta['classes']}, "
            f"params ask for {params.model.backbone!r} and {params.classes} (run: dvc repro featurize)"
        )


def _resume_state(path: Path, params: Params) -> dict | None:
    """The last checkpoint's training state when ``train.resume`` is set and it belongs to these params."""
    if not params.train.resume:
        return None
    if not path.is_file():
        print(f"train: train.resume is set but {path} does not exist; starting from epoch 1", file=sys.stderr)
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if _resumable(payload.get("params", {})) != _resumable(params.to_dict()):
        raise ValueError(
            f"{path}: the last checkpoint was made with other params; resuming needs the same ones "
            "(set train.resume: false to start over)"
        )
    print(f"train: resuming after epoch {payload['state']['epoch']} from {path}")
    return payload["state"]


def _resumable(params: Mapping[str, Any]) -> dict:
    """Params that must match to resume: all but train.resume itself and runtime (where it runs)."""
    out = {k: v for k, v in params.items() if k != "runtime"}
    out["train"] = {k: v for k, v in out.get("train", {}).items() if k != "resume"}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (images, manifests)")
    parser.add_argument("--model", type=Path, required=True, help="best checkpoint to write")
    parser.add_argument("--last", type=Path, required=True, help="last-epoch training state (for train.resume)")
    parser.add_argument("--logdir", type=Path, required=True, help="TensorBoard run directory")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV (a DVC plot)")
    args = parser.parse_args(argv)
    params: Params = load_params(args.params)
    tp = params.train
    check_choices(tp)
    seed_everything(params.seed)
    use_deterministic_algorithms(tp.deterministic)
    resume = _resume_state(args.last, params)

    val_samples = read_manifest(args.data / "val.csv", params.classes)
    k = len(params.classes)
    if tp.trainable_blocks == 0:
        meta = json.loads((args.features / "meta.json").read_text())
        _check_features(meta, params, args.features)
        train = _load_features(args.features / "train.npz", params.classes)
        val = _load_features(args.features / "val.npz", params.classes)
        # Loaded before training so that a missing weight file fails now, not after the epochs.
        backbone_state = _load_backbone_weights(args.features / BACKBONE_WEIGHTS)
        module: nn.Module = build_head(meta["num_features"], k, params.model.dropout)
        precision = meta["precision"]
        # Head-only training is thousands of tiny ops: a second OpenMP thread adds synchronisation,
        # not speed, and on a busy machine its spin-waits made the 60 epochs 40x slower (0.8 s -> 32 s).
        # One thread gives the same best epoch and val loss to 7 digits. (The head trains on the CPU.)
        torch.set_num_threads(1)
        preprocess = Preprocess.from_dict(meta["preprocess"])
    else:
        # Fine-tuning: the frozen prefix runs once per view; the last blocks + head train on its output.
        from src.transforms import eval_transform, train_transform  # albumentations: fine-tuning only

        backbone = build_backbone(params.model.backbone, pretrained=True)
        preprocess = backbone.preprocess
        runtime = resolve_runtime(params.runtime)
        set_trainable_blocks(backbone, tp.trainable_blocks)
        prefix, suffix = backbone.split(tp.trainable_blocks)
        train_samples = read_manifest(args.data / "train.csv", params.classes)
        views = params.featurize.views
        jobs = {
            "train": (train_samples, train_transform(backbone.preprocess, params.augment), views),
            "val": (val_samples, eval_transform(backbone.preprocess), 1),
        }
        cached = {}
        for split, (samples, transform, n_views) in jobs.items():
            dataset = ImageDataset(samples, params.classes, transform, views=n_views, seed=params.seed)
            loader = make_loader(dataset, max(1, params.featurize.batch_size // n_views), runtime)
            cached[split] = prefix_activations(prefix, loader, runtime)
            print(f"train: {split} prefix activations {tuple(cached[split][0].shape)}")
        train, val = cached["train"], cached["val"]
        module = Classifier(suffix, backbone.num_features, k, params.model.dropout)
        suffix.requires_grad_(True)  # Classifier froze it
        precision = runtime.precision

    # The head's start (train.init). Both modes fit the probe on featurize's pooled features: the
    # pretrained backbone's, which is where fine-tuning starts from too. (On resume the state overrides it.)
    linear = (module if tp.trainable_blocks == 0 else module.head)[-1]
    init_info = init_head(linear, *_pooled_eval_features(args.features, params.classes), tp)

    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(args.logdir, ignore_errors=True)
    writer = SummaryWriter(str(args.logdir))

    def log(row: dict[str, float], probs: torch.Tensor) -> None:
        step = int(row["epoch"])
        for split in ("train", "val"):
            writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], step)
            writer.add_scalar(f"accuracy/{split}", row[f"{split}_accuracy"], step)
        writer.add_scalar("f1_macro/val", row["val_f1"], step)
        writer.add_scalar("lr", row["lr"], step)
        cm = confusion(val[1].numpy(), probs.argmax(1).numpy(), k)
        for i, name in enumerate(params.classes):
            writer.add_scalar(f"precision/{name}", cm[i, i] / max(cm[:, i].sum(), 1), step)
            writer.add_scalar(f"recall/{name}", cm[i, i] / max(cm[i].sum(), 1), step)
        print(
            f"epoch {step:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} f1 {row['val_f1']:.3f}  "
            f"lr {row['lr']:.2e}"
        )

    def save_last(state: dict) -> None:
        # Atomic like the best checkpoint: a run killed while writing leaves the previous one.
        args.last.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.last.with_name(args.last.name + ".tmp")
        torch.save({"format": CHECKPOINT_FORMAT, "params": params.to_dict(), "state": state}, tmp)
        os.replace(tmp, args.last)

    result = fit(
        module,
        train,
        val,
        tp,
        params.seed,
        log,
        resume=resume,
        on_epoch_end=save_last,
        num_classes=k,
        keep_start=tp.init != "random",
    )
    if tp.trainable_blocks == 0:
        head = result.head
    else:
        # The fitted suffix shares its modules with backbone.module: loading the best state updates both.
        module.load_state_dict(result.head.state_dict())
        head = module.head
        backbone_state = backbone.module.state_dict()
    # Temperature (val) and unknown detectors (train features, val thresholds), saved with the weights.
    extras = fit_inference_extras(
        head,
        *_pooled(module, train, tp.trainable_blocks),
        *_pooled(module, val, tp.trainable_blocks),
        **params.unknown.fit_kwargs(),
        ece_bins=params.evaluate.ece_bins,
        calibrate=tp.calibrate,
    )
    save_checkpoint(
        args.model,
        classifier_state(backbone_state, head.state_dict()),
        dropout=params.model.dropout,
        classes=params.classes,
        backbone=params.model.backbone,
        preprocess=preprocess,
        params=params.to_dict(),
        extra={
            "best_epoch": result.best_epoch,
            "val_loss": result.best_val.loss,
            "feature_precision": precision,
            **init_info,
            **extras,
        },
        trainable_blocks=tp.trainable_blocks,
    )
    last_epoch = result.history[-1]["epoch"]
    summary = f"best epoch {result.best_epoch}: val loss {result.best_val.loss:.4f} acc {result.best_val.accuracy:.3f}"
    if result.interrupted:
        writer.close()
        print(
            f"train: interrupted after epoch {last_epoch}; {summary}, saved to {args.model}. "
            "DVC records nothing for an interrupted stage: run `dvc repro` to train to the end "
            "(or `dvc exp run -S train.resume=true` to continue from the last epoch).",
            file=sys.stderr,
        )
        return 130
    if result.stopped_early:
        summary += f" (early stop after epoch {last_epoch}: no better val loss for {tp.patience} epochs)"
    print(summary)

    val_pred = result.val_probs.argmax(1).numpy()
    val_f1 = f1_macro(val[1].numpy(), val_pred, k)
    cm = confusion(val[1].numpy(), val_pred, k)
    writer.add_figure(
        "val/confusion",
        figures.confusion_figure(cm, params.classes, f"val, best epoch {result.best_epoch}"),
        global_step=result.best_epoch,
    )
    grid = val_image_grid(params, val_samples, val[1], result)
    writer.add_image("val/predictions", grid, global_step=result.best_epoch, dataformats="HWC")
    hparams = {
        "backbone": params.model.backbone,
        "dropout": params.model.dropout,
        "trainable_blocks": tp.trainable_blocks,
        "optimizer": tp.optimizer,
        "lr": tp.lr,
        "backbone_lr": tp.backbone_lr,
        "weight_decay": tp.weight_decay,
        "scheduler": tp.scheduler,
        "warmup_epochs": tp.warmup_epochs,
        "epochs": tp.epochs,
        "batch_size": tp.batch_size,
        "label_smoothing": tp.label_smoothing,
        "class_weights": tp.class_weights,
        "views": params.featurize.views,
        "init": tp.init,
    }
    writer.add_hparams(
        hparams,
        {
            "hparam/val_loss": result.best_val.loss,
            "hparam/val_accuracy": result.best_val.accuracy,
            "hparam/val_f1": val_f1,
            "hparam/best_epoch": result.best_epoch,
        },
        run_name=".",
    )
    writer.close()

    val_metrics = {"loss": result.best_val.loss, "accuracy": result.best_val.accuracy, "f1_macro": val_f1}
    train_metrics = {"best_epoch": result.best_epoch, "epochs_run": last_epoch, "val": val_metrics, **init_info}
    atomic_write_text(args.metrics, json.dumps(train_metrics, indent=2) + "\n")
    figures.save(figures.history_figure(result.history, result.best_epoch), args.history.with_suffix(".png"))
    lines = [",".join(result.history[0])] + [",".join(str(v) for v in row.values()) for row in result.history]
    atomic_write_text(args.history, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    run(main, "train")
