"""What the train stage fits on, chosen once by ``train.trainable_blocks``.

- 0 (:class:`CachedFeatures`): the backbone is frozen; the head trains on featurize's
  cached pooled features, and the backbone's weights come from featurize's ``backbone.pt``
  (this mode never builds the backbone).
- N > 0 (:class:`PrefixActivations`): the backbone's last N blocks are fine-tuned. The
  frozen prefix runs once per augmented view (the same seeded views as featurize's) and
  the last blocks + head train on its cached output.

Both give :func:`abcd.training.fit.fit` a module and (train, val) inputs, and turn its best epoch
into the head, the backbone weights and pooled features the checkpoint is made from.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from abcd.core.errors import InvalidFileError, MissingFileError
from abcd.core.params import Params
from abcd.core.preprocess import Preprocess
from abcd.data.images import ImageDataset, read_manifest
from abcd.features.distributed import World
from abcd.features.engine import make_loader
from abcd.features.runtime import Runtime, inference
from abcd.features.store import open_array
from abcd.models.backbones import BACKBONE_WEIGHTS, Backbone, build_backbone, set_trainable_blocks
from abcd.models.head import Classifier, Split, build_head
from abcd.training.fit import FitResult


class Fitted(NamedTuple):
    """The best epoch, ready for the checkpoint and the unknown detectors."""

    head: nn.Sequential
    backbone_state: Mapping[str, torch.Tensor]
    train_features: Split  # pooled backbone features: (N, K, D) views, labels
    train_eval_features: torch.Tensor  # (N, D): each training image's eval view, for kNN's bank
    val_features: Split


@dataclass
class TrainingInputs(abc.ABC):
    module: nn.Module  # what fit trains: the head, or the fine-tuned blocks + head
    train: Split  # (N, K, ...): K views per image, one sampled per epoch
    val: Split
    preprocess: Preprocess
    precision: str  # of the backbone's forward passes that made the inputs
    features: Path  # featurize's cache: the linear probe is fitted on its pooled features in both modes

    @property
    def linear(self) -> nn.Linear:
        """The head's last layer, whose start ``train.init`` sets."""
        return getattr(self.module, "head", self.module)[-1]

    def probe_data(self, classes: Sequence[str]) -> tuple[Split, Split]:
        """(train eval-view features, labels), (val features, labels): the pretrained backbone's, from the cache."""
        train = load_features(self.features, "train", classes, "eval_features")
        return train, load_features(self.features, "val", classes)

    @abc.abstractmethod
    def finish(self, result: FitResult) -> Fitted:
        """The best epoch's head, the backbone weights to save with it, and pooled features."""


@dataclass
class CachedFeatures(TrainingInputs):
    backbone_state: Mapping[str, torch.Tensor]
    train_eval: torch.Tensor  # featurize's eval-view features of the training images (N, D)

    @classmethod
    def load(cls, params: Params, features: Path) -> CachedFeatures:
        meta_path = features / "meta.json"
        if not meta_path.is_file():
            raise MissingFileError(f"features not found: {meta_path} (run: dvc repro featurize)")
        meta = json.loads(meta_path.read_text())
        if meta["backbone"] != params.model.backbone or meta["classes"] != params.classes:
            raise InvalidFileError(
                f"{features}: features are for backbone {meta['backbone']!r} and classes {meta['classes']}, "
                f"params ask for {params.model.backbone!r} and {params.classes} (run: dvc repro featurize)"
            )
        train = load_features(features, "train", params.classes)
        train_eval, _ = load_features(features, "train", params.classes, "eval_features")
        val = load_features(features, "val", params.classes)
        # Loaded before training so that a missing weight file fails now, not after the epochs.
        backbone_state = load_backbone_weights(features / BACKBONE_WEIGHTS)
        # Head-only training is thousands of tiny ops: a second OpenMP thread adds synchronisation,
        # not speed, and on a busy machine its spin-waits made the 60 epochs 40x slower (0.8 s -> 32 s).
        # One thread gives the same best epoch and val loss to 7 digits. (The head trains on the CPU.)
        torch.set_num_threads(1)
        head = build_head(meta["num_features"], len(params.classes), params.model.dropout)
        preprocess = Preprocess.from_dict(meta["preprocess"])
        return cls(head, train, val, preprocess, meta["precision"], features, backbone_state, train_eval)

    def finish(self, result: FitResult) -> Fitted:
        return Fitted(result.head, self.backbone_state, self.train, self.train_eval, self.val)


