"""Backbones frozen vs fine-tuned vs a linear probe, measured in one run on the prepared splits.

    python research/compare_backbones.py --data data/prepared \
        --backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 --blocks 2 --out compare.json

Per backbone, the frozen prefix (all but the last ``--blocks`` blocks) runs once over the
training views (``featurize.views`` seeded augmented views per image, as in the pipeline)
and the eval view of train/val/test; then, with params.yaml's train/model settings:
 - linear probe: src/abcd/training/probe.py's multinomial logistic regression (scikit-learn, lbfgs) on
   standardised eval-view features of the training images, its C chosen from train.probe_c on val log loss;
 - frozen: the pipeline's head training (``train.trainable_blocks: 0``) on the views' features,
   from the pipeline's start (``train.init``: with ``probe``, the probe above, fitted by
   src/abcd/training/probe.py, the same scikit-learn model; it stays if no epoch beats it on val);
 - fine-tuned: the pipeline's fine-tuning of the last ``--blocks`` blocks + head, from the same start.
Features of the frozen modes come from the same prefix outputs through the pretrained
last blocks, so the three modes see identical inputs. Val metrics are for choosing
settings; test metrics are reported once, for the table.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abcd.core.params import load_params
from abcd.data.images import ImageDataset, read_manifest
from abcd.evaluation.metrics import f1_macro, log_loss
from abcd.features.engine import make_loader
from abcd.features.runtime import resolve_runtime, seed_everything
from abcd.features.transforms import eval_transform, train_transform
from abcd.models.backbones import build_backbone, set_trainable_blocks
from abcd.models.head import Classifier, build_head
from abcd.training.fit import evaluate, fit
from abcd.training.init import init_head
from abcd.training.inputs import prefix_activations
from abcd.training.probe import fit_probe


def _scores(labels: torch.Tensor | np.ndarray, probs: torch.Tensor | np.ndarray) -> dict[str, float]:
    y, p = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    return {"f1_macro": f1_macro(y, p.argmax(1), p.shape[1]), "log_loss": log_loss(y, p)}


def split_activations(prefix, pre, samples: dict, params, runtime, views: int) -> dict[str, tuple]:
    """The frozen prefix over ``views`` seeded augmented views of train (``train_views``) and the eval
    view of train, val and test: ``{key: (activations, labels)}``, as abcd.training.inputs makes them."""
    jobs = {
        "train_views": ("train", train_transform(pre, params.augment), views),
        "train": ("train", eval_transform(pre), 1),
        "val": ("val", eval_transform(pre), 1),
        "test": ("test", eval_transform(pre), 1),
    }
    acts = {}
    for key, (split, transform, n_views) in jobs.items():
        dataset = ImageDataset(samples[split], params.classes, transform, views=n_views, seed=params.seed)
        loader = make_loader(dataset, max(1, params.featurize.batch_size // n_views), runtime)
        acts[key] = prefix_activations(prefix, loader, runtime)
    return acts


@torch.no_grad()
def _apply(module: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    module.eval()
    flat = x.flatten(0, 1) if x.ndim == 5 else x
    out = torch.cat([module(flat[i : i + batch]).float() for i in range(0, len(flat), batch)])
    return out.unflatten(0, x.shape[:2]) if x.ndim == 5 else out


def linear_probe(train, val, test, num_classes: int, grid) -> dict:
    """The pipeline's linear probe (src/abcd/training/probe.py: C chosen by val log loss), scored on val and test."""
    probe = fit_probe(train, val, num_classes, grid)

    def probs(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.double() @ probe.weight.T + probe.bias, dim=1)

    return {"C": probe.c, "val": _scores(val[1], probs(val[0])), "test": _scores(test[1], probs(test[0]))}


def _tuned_module(suffix: torch.nn.Module, num_features: int, k: int, dropout: float) -> Classifier:
    """A copy of the pretrained last blocks, trainable, under a new head."""
    module = Classifier(copy.deepcopy(suffix), num_features, k, dropout)
    module.backbone.requires_grad_(True)
    return module


