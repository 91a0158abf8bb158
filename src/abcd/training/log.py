"""What training shows while it runs and after: TensorBoard scalars, figures, hparams, and the console."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from abcd.core.params import Params
from abcd.data.images import Sample, load_thumbnail
from abcd.evaluation import figures
from abcd.evaluation.metrics import confusion, f1_macro
from abcd.training.fit import FitResult


class TrainLog:
    """A TensorBoard run in ``logdir`` (replaced), fed once per epoch and once for the best epoch."""

    def __init__(self, logdir: Path, classes: Sequence[str], val_labels: torch.Tensor) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard: imported by train alone

        shutil.rmtree(logdir, ignore_errors=True)
        self.writer = SummaryWriter(str(logdir))
        self.classes = list(classes)
        self.val_labels = val_labels.numpy()

    def epoch(self, row: dict[str, float], probs: torch.Tensor) -> None:
        """Scalars of one epoch (loss, accuracy, val F1, lr, per-class val precision and recall); a console line."""
        step = int(row["epoch"])
        for split in ("train", "val"):
            self.writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], step)
            self.writer.add_scalar(f"accuracy/{split}", row[f"{split}_accuracy"], step)
        self.writer.add_scalar("f1_macro/val", row["val_f1"], step)
        self.writer.add_scalar("lr", row["lr"], step)
        cm = confusion(self.val_labels, probs.argmax(1).numpy(), len(self.classes))
        for i, name in enumerate(self.classes):
            self.writer.add_scalar(f"precision/{name}", cm[i, i] / max(cm[:, i].sum(), 1), step)
            self.writer.add_scalar(f"recall/{name}", cm[i, i] / max(cm[i].sum(), 1), step)
        print(
            f"epoch {step:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} f1 {row['val_f1']:.3f}  "
            f"lr {row['lr']:.2e}"
        )

    def best(self, result: FitResult, params: Params, val_samples: Sequence[Sample]) -> float:
        """The best epoch's val confusion matrix, a grid of val predictions and the run's hparams; its val F1."""
        val_pred = result.val_probs.argmax(1).numpy()
        val_f1 = f1_macro(self.val_labels, val_pred, len(self.classes))
        cm = confusion(self.val_labels, val_pred, len(self.classes))
        self.writer.add_figure(
            "val/confusion",
            figures.confusion_figure(cm, self.classes, f"val, best epoch {result.best_epoch}"),
            global_step=result.best_epoch,
        )
        grid = val_image_grid(params, val_samples, self.val_labels, result)
        self.writer.add_image("val/predictions", grid, global_step=result.best_epoch, dataformats="HWC")
        tp = params.train
        hparams = {
            "backbone": params.model.backbone,
            "dropout": params.model.dropout,
            "trainable_blocks": tp.trainable_blocks,
            "optimizer": tp.optimizer,
            "lr": params.lr,
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
        metrics = {
            "hparam/val_loss": result.best_val.loss,
            "hparam/val_accuracy": result.best_val.accuracy,
            "hparam/val_f1": val_f1,
            "hparam/best_epoch": result.best_epoch,
        }
        self.writer.add_hparams(hparams, metrics, run_name=".")
        return val_f1

    def close(self) -> None:
        self.writer.close()


def val_image_grid(
    params: Params, val_samples: Sequence[Sample], val_labels: np.ndarray, result: FitResult
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