@dataclass
class PrefixActivations(TrainingInputs):
    backbone: Backbone
    train_eval: Split  # the training images' eval view through the prefix: pooled by the fine-tuned suffix in finish

    @classmethod
    def build(cls, params: Params, features: Path, data: Path, runtime: Runtime, world: World) -> PrefixActivations:
        """With several ranks, each runs the prefix on its shard of the images and every rank gets all of them."""
        from abcd.features.transforms import eval_transform, train_transform  # albumentations: fine-tuning only

        backbone = build_backbone(params.model.backbone, pretrained=True)
        blocks = params.train.trainable_blocks
        set_trainable_blocks(backbone, blocks)
        prefix, suffix = backbone.split(blocks)
        views = params.featurize.views
        jobs = {
            "train": ("train.csv", train_transform(backbone.preprocess, params.augment), views),
            # Not trained on: kNN's bank holds each training image's eval view too (src/abcd/ood/methods.py).
            "train_eval": ("train.csv", eval_transform(backbone.preprocess), 1),
            "val": ("val.csv", eval_transform(backbone.preprocess), 1),
        }
        cached = {}
        for split, (manifest, transform, n_views) in jobs.items():
            samples = read_manifest(data / manifest, params.classes)
            dataset = ImageDataset(samples, params.classes, transform, views=n_views, seed=params.seed)
            batch = max(1, params.featurize.batch_size // n_views)
            # A Subset keeps each image's index in the split, which seeds its views: the same as one process's.
            mine = world.map_shard(
                len(dataset),
                batch,
                # Consumed below, within this iteration (sorted): the loop's dataset and batch are the current ones.
                lambda rows: prefix_batches(prefix, make_loader(Subset(dataset, rows), batch, runtime), runtime),  # noqa: B023
                to_all=True,
            )
            gathered = sorted(mine, key=lambda item: item[0])
            cached[split] = torch.cat([a for _, (a, _) in gathered]), torch.cat([y for _, (_, y) in gathered])
            prefix.cpu()
            if world.is_main:
                print(f"train: {split} prefix activations {tuple(cached[split][0].shape)}")
        module = Classifier(suffix, backbone.num_features, len(params.classes), params.model.dropout)
        suffix.requires_grad_(True)  # Classifier froze it
        return cls(
            module,
            cached["train"],
            cached["val"],
            backbone.preprocess,
            runtime.precision,
            features,
            backbone,
            cached["train_eval"],
        )

    def finish(self, result: FitResult) -> Fitted:
        # The fitted suffix shares its modules with backbone.module: loading the best state updates both.
        self.module.load_state_dict(result.head.state_dict())
        return Fitted(
            self.module.head,
            self.backbone.module.state_dict(),
            self._pooled(self.train),
            self._pooled(self.train_eval)[0],
            self._pooled(self.val),
        )

    def _pooled(self, data: Split) -> Split:
        """The fine-tuned suffix run on prefix activations: pooled backbone features."""
        x, y = data
        flat = x.flatten(0, 1) if x.ndim == 5 else x  # (N, K, C, h, w) views -> one batch axis
        with inference(self.module.backbone):
            feats = torch.cat([self.module.backbone(chunk) for chunk in flat.split(64)]).float()
        return (feats.unflatten(0, x.shape[:2]) if x.ndim == 5 else feats), y


def load_backbone_weights(path: Path) -> dict[str, torch.Tensor]:
    """The frozen backbone's weights that featurize saved beside its features."""
    if not path.is_file():
        raise MissingFileError(f"backbone weights not found: {path} (written by featurize; run: dvc repro featurize)")
    return torch.load(path, map_location="cpu", weights_only=True)


def training_inputs(params: Params, features: Path, data: Path, runtime: Runtime, world: World) -> TrainingInputs:
    """The inputs for ``train.trainable_blocks``: cached features (0) or prefix activations (N > 0)."""
    if params.train.trainable_blocks == 0:
        return CachedFeatures.load(params, features)
    return PrefixActivations.build(params, features, data, runtime, world)


def load_features(features: Path, split: str, classes: Sequence[str], key: str = "features") -> Split:
    """(features, labels) of one split of featurize's cache, the features memory-mapped (src/abcd/features/store.py)."""
    x, y = open_array(features, split, key), open_array(features, split, "labels")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise InvalidFileError(f"{features / split}: labels outside 0..{len(classes) - 1} for classes {list(classes)}")
    return torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64))


@torch.no_grad()
def prefix_batches(prefix: nn.Module, batches: Iterable, runtime: Runtime) -> Iterator[Split]:
    """The frozen prefix's outputs per batch (or view: N,K,3,H,W -> N,K,C,h,w), as fp32 on the CPU.

    Computed once, so fine-tuning the last blocks costs one prefix pass per view instead
    of one per epoch. The views are the same seeded draws as featurize's.
    """
    prefix = prefix.to(runtime.device, memory_format=torch.channels_last).eval()
    for x, y in tqdm(batches, desc="prefix", unit="batch", leave=False, disable=None):
        views = x.shape[1] if x.ndim == 5 else None
        flat = (x.flatten(0, 1) if views else x).to(runtime.device).contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            a = prefix(flat)
        a = a.float().cpu().contiguous()
        yield (a.unflatten(0, (-1, views)) if views else a), torch.as_tensor(y).long()


def prefix_activations(prefix: nn.Module, batches: Iterable, runtime: Runtime) -> Split:
    """:func:`prefix_batches` of every batch, concatenated (one process); the prefix back on the CPU."""
    outs, labels = zip(*prefix_batches(prefix, batches, runtime))
    prefix.cpu()
    return torch.cat(outs), torch.cat(labels)