def train_and_score(build, feats: dict, inputs: dict, train_params, params, k: int) -> dict:
    """``build()`` (the head, or a fine-tuned suffix + head) started by ``train.init`` on the pooled
    ``feats`` and trained on ``inputs`` as the train stage does; its val and test scores."""
    seed_everything(params.seed)  # before build: the head's random init
    t = time.perf_counter()
    module = build()
    head = module.head if isinstance(module, Classifier) else module
    init = init_head(head[-1], feats["train"], feats["val"], train_params)
    res = fit(
        module,
        inputs["train_views"],
        inputs["val"],
        train_params,
        params.seed,
        num_classes=k,
        keep_start=train_params.init != "random",
        lr=params.lr,
    )
    _, test_probs = evaluate(res.head, *inputs["test"])
    return {
        **init,
        "best_epoch": res.best_epoch,
        "val": _scores(inputs["val"][1], res.val_probs),
        "test": _scores(inputs["test"][1], test_probs),
        "seconds": round(time.perf_counter() - t, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    offline = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    parser.add_argument("--backbones", nargs="+", default=offline)
    parser.add_argument("--blocks", type=int, default=2, help="trainable_blocks of the fine-tuned mode")
    parser.add_argument("--views", type=int, help="training views per image (default: featurize.views)")
    parser.add_argument("--no-finetune", action="store_true", help="probe and frozen head only (fast)")
    parser.add_argument("--out", type=Path, help="JSON results")
    args = parser.parse_args()
    params = load_params(args.params)
    runtime = resolve_runtime(params.runtime)
    torch.use_deterministic_algorithms(params.train.deterministic)
    samples = {s: read_manifest(args.data / f"{s}.csv", params.classes) for s in ("train", "val", "test")}
    k = len(params.classes)
    results = []
    for name in args.backbones:
        start = time.perf_counter()
        backbone = build_backbone(name, pretrained=True)
        set_trainable_blocks(backbone, args.blocks)
        prefix, suffix = backbone.split(args.blocks)
        pre = backbone.preprocess
        views = args.views or params.featurize.views
        acts = split_activations(prefix, pre, samples, params, runtime, views)
        prefix_s = time.perf_counter() - start
        feats = {key: (_apply(suffix, x), y) for key, (x, y) in acts.items()}
        row = {"backbone": name, "input_size": pre.input_size, "views": views, "prefix_seconds": round(prefix_s, 1)}

        t = time.perf_counter()
        row["linear_probe"] = linear_probe(feats["train"], feats["val"], feats["test"], k, params.train.probe_c)
        row["linear_probe"]["seconds"] = round(time.perf_counter() - t, 1)

        frozen_params = params.train.model_copy(update={"trainable_blocks": 0})
        frozen = functools.partial(build_head, backbone.num_features, k, params.model.dropout)
        row["frozen"] = train_and_score(frozen, feats, feats, frozen_params, params, k)

        if not args.no_finetune:
            tuned_params = params.train.model_copy(update={"trainable_blocks": args.blocks})
            tuned = functools.partial(_tuned_module, suffix, backbone.num_features, k, params.model.dropout)
            row[f"blocks{args.blocks}"] = train_and_score(tuned, feats, acts, tuned_params, params, k)
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        del acts, feats

    modes = ["linear_probe", "frozen"] + ([] if args.no_finetune else [f"blocks{args.blocks}"])
    print("\n| backbone | mode | val F1 | val log loss | test F1 | test log loss |")
    print("|---|---|---|---|---|---|")
    for row in results:
        for mode in modes:
            r = row[mode]
            print(
                f"| {row['backbone']} | {mode} | {r['val']['f1_macro']:.4f} | {r['val']['log_loss']:.4f} | "
                f"{r['test']['f1_macro']:.4f} | {r['test']['log_loss']:.4f} |"
            )


if __name__ == "__main__":
    main()
