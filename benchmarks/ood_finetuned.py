"""Unknown detection on FINE-TUNED features (issue 20): does fine-tuning break the frozen features' 42/46?

A benchmark only; the pipeline is unchanged. As benchmarks/compare_backbones.py's fine-tuned mode:
efficientnet_lite2's frozen prefix runs once over the training views (``featurize.views`` seeded
augmented views), the eval views of train/val/test and the OOD set's SELECTION half (the report
half is never read), cached in ``--cache``; the last ``--blocks`` blocks + a new head, started from
the linear probe (``train.init``), are fine-tuned with params.yaml's train settings by
src/abcd/training/fit.py's ``fit`` (plain cross-entropy, best epoch by val loss). Mode ``oe`` trains the same
network with outlier exposure (Hendrycks et al. 2019, "Deep Anomaly Detection with Outlier
Exposure"): per step, besides the 64 training views, 64 rows of the exposure photos
(benchmarks/ood_exposure_photos.py, the 595 eval-transform crops of benchmarks/ood_exposure.py) and
a loss of cross-entropy + ``--oe-weight`` x the cross-entropy of their softmax to the uniform
distribution; its loop is fit's (same optimizer, schedule, epochs, best by val log loss).

The fine-tuned suffix then pools every cached activation: training views + eval views are the
kNN bank, as in the pipeline, and benchmarks/ood_candidates.py scores knn k=1, energy (the
fine-tuned head), mahalanobis_pp, vim and their fusion (sum of val z-scores), plus fusions of
the fine-tuned knn with the frozen default fusion's components (from data/features and
models/model.pt), with its tables and selection rule. No OOD evaluation photo fits anything;
val sets the thresholds, z-scales and the best epoch.

    python benchmarks/ood_finetuned.py --root /tmp/oe/root --pip-root /tmp/oe/pip/x > reports/ood_finetuned.md

Result (reports/ood_finetuned.md): nothing beats the frozen default fusion's 42/46 at 3/184. Plain
CE fine-tuning (best epoch 17, test F1 0.977, log loss 0.056) tops out at 41/46 (tuned knn fused
with the frozen components); OE 0.5 never beat its probe start on val loss (epoch 0 kept), and kept
at its last epoch its four-score fusion ties at 42/46, 3/184 (FPR@95 0.022 against 0.043, one photo).
anemones, dragonfly, marigold and scarce_swallowtail pass every row.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abcd.core.params import load_params
from abcd.data.images import load_rgb, read_manifest
from abcd.data.ood_manifest import read_ood_manifest
from abcd.features.runtime import resolve_runtime, seed_everything
from abcd.features.transforms import eval_transform
from abcd.models.backbones import build_backbone, set_trainable_blocks
from abcd.training.fit import FitResult, fit
from abcd.training.fit import evaluate as eval_epoch
from abcd.training.init import init_head
from abcd.training.optim import build_optimizer, lr_factor
from benchmarks.compare_backbones import _scores, _tuned_module, split_activations
from benchmarks.ood_candidates import (
    Data,
    Row,
    Scores,
    evaluate,
    fuse,
    fusion_parts,
    knn_scores,
    load_data,
    print_tables,
)
from benchmarks.ood_exposure import CROP_SEED, REFERENCE_ROWS, crop_boxes, load_photo, photo_file
from benchmarks.ood_exposure_photos import EXPOSURE_PHOTOS

BACKBONE = "efficientnet_lite2"


@torch.no_grad()
def _prefix_images(prefix: nn.Module, images: list[np.ndarray], transform, runtime, batch: int = 12) -> torch.Tensor:
    prefix = prefix.eval().to(memory_format=torch.channels_last)
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack([transform(im) for im in images[i : i + batch]]).contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            out.append(prefix(x).float())
    return torch.cat(out)


def prefix_cache(cache: Path, params, ood: Path, root: Path, pip_root: Path | None) -> dict:
    """The frozen prefix's activations (fp32) of every input, computed once."""
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    runtime = resolve_runtime(params.runtime)
    backbone = build_backbone(BACKBONE, pretrained=True)
    prefix, _ = backbone.split(params.train.trainable_blocks)
    pre = backbone.preprocess
    samples = {s: read_manifest(Path("data/prepared") / f"{s}.csv", params.classes) for s in ("train", "val", "test")}
    acts = split_activations(prefix, pre, samples, params, runtime, params.featurize.views)
    for key, split in (("train_views", "train"), ("train", "train"), ("val", "val"), ("test", "test")):
        acts[f"{key}_paths"] = [s.path for s in samples[split]]
        print(f"prefix: {key} {tuple(acts[key][0].shape)}", file=sys.stderr, flush=True)
    manifest = read_ood_manifest(ood / "manifest.csv")
    rows = [i for i, h in enumerate(manifest.halves) if h == "selection"]  # the report half is never read
    acts["ood"] = _prefix_images(prefix, [load_rgb(manifest.paths[i]) for i in rows], eval_transform(pre), runtime)
    acts["ood_paths"] = [manifest.paths[i] for i in rows]
    rng = np.random.default_rng(CROP_SEED)  # benchmarks/ood_exposure.py's crops, in its order
    crops = []
    for photo in EXPOSURE_PHOTOS:
        image = load_photo(photo_file(photo, root, pip_root))
        h, w = image.shape[:2]
        crops += [image[y0:y1, x0:x1] for _, (x0, y0, x1, y1) in crop_boxes(w, h, rng)]
    acts["exposure"] = _prefix_images(prefix, crops, eval_transform(pre), runtime)
    print(f"prefix: ood {tuple(acts['ood'].shape)}, exposure {tuple(acts['exposure'].shape)}", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(acts, cache)
    return acts


def fit_oe(
    module: nn.Module,
    train,
    val,
    exposure: torch.Tensor,
    params,
    seed: int,
    lr: float,
    weight: float,
    last: bool = False,
):
    """src/abcd/training/fit.py's fit (no class weights or label smoothing, as params has them) plus the OE term."""
    optimizer = build_optimizer(module, params, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, params))
    generator = torch.Generator().manual_seed(seed)
    va, probs = eval_epoch(module, *val)  # epoch 0: the probe start (keep_start)
    best = FitResult(copy.deepcopy(module), 0, va, [], probs)
    (x, y), n = train, len(train[1])
    for epoch in range(1, params.epochs + 1):
        module.train()
        view = torch.randint(x.shape[1], (n,), generator=generator)
        order = torch.randperm(n, generator=generator)
        oe_order = torch.randperm(len(exposure), generator=generator)
        for b, start in enumerate(range(0, n, params.batch_size)):
            idx = order[start : start + params.batch_size]
            oe_idx = oe_order.roll(-b * params.batch_size)[: params.batch_size]
            logits = module(torch.cat([x[idx, view[idx]], exposure[oe_idx]]))
            ce = nn.functional.cross_entropy(logits[: len(idx)], y[idx])
            uniform = -torch.log_softmax(logits[len(idx) :], dim=1).mean(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            (ce + weight * uniform).backward()
            optimizer.step()
        va, probs = eval_epoch(module, *val)
        scheduler.step()
        print(f"oe epoch {epoch}: val loss {va.loss:.4f}", file=sys.stderr, flush=True)
        if va.loss < best.best_val.loss or (last and epoch == params.epochs):
            best = FitResult(copy.deepcopy(module), epoch, va, [], probs)
    return best


@torch.no_grad()
def pooled(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    module.eval()
    flat = x.flatten(0, 1) if x.ndim == 5 else x
    out = torch.cat([module.backbone(c).float() for c in flat.split(64)])
    return (out.unflatten(0, x.shape[:2]) if x.ndim == 5 else out).numpy()


def tuned_data(module: nn.Module, acts: dict, frozen: Data) -> Data:
    """benchmarks/ood_candidates.py's Data with the fine-tuned network's features and logits."""
    views = pooled(module, acts["train_views"][0])
    eval_view = pooled(module, acts["train"][0])
    train_y = acts["train"][1].numpy()
    views_x, views_y = views.reshape(-1, views.shape[-1]), np.repeat(train_y, views.shape[1])
    feats = {"val": pooled(module, acts["val"][0]), "test": pooled(module, acts["test"][0])}
    feats["ood"] = pooled(module, acts["ood"])
    with torch.no_grad():
        logits = {s: module.head(torch.from_numpy(f)).double().numpy() for s, f in feats.items()}
    head = module.head[-1]
    return dataclasses.replace(
        frozen,
        bank_x=np.concatenate([views_x, eval_view]),
        bank_y=np.r_[views_y, train_y],
        views_x=views_x,
        views_y=views_y,
        feats=feats,
        logits=logits,
        linear=(head.weight.detach().clone(), head.bias.detach().clone()),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--ood", type=Path, default=Path("data/ood"))
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["ce", "oe"], choices=["ce", "oe"])
    ap.add_argument("--oe-weight", type=float, default=0.5)
    ap.add_argument("--oe-last", action="store_true", help="oe: keep the last epoch, not the best by val loss")
    ap.add_argument("--root", type=Path, default=Path("/"), help="the exposure photos' Debian files (dpkg -x)")
    ap.add_argument("--pip-root", type=Path, default=None, help="unpacked wheels of the exposure photos")
    ap.add_argument("--cache", type=Path, default=Path("runs/ood_finetuned/prefix.pt"))
    args = ap.parse_args()
    params = load_params(Path("params.yaml"))
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, trainable_blocks=args.blocks))
    torch.use_deterministic_algorithms(params.train.deterministic)
    frozen = load_data(args.features, args.model, args.ood)
    acts = prefix_cache(args.cache, params, args.ood, args.root, args.pip_root)
    # The frozen cache's rows are in the same order as the activations: fusions add scores row by row.
    for split in ("test",):
        assert acts[f"{split}_paths"] == [str(p) for p in np.load(args.features / split / "paths.npy")], split
    ood_paths = np.load(args.features / "ood" / "paths.npy")
    sel = np.array([h == "selection" for h in read_ood_manifest(args.ood / "manifest.csv").halves])
    assert acts["ood_paths"] == [str(p) for p in ood_paths[sel]], "ood order"

    rows: list[Row] = []
    notes: list[str] = []

    def add(data: Data, label: str, bank: str, scores: Scores) -> Scores:
        rows.append(evaluate(data, label, bank, scores))
        print(rows[-1].line(), file=sys.stderr, flush=True)
        return scores

    fk, fe, fm, fv = fusion_parts(frozen)
    for (label, bank), scores in zip(REFERENCE_ROWS, (fk, fe, fm, fv)):
        add(frozen, f"frozen: {label}", bank, scores)
    add(frozen, "frozen: fusion (default)", "-", fuse([fk, fe, fm, fv], "z", "sum"))

    backbone = build_backbone(BACKBONE, pretrained=True)
    set_trainable_blocks(backbone, args.blocks)
    _, suffix = backbone.split(args.blocks)
    k = len(params.classes)
    for mode in args.modes:
        seed_everything(params.seed)
        t = time.perf_counter()
        module = _tuned_module(suffix, backbone.num_features, k, params.model.dropout)
        with torch.no_grad():
            probe_in = {s: torch.from_numpy(pooled(module, acts[s][0])) for s in ("train", "val")}
        init_head(
            module.head[-1], (probe_in["train"], acts["train"][1]), (probe_in["val"], acts["val"][1]), params.train
        )
        if mode == "ce":
            res = fit(
                module,
                acts["train_views"],
                acts["val"],
                params.train,
                params.seed,
                num_classes=k,
                keep_start=True,
                lr=params.lr,
            )
        else:
            res = fit_oe(
                module, acts["train_views"], acts["val"], acts["exposure"], params.train, params.seed, params.lr,
                args.oe_weight, args.oe_last,
            )  # fmt: skip
        seconds = time.perf_counter() - t
        tuned = res.head
        _, test_probs = eval_epoch(tuned, *acts["test"])
        val_s, test_s = _scores(acts["val"][1], res.val_probs), _scores(acts["test"][1], test_probs)
        name = (
            "fine-tuned"
            if mode == "ce"
            else f"fine-tuned OE {args.oe_weight:g}{' (last epoch)' if args.oe_last else ''}"
        )
        notes.append(
            f"{name}: last {args.blocks} blocks + head, best epoch {res.best_epoch}, {seconds:.0f} s "
            f"(prefix pass excluded); val F1 {val_s['f1_macro']:.4f}, log loss {val_s['log_loss']:.4f}; "
            f"test F1 {test_s['f1_macro']:.4f}, log loss {test_s['log_loss']:.4f}"
        )
        print(notes[-1], file=sys.stderr, flush=True)
        data = tuned_data(tuned, acts, frozen)
        tk, te, tm, tv = fusion_parts(data)
        for (label, bank), scores in zip(REFERENCE_ROWS, (tk, te, tm, tv)):
            add(data, f"{name}: {label}", bank, scores)
        add(data, f"{name}: knn k=1", "eval views", knn_scores(data.bank_x[len(data.views_x) :], data.feats))
        add(data, f"{name}: fusion knn + energy + mahalanobis_pp + vim", "-", fuse([tk, te, tm, tv], "z", "sum"))
        add(data, f"{name}: fusion knn + mahalanobis_pp", "-", fuse([tk, tm], "z", "sum"))
        mixed = [
            ("tuned knn + frozen default four", [tk, fk, fe, fm, fv]),
            ("tuned knn + frozen energy + mahalanobis_pp + vim", [tk, fe, fm, fv]),
            ("tuned knn + frozen knn", [tk, fk]),
            ("tuned four + frozen four", [tk, te, tm, tv, fk, fe, fm, fv]),
            ("tuned mahalanobis_pp + frozen default four", [tm, fk, fe, fm, fv]),
        ]
        for label, parts in mixed:
            add(frozen, f"{name}: fusion {label}", "-", fuse(parts, "z", "sum"))

    print("# Unknown detection on fine-tuned features (issue 20), OOD selection half\n")
    print(
        "`python benchmarks/ood_finetuned.py --root ... --pip-root ...`, default params but "
        f"`train.trainable_blocks: {args.blocks}`. The frozen rows are benchmarks/ood_candidates.py's reference "
        "rows; `fine-tuned` rows use the fine-tuned network's pooled features and logits; fusions are sums of "
        "val z-scores. The report half is not read.\n"
    )
    for note in notes:
        print(f"- {note}")
    print("- for context, the pipeline's frozen head: test F1 0.980, log loss 0.042\n")
    note = f"Exposure rows (OE mode only): {len(acts['exposure'])} crops of {len(EXPOSURE_PHOTOS)} photos."
    print_tables(frozen, rows, "Fine-tuned features on the selection half", note)


if __name__ == "__main__":
    main()
