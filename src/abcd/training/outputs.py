"""What the train stage writes: the checkpoint with all predict needs, metrics, the report, the console summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from abcd.core.fileio import atomic_file, atomic_write_text
from abcd.core.params import Params
from abcd.evaluation import figures
from abcd.models.checkpoint import classifier_state, save_checkpoint
from abcd.ood.fit import fit_inference_extras
from abcd.training.fit import FitResult
from abcd.training.inputs import TrainingInputs


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
        "runtime": params.runtime.model_dump(),
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
