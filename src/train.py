"""Stage `train`: fit the classifier head (and optionally the backbone's last blocks); keep the best epoch.

With ``train.trainable_blocks: 0`` the head trains on featurize's cached features; with
N > 0 the backbone's last N blocks are fine-tuned too (src/train_inputs.py). Train and
validation alternate each epoch and the epoch with the lowest validation loss is kept
(src/fit.py). The checkpoint is the full model (backbone + head) with its classes, preprocessing,
temperature, fitted unknown detectors and predict's defaults (the chosen detector, the
original rule's threshold), so test and predict need nothing else, not even params.yaml; ``--last`` holds the
state after the latest epoch, from which ``train.resume: true`` continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from src import figures
from src.checkpoint import classifier_state, load_training_state, save_checkpoint, save_training_state
from src.cli import run, stage_args
from src.data import read_manifest
from src.distributed import SINGLE, World, joined, launch, should_launch
from src.fileio import atomic_file, atomic_write_text
from src.fit import FitResult, fit
from src.head_init import init_head
from src.params import Params, load_params
from src.runtime import Runtime, seed_everything, use_deterministic_algorithms
from src.train_inputs import TrainingInputs, training_inputs
from src.train_log import TrainLog
from src.unknown import fit_inference_extras


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_args(
        __doc__,
        argv,
        reads={"features": "featurize's cache", "data": "prepared dataset (manifests, images)"},
        writes={
            "model": "best checkpoint",
            "last": "last-epoch training state (for train.resume)",
            "logdir": "TensorBoard run directory (replaced)",
            "metrics": "metrics JSON: best epoch and its val loss (a DVC metric)",
            "report": "report JSON: epochs run, val loss/accuracy/macro F1, the probe's C and val loss",
            "history": "per-epoch CSV (a DVC plot; its PNG beside it)",
        },
    )
    params = load_params(args.params)
    # Fine-tuning runs as runtime.processes ranks (this command launches them); the head alone is
    # seconds of work on cached features and always runs as one process.
    processes = should_launch(params.runtime.processes) if params.train.trainable_blocks else 0
    if processes:
        return launch("src.train", argv, processes)
    with joined(params.runtime) as (world, runtime):
        return train(args, params, world, runtime)


def train(args: argparse.Namespace, params: Params, world: World, runtime: Runtime) -> int:
    """The stage's work; with several ranks every rank calls it and rank 0 alone writes (model, last
    state, TensorBoard, metrics, report, history)."""
    tp = params.train
    if world.distributed and not tp.trainable_blocks and not world.is_main:
        return 0  # started under torchrun by hand: the head alone trains on rank 0
    if not tp.trainable_blocks:
        world = SINGLE
    seed_everything(params.seed)
    use_deterministic_algorithms(tp.deterministic)
    # Rank 0 reads the last state and hands it to the others (another machine has no models/last.pt).
    resume = None
    if tp.resume:
        resume = world.broadcast(load_training_state(args.last, params.to_dict()) if world.is_main else None)
    val_samples = read_manifest(args.data / "val.csv", params.classes)
    inputs = training_inputs(params, args.features, args.data, runtime, world)
    # The head's start (train.init). Both modes fit the probe on featurize's pooled features: the
    # pretrained backbone's, which is where fine-tuning starts from too. (On resume the state overrides it.)
    init_info = init_head(inputs.linear, *inputs.probe_data(params.classes), tp)

    log = TrainLog(args.logdir, params.classes, inputs.val[1]) if world.is_main else None
    result = fit(
        inputs.module,
        inputs.train,
        inputs.val,
        tp,
        params.seed,
        log.epoch if log else lambda row, probs: None,
        resume=resume,
        on_epoch_end=(lambda state: save_training_state(args.last, params.to_dict(), state)) if log else None,
        num_classes=len(params.classes),
        keep_start=tp.init != "random",
        lr=params.lr,
        world=world,
    )
    if log is None:
        return 0
    save_model(args.model, params, inputs, result, init_info)
    summary = _summary(result, tp.patience)
    if result.interrupted:
        log.close()
        print(
            f"train: interrupted after epoch {result.history[-1]['epoch']}; {summary}, saved to {args.model}. "
            "DVC records nothing for an interrupted stage: run `dvc repro` to train to the end "
            "(or `dvc exp run -S train.resume=true` to continue from the last epoch).",
            file=sys.stderr,
        )
        return 130
    print(summary)
    val_f1 = log.best(result, params, val_samples)
    log.close()

    write_results(args.metrics, args.report, args.history, result, val_f1, init_info)
    return 0


def save_model(path: Path, params: Params, inputs: TrainingInputs, result: FitResult, init_info: dict) -> None:
    """The best epoch as a self-contained checkpoint: weights, temperature, fitted unknown detectors."""
    tp = params.train
    best = inputs.finish(result)
    # Temperature (val) and unknown detectors (train features, val thresholds), saved with the weights.
    extras = fit_inference_extras(
        best.head,
        *best.train_features,
        *best.val_features,
        train_eval_x=best.train_eval_features,
        **params.unknown.fit_kwargs(),
        ece_bins=params.evaluate.ece_bins,
        calibrate=tp.calibrate,
    )
    save_checkpoint(
        path,
        classifier_state(best.backbone_state, best.head.state_dict()),
        dropout=params.model.dropout,
        classes=params.classes,
        backbone=params.model.backbone,
        preprocess=inputs.preprocess,
        params=params.to_dict(),
        extra={
            "best_epoch": result.best_epoch,
            "val_loss": result.best_val.loss,
            "feature_precision": inputs.precision,
            **init_info,
            **extras,
            # predict's defaults where no params.yaml is around: the model works on its own.
            "predict": predict_defaults(params),
        },
        trainable_blocks=tp.trainable_blocks,
    )


def predict_defaults(params: Params) -> dict:
    """What predict reads from params, stored in the checkpoint: the unknown detector it uses
    (its fitted threshold is stored beside it), the original rule's threshold, batch size, runtime."""
    return {
        "method": params.unknown.method,
        "rule_threshold": params.predict.threshold,
        "batch_size": params.predict.batch_size,
        "runtime": dataclasses.asdict(params.runtime),
    }


def write_results(
    metrics_path: Path, report_path: Path, history_path: Path, result: FitResult, val_f1: float, init_info: dict
) -> None:
    """metrics JSON (best epoch, val loss: what DVC compares), report JSON (every val number, the
    probe's choice) and the per-epoch history CSV + PNG."""
    metrics = {"best_epoch": result.best_epoch, "val": {"loss": result.best_val.loss}}
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    val = {"loss": result.best_val.loss, "accuracy": result.best_val.accuracy, "f1_macro": val_f1}
    report = {"best_epoch": result.best_epoch, "epochs_run": result.history[-1]["epoch"], "val": val, **init_info}
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    figures.save(figures.history_figure(result.history, result.best_epoch), history_path.with_suffix(".png"))
    with atomic_file(history_path) as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)


def _summary(result: FitResult, patience: int) -> str:
    text = f"best epoch {result.best_epoch}: val loss {result.best_val.loss:.4f} acc {result.best_val.accuracy:.3f}"
    if result.interrupted:
        return text
    if result.stopped_early:
        text += f" (early stop after epoch {result.history[-1]['epoch']}: no better val loss for {patience} epochs)"
    return text


if __name__ == "__main__":
    run(main, "train")
