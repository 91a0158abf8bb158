"""Batched forward passes shared by featurize, train (fine-tuning), test and predict: one fast path for all."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from abcd.features.runtime import Runtime, inference, release_freed_memory
from abcd.models.backbones import state_fingerprint

# Batches between heap trims in extract_features: often enough to bound the RSS, rarely enough to cost ~2%.
TRIM_EVERY = 16


def make_loader(dataset: Dataset, batch_size: int, runtime: Runtime) -> DataLoader:
    """An ordered loader; ``runtime.num_workers`` processes decode while the model computes (0: in this one)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=runtime.num_workers,
        persistent_workers=False,
        pin_memory=runtime.device.type == "cuda",
    )


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers: see :func:`abcd.models.backbones.state_fingerprint`."""
    return state_fingerprint(module.state_dict())


def prepare_model(model: nn.Module, runtime: Runtime) -> nn.Module:
    """Move to the device in channels_last, which oneDNN/cuDNN convolutions run fastest in."""
    return model.to(runtime.device, memory_format=torch.channels_last)


def _features(backbone: nn.Module, x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    x = x.to(runtime.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        f = backbone(x)
    # Heads and losses run in fp32: bf16 logits would cost log-loss precision for no speed.
    return f.float()


def iter_features(
    backbone: nn.Module, batches: Iterable, runtime: Runtime, desc: str = "features"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) per batch: pooled backbone features (input N,K,3,H,W -> N,K,D for views)."""
    with inference(backbone):
        for i, (x, y) in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False, disable=None), 1):
            views = x.shape[1] if x.ndim == 5 else None
            flat = x.flatten(0, 1) if views else x
            f = _features(backbone, flat, runtime)
            yield (f.unflatten(0, (-1, views)) if views else f).cpu().numpy(), np.asarray(y)
            if i % TRIM_EVERY == 0:
                release_freed_memory()


def extract_features(
    backbone: nn.Module, batches: Iterable, runtime: Runtime, desc: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features for every image (or every view: input N,K,3,H,W -> N,K,D), in memory."""
    feats, labels = [], []
    for f, y in iter_features(backbone, batches, runtime, desc):
        feats.append(f)
        labels.append(y)
    return np.concatenate(feats), np.concatenate(labels)
