"""Stage `train`: fit the classifier head (and optionally the backbone's last blocks); keep the best epoch.

With ``train.trainable_blocks: 0`` the head trains on featurize's cached features; with
N > 0 the backbone's last N blocks are fine-tuned too (src/abcd/training/inputs.py). Train and
validation alternate each epoch and the epoch with the lowest validation loss is kept
(src/abcd/training/fit.py). The checkpoint is the full model (backbone + head) with its classes, preprocessing,
temperature, fitted unknown detectors and predict's defaults (the chosen detector, the
original rule's threshold), so test and predict need nothing else, not even params.yaml; ``--last`` holds the
state after the latest epoch, from which ``train.resume: true`` continues.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.params import Params, load_params
from abcd.data.images import read_manifest
from abcd.features.distributed import SINGLE, World, joined, launch, should_launch
from abcd.features.runtime import Runtime, seed_everything, use_deterministic_algorithms
from abcd.models.checkpoint import load_training_state, save_training_state
from abcd.training.fit import fit
from abcd.training.init import init_head
from abcd.training.inputs import training_inputs
from abcd.training.log import TrainLog
from abcd.training.outputs import _summary, save_model, write_results


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
        return launch("abcd.stages.train", argv, processes)
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


if __name__ == "__main__":
    run(main, "train")
