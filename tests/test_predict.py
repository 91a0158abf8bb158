from pathlib import Path

import numpy as np
import pytest
import torch

from src.models import Classifier, build_backbone, save_checkpoint
from src.predict import UNKNOWN, decide, main
from tests.conftest import CLASSES, make_image


def test_unknown_rule_at_the_threshold() -> None:
    probs = np.array(
        [
            [0.6, 0.2, 0.1, 0.1],  # exactly at the threshold: known
            [0.59, 0.21, 0.1, 0.1],  # every score below: unknown
            [0.1, 0.1, 0.05, 0.75],
        ]
    )
    got = decide(probs, CLASSES, threshold=0.6)
    assert [d.label for d in got] == ["ants", UNKNOWN, "dogs"]
    assert got[1].top_class == "ants" and got[1].probability == pytest.approx(0.59)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    model = Classifier(backbone.module, backbone.num_features, len(CLASSES), 0.0)
    path = tmp_path / "model.pt"
    save_checkpoint(
        path, model, classes=CLASSES, backbone="efficientnet_lite0", preprocess=backbone.preprocess, params={}
    )
    return path


def test_predict_cli_prints_class_or_unknown(checkpoint: Path, tmp_path: Path, repo: Path, capsys) -> None:
    image = make_image(tmp_path / "x.jpg", size=(120, 90))
    args = [str(image), "--checkpoint", str(checkpoint), "--params", str(repo / "params.yaml")]
    assert main([*args, "--threshold", "0"]) == 0
    path, label, prob = capsys.readouterr().out.strip().split("\t")
    assert path == str(image) and label in CLASSES and 0.25 <= float(prob) <= 1
    assert main([*args, "--threshold", "1"]) == 0
    assert capsys.readouterr().out.strip().split("\t")[1] == UNKNOWN


def test_predict_cli_reports_unreadable_files_and_goes_on(checkpoint: Path, tmp_path: Path, repo: Path, capsys) -> None:
    good = make_image(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code = main([str(bad), str(good), "--checkpoint", str(checkpoint), "--params", str(repo / "params.yaml")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "good.jpg" in out and "bad.jpg" not in out
    assert "bad.jpg\terror: cannot decode" in err
