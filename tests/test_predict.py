import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from abcd.core.errors import InvalidFileError
from abcd.inference.pipeline import UNKNOWN, decide
from abcd.models.backbones import build_backbone
from abcd.models.checkpoint import save_checkpoint
from abcd.models.head import Classifier
from abcd.ood.fit import fit_inference_extras
from abcd.serving.predict import expand_inputs, main
from tests.conftest import CLASSES, make_image


def test_decide_is_unknown_only_above_the_threshold() -> None:
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7]])
    scores = np.array([0.5, 0.5, 0.51])
    assert decide(probs, scores, 0.5, CLASSES) == ["ants", "dogs", UNKNOWN]


def test_inputs_expand_directories_recursively_and_globs(tmp_path: Path) -> None:
    a = make_image(tmp_path / "d" / "a.jpg")
    b = make_image(tmp_path / "d" / "sub" / "b.PNG")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    c = make_image(tmp_path / "c.jpg")
    paths, errors = expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "*.jpg"), str(a), str(tmp_path / "none" / "*.jpg"), "missing.jpg"]
    )
    assert paths == [str(a), str(b), str(c), "missing.jpg"]  # in order, no duplicates, .txt skipped
    assert len(errors) == 1 and errors[0].path.endswith("*.jpg") and "no image files" in errors[0].error


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-weight model saved twice: as before detectors existed, and with fitted extras."""
    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    model = Classifier(backbone.module, backbone.num_features, len(CLASSES), 0.0)
    rng = np.random.default_rng(0)
    train_x = rng.normal(0, 1, (64, 2, backbone.num_features)).astype(np.float32)
    val_x = rng.normal(0, 1, (40, backbone.num_features)).astype(np.float32)
    y_train, y_val = np.arange(64) % 4, np.arange(40) % 4
    extras = fit_inference_extras(
        model.head,
        train_x,
        y_train,
        val_x,
        y_val,
        train_eval_x=train_x.mean(axis=1),
        false_reject=0.02,
        knn_k=3,
        ece_bins=10,
        calibrate=True,
    )
    # As train stores them: predict's defaults for use without params.yaml.
    stored = {"method": "knn", "rule_threshold": 0.7, "batch_size": 2, "runtime": RUNTIME}
    out = {}
    for name, extra in {"plain": {}, "fitted": extras, "standalone": {**extras, "predict": stored}}.items():
        out[name] = tmp / f"{name}.pt"
        save_checkpoint(
            out[name],
            model.state_dict(),
            dropout=model.head[0].p,
            classes=CLASSES,
            backbone="efficientnet_lite0",
            preprocess=backbone.preprocess,
            params={},
            extra=extra,
        )
    return out


RUNTIME = {"device": "cpu", "precision": "fp32", "num_workers": 0}


def _args(checkpoint: Path, repo: Path, *rest: str) -> list[str]:
    return [*rest, "--checkpoint", str(checkpoint), "--params", str(repo / "params.yaml")]


def test_original_rule_threshold_makes_known_or_unknown(checkpoints, tmp_path: Path, repo: Path, capsys) -> None:
    image = make_image(tmp_path / "x.jpg", size=(120, 90))
    args = _args(checkpoints["plain"], repo, str(image), "--method", "max_softmax", "--format", "csv")
    assert main([*args, "--threshold", "0"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["path"] == str(image) and row["prediction"] in CLASSES and row["error"] == ""
    probs = [float(row[f"prob_{c}"]) for c in CLASSES]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5) and float(row["probability"]) == pytest.approx(max(probs))
    assert float(row["unknown_score"]) == pytest.approx(1 - max(probs), abs=1e-5)
    assert main([*args, "--threshold", "1"]) == 0
    assert next(csv.DictReader(io.StringIO(capsys.readouterr().out)))["prediction"] == UNKNOWN


def test_threshold_option_is_only_for_the_original_rule(checkpoints, tmp_path: Path, repo: Path, capsys) -> None:
    image = make_image(tmp_path / "x.jpg")
    with pytest.raises(SystemExit):
        main(_args(checkpoints["fitted"], repo, str(image), "--method", "knn", "--threshold", "0.5"))
    assert "--threshold applies to --method max_softmax" in capsys.readouterr().err


def test_old_checkpoint_with_a_feature_method_says_how_to_fix(checkpoints, tmp_path: Path, repo: Path) -> None:
    image = make_image(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="no fitted unknown detector 'knn'"):
        main(_args(checkpoints["plain"], repo, str(image), "--method", "knn"))


def test_json_output_uses_the_fitted_detector(checkpoints, tmp_path: Path, repo: Path, capsys) -> None:
    images = [make_image(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    assert (
        main(_args(checkpoints["fitted"], repo, str(tmp_path), "--method", "mahalanobis_pp", "--format", "json")) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    stored = torch.load(checkpoints["fitted"], weights_only=True)["extra"]
    assert doc["method"] == "mahalanobis_pp" and doc["threshold"] == pytest.approx(
        stored["unknown"]["mahalanobis_pp"]["threshold"]
    )
    assert [r["path"] for r in doc["results"]] == [str(p) for p in images]
    for r in doc["results"]:
        assert (r["prediction"] == UNKNOWN) == (r["unknown_score"] > doc["threshold"])
        assert set(r["probabilities"]) == set(CLASSES) and r["error"] is None


def test_unreadable_files_are_reported_the_run_goes_on_and_exits_1(
    checkpoints, tmp_path: Path, repo: Path, capsys
) -> None:
    good = make_image(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code = main(_args(checkpoints["fitted"], repo, str(bad), str(good), "--annotate", str(tmp_path / "ann")))
    out, err = capsys.readouterr()
    assert code == 1
    table = {line.split()[0]: line for line in out.strip().splitlines()[1:]}
    assert "cannot decode" in table[str(bad)] and table[str(good)].split()[1] in [*CLASSES, UNKNOWN]
    assert f"predict: {bad}: cannot decode" in err
    (copy,) = (tmp_path / "ann").iterdir()  # only the readable image gets an annotated copy
    assert copy.name.startswith("good.") and Image.open(copy).size == Image.open(good).size
    assert not np.array_equal(np.asarray(Image.open(copy))[:10, :40], np.asarray(Image.open(good))[:10, :40])


def test_without_params_yaml_the_checkpoint_supplies_the_settings(
    checkpoints, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Outside the repo (no ./params.yaml) the checkpoint's stored method and rule threshold apply; flags win."""
    images = [make_image(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    monkeypatch.chdir(tmp_path)
    ckpt = str(checkpoints["standalone"])
    assert main([*map(str, images), "--checkpoint", ckpt, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    knn = torch.load(ckpt, weights_only=True)["extra"]["unknown"]["knn"]["threshold"]
    assert doc["method"] == "knn" and doc["threshold"] == pytest.approx(knn)
    assert main([str(images[0]), "--checkpoint", ckpt, "--method", "max_softmax", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == pytest.approx(1 - 0.7)  # the stored rule threshold
    argv = [str(images[0]), "--checkpoint", ckpt, "--method", "max_softmax", "--threshold", "0.2", "--format", "json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == pytest.approx(1 - 0.2)
    # A checkpoint from before the settings were stored says what to do instead.
    with pytest.raises(InvalidFileError, match=r"stores no predict settings .*pass --params params.yaml"):
        main([str(images[0]), "--checkpoint", str(checkpoints["fitted"])])


def test_params_yaml_in_the_working_directory_still_sets_the_defaults(
    checkpoints, tmp_path: Path, repo: Path, monkeypatch, capsys
) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["unknown"]["method"] = "mahalanobis_pp"  # the checkpoint stores knn
    params["runtime"] = {**RUNTIME, "processes": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    image = make_image(tmp_path / "x.jpg")
    monkeypatch.chdir(tmp_path)
    assert main([str(image), "--checkpoint", str(checkpoints["standalone"]), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "mahalanobis_pp"


def test_aspect_rule_bounds_the_resize_of_every_accepted_image() -> None:
    from abcd.core.preprocess import MAX_ASPECT, aspect_problem

    assert aspect_problem(500, 146) is None and aspect_problem(20, 1) is None  # the data's thinnest is 3.4:1
    assert "aspect ratio 21:1 is over the limit of 20:1" in aspect_problem(1, 21)
    assert "100000:1" in aspect_problem(100000, 1)
    # Accepted: the long side after the resize is at most MAX_ASPECT times the short side.
    assert MAX_ASPECT * 292 * 292 * 3 < 6_000_000


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_a_thin_image_is_a_per_file_error_and_the_others_keep_their_answers(
    runtime: str, exported, tmp_path: Path, repo: Path, capsys
) -> None:
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 100_000), "white").save(thin)
    good = make_image(tmp_path / "good.jpg", size=(120, 90))
    model = ["--onnx", str(exported["onnx"])] if runtime == "onnx" else ["--checkpoint", str(exported["checkpoint"])]
    argv = [str(thin), str(good), "--runtime", runtime, *model, "--params", str(repo / "params.yaml")]
    argv += ["--format", "json"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    bad, ok = json.loads(out)["results"]
    assert "aspect ratio 100000:1 is over the limit of 20:1" in bad["error"] and bad["prediction"] is None
    assert ok["error"] is None and ok["prediction"] in [*CLASSES, UNKNOWN]
    assert f"predict: {thin}: 1x100000 pixels" in err and "Traceback" not in err
