"""Run the frozen backbone once over every split's images and write pooled features (featurize's and
ood_featurize's work)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Subset

from abcd.core.fileio import atomic_dir
from abcd.core.params import Params
from abcd.data.images import ImageDataset, Sample, read_manifest
from abcd.data.ood_manifest import read_ood_manifest
from abcd.features.distributed import World
from abcd.features.engine import iter_features, make_loader, prepare_model, weights_fingerprint
from abcd.features.runtime import Runtime, seed_everything
from abcd.features.store import SplitWriter
from abcd.features.transforms import eval_transform, train_transform
from abcd.models.backbones import BACKBONE_WEIGHTS, Backbone, build_backbone

# One split's work: its images, the transform of its views, how many views, and the extra (eval) view or None.
Job = tuple[list[Sample], Callable, int, Callable | None]


def featurize(data: Path, out: Path, params: Params, world: World, runtime: Runtime) -> None:
    """The train, val and test splits' features -> ``out``, and the backbone's weights for train's checkpoint."""
    manifests = {split: read_manifest(data / f"{split}.csv", params.classes) for split in ("train", "val", "test")}

    def jobs(backbone: Backbone) -> dict[str, Job]:
        evaluation = eval_transform(backbone.preprocess)
        augmented = train_transform(backbone.preprocess, params.augment)
        return {
            "train": (manifests["train"], augmented, params.featurize.views, evaluation),
            "val": (manifests["val"], evaluation, 1, None),
            "test": (manifests["test"], evaluation, 1, None),
        }

    seed_everything(params.seed)  # the augmented views' draws
    meta = {"views": params.featurize.views, "classes": params.classes}
    _featurize(out, jobs, meta, params, world, runtime, save_weights=True)


def featurize_ood(ood: Path, out: Path, params: Params, world: World, runtime: Runtime) -> None:
    """The OOD set's features (eval view) -> ``out``: the OOD branch's own cache, apart from the classifier's."""
    samples = [Sample(p, None) for p in read_ood_manifest(ood / "manifest.csv").paths]

    def jobs(backbone: Backbone) -> dict[str, Job]:
        return {"ood": (samples, eval_transform(backbone.preprocess), 1, None)}

    _featurize(out, jobs, {}, params, world, runtime, save_weights=False)


def _featurize(
    out: Path,
    jobs: Callable[[Backbone], dict[str, Job]],
    meta: dict,
    params: Params,
    world: World,
    runtime: Runtime,
    save_weights: bool,
) -> None:
    """Each split of ``jobs`` -> ``out``, with meta.json (what test's cache check compares). Each rank computes
    its shard of every split; rank 0 alone writes, the same files in the same order as one process."""
    backbone = build_backbone(params.model.backbone, pretrained=True)
    module = prepare_model(backbone.module, runtime)
    with atomic_dir(out) if world.is_main else contextlib.nullcontext(None) as tmp:
        for split, (samples, transform, views, extra) in jobs(backbone).items():
            _featurize_split(
                tmp, split, samples, transform, views, extra, module, params, runtime, backbone.num_features, world
            )
        if not world.is_main:
            return
        meta = {
            "backbone": params.model.backbone,
            "backbone_sha256": weights_fingerprint(backbone.module),
            "num_features": backbone.num_features,
            "preprocess": backbone.preprocess.to_dict(),
            "precision": runtime.precision,
            "device": str(runtime.device),
            **meta,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if save_weights:  # the weights that made these features: train puts them in the checkpoint as they are
            state = {k: v.detach().cpu().contiguous() for k, v in backbone.module.state_dict().items()}
            torch.save(state, tmp / BACKBONE_WEIGHTS)


def _featurize_split(
    out: Path | None,
    split: str,
    samples: list[Sample],
    transform,
    views: int,
    extra,
    module,
    params,
    runtime,
    dim: int,
    world: World,
) -> None:
    """Features of one split -> ``out/<split>/`` (src/abcd/features/store.py): features (N, D); labels (-1: none);
    paths. With ``extra`` (training images): features (N, views, D) and their eval view as eval_features (N, D).
    Written batch by batch into memory-mapped files: featurize's memory does not grow with the split.

    With several ranks, each runs its own rows (whole batches, :func:`abcd.features.distributed.shard`) through a
    Subset of the one dataset: an image's views are seeded by its index in the split, not by the rank."""
    dataset = ImageDataset(samples, params.classes, transform, views=views, seed=params.seed, extra=extra)
    passes = views + (extra is not None)
    # Keep a batch near featurize.batch_size images whatever the number of views.
    batch = max(1, params.featurize.batch_size // passes)
    # Training features keep their views axis even for one view: train samples along it.
    shape = (views, dim) if extra is not None else (dim,)
    batches = world.map_shard(
        len(samples),
        batch,
        lambda rows: iter_features(module, make_loader(Subset(dataset, rows), batch, runtime), runtime, desc=split),
    )
    writer = SplitWriter(out, split, [s.path for s in samples], shape, eval_view=extra is not None) if out else None
    start = time.perf_counter()
    for first, (feats, labels) in batches:
        writer.add(feats, labels, first)  # only rank 0 gets batches
    if writer is None:
        return
    writer.close()
    seconds = time.perf_counter() - start
    rate = len(samples) * passes / seconds
    ranks = f" on {world.size} ranks" if world.distributed else ""
    print(f"featurize {split}: {(len(samples), *shape)} in {seconds:.1f}s ({rate:.1f} img/s{ranks})")
