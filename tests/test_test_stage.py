"""The test stages' two routes (test: the test split; ood_test: the OOD set): cached features (frozen backbone)
and the full model on images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from abcd.core.params import load_params
from abcd.data.images import ImageDataset, Sample, write_manifest
from abcd.data.ood_manifest import not_evaluated, write_not_evaluated
from abcd.evaluation.predictions import read_predictions
from abcd.features.engine import extract_features, make_loader, prepare_model, weights_fingerprint
from abcd.features.runtime import resolve_runtime
from abcd.features.store import write_split
from abcd.features.transforms import eval_transform
from abcd.models.backbones import build_backbone
from abcd.models.checkpoint import save_checkpoint
from abcd.models.head import Classifier
from abcd.stages import ood_test
from abcd.stages import test as test_stage
from tests.conftest import CLASSES, make_image


@pytest.fixture
def project(tmp_path: Path, repo: Path) -> dict[str, Path]:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["runtime"].update(precision="fp32", num_workers=0)
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    runtime = resolve_runtime(params.runtime)

    samples = [
        Sample(str(make_image(tmp_path / "img" / f"{c}{i}.jpg", seed=10 * k + i, size=(96, 80))), c)
        for k, c in enumerate(CLASSES)
        for i in range(2)
    ]
    write_manifest(tmp_path / "data" / "test.csv", samples)
    ood_paths = [str(make_image(tmp_path / "ood" / f"thing{i}.jpg", seed=100 + i, size=(90, 90))) for i in range(2)]
    rows = [f"{p},thing{i},test,full,{('selection', 'report')[i]}" for i, p in enumerate(ood_paths)]
    (tmp_path / "ood" / "manifest.csv").write_text("\n".join(["path,photo,package,region,half", *rows]) + "\n")

    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    model = Classifier(backbone.module, backbone.num_features, len(CLASSES), 0.0)
    save_checkpoint(
        tmp_path / "model.pt", model.state_dict(), dropout=model.head[0].p, classes=CLASSES,
        backbone="efficientnet_lite0", preprocess=backbone.preprocess, params={},
    )  # fmt: skip

    # What featurize writes for the test split, made by this very backbone.
    module = prepare_model(backbone.module, runtime)
    dataset = ImageDataset(samples, CLASSES, eval_transform(backbone.preprocess))
    feats, labels = extract_features(module, make_loader(dataset, 3, runtime), runtime)
    features = tmp_path / "features"
    features.mkdir()
    write_split(features, "test", feats, labels, [s.path for s in samples])
    meta = {
        "backbone": "efficientnet_lite0",
        "backbone_sha256": weights_fingerprint(backbone.module),
        "preprocess": backbone.preprocess.to_dict(),
        "precision": runtime.precision,
    }
    (features / "meta.json").write_text(json.dumps({**meta, "classes": CLASSES}))
    # What ood_featurize writes for the OOD set: no labels, so no classes in its meta.
    ood = [Sample(p, None) for p in ood_paths]
    ood_feats, ood_labels = extract_features(
        module, make_loader(ImageDataset(ood, CLASSES, eval_transform(backbone.preprocess)), 3, runtime), runtime
    )
    ood_features = tmp_path / "ood_features"
    write_split(ood_features, "ood", ood_feats, ood_labels, ood_paths)
    (ood_features / "meta.json").write_text(json.dumps(meta))
    return {"root": tmp_path, "params": params_path, "features": features, "ood_features": ood_features}


def _run(project: dict[str, Path], features: Path, out: str, capsys, ood_features: Path) -> tuple[np.ndarray, str]:
    root = project["root"]
    args = ["--params", str(project["params"]), "--model", str(root / "model.pt")]
    test_stage.main([*args, "--data", str(root / "data"), "--detectors", str(root / "d.json"),
                     "--features", str(features), "--out", str(root / out)])  # fmt: skip
    ood_test.main(
        [*args, "--ood", str(root / "ood"), "--features", str(ood_features), "--out", str(root / f"ood-{out}")]
    )
    ood = read_predictions(root / f"ood-{out}" / "ood.csv", labelled=False)
    assert len(ood.images) == 2 and (ood.labels == -1).all()
    return np.concatenate([read_predictions(root / out).probs, ood.probs]), capsys.readouterr().out


def test_cached_features_give_the_full_models_probabilities(project, capsys) -> None:
    cached, log_cached = _run(project, project["features"], "a.csv", capsys, project["ood_features"])
    missing = project["root"] / "missing"
    full, log_full = _run(project, missing, "b.csv", capsys, missing)
    assert "test: 8 images, cached features" in log_cached and "ood: 2 images, cached features" in log_cached
    assert "running the backbone on the images" in log_full and "no cached test features" in log_full
    assert "no cached ood features" in log_full
    np.testing.assert_allclose(cached, full, atol=1e-5)


def test_ood_test_passes_on_why_the_ood_branch_is_off(tmp_path: Path, repo: Path, capsys) -> None:
    """No checkpoint, no features: with the branch off, ood_test reads neither."""
    write_not_evaluated(tmp_path / "ood", "ood.evaluate is false")
    args = ["--params", str(repo / "params.yaml"), "--model", str(tmp_path / "none.pt"), "--ood", str(tmp_path / "ood")]
    ood_test.main([*args, "--features", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert not_evaluated(tmp_path / "out") == "ood.evaluate is false"
    assert "ood_test: not evaluated: ood.evaluate is false" in capsys.readouterr().out


def test_features_of_other_weights_are_not_used(project, capsys) -> None:
    # A fine-tuned backbone has other weights than the one that made the cache.
    meta_path = project["features"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["backbone_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    _, log = _run(project, project["features"], "c.csv", capsys, project["ood_features"])
    assert "backbone_sha256 differs" in log and "running the backbone" in log


def test_weights_fingerprint_sees_one_changed_value() -> None:
    a = torch.nn.Linear(3, 2)
    before = weights_fingerprint(a)
    with torch.no_grad():
        a.weight[0, 0] += 1e-6
    assert weights_fingerprint(a) != before
