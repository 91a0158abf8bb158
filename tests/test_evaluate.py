import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn import metrics as skm

from abcd.core.errors import InvalidFileError
from abcd.data.ood_manifest import NOT_EVALUATED, not_evaluated, write_not_evaluated
from abcd.evaluation import metrics
from abcd.evaluation.metrics import (
    bootstrap_ci,
    calibration_bins,
    classification_report,
    expected_calibration_error,
    log_loss,
)
from abcd.evaluation.plots import worst_mistakes
from abcd.evaluation.predictions import Predictions, columns, read_predictions, write_predictions
from abcd.evaluation.unknown_metrics import photo_breakdown
from abcd.stages import ood_evaluate
from abcd.stages.evaluate import main

# A case worked by hand: two classes, four images.
#   label  p(a)  p(b)  predicted
#   a      0.90  0.10  a
#   a      0.35  0.65  b
#   b      0.20  0.80  b
#   b      0.45  0.55  b
HAND = Predictions(
    images=["1.jpg", "2.jpg", "3.jpg", "4.jpg"],
    classes=["a", "b"],
    labels=np.array([0, 0, 1, 1]),
    predicted=np.array([0, 1, 1, 1]),
    probs=np.array([[0.9, 0.1], [0.35, 0.65], [0.2, 0.8], [0.45, 0.55]]),
)


def _report(pred: Predictions, **kw) -> dict:
    opts = {"ece_bins": 10, "bootstrap": 200, "ci_level": 0.9, "seed": 0, **kw}
    return classification_report(pred.labels, pred.probs, pred.classes, **opts)


def test_metrics_on_a_hand_worked_case() -> None:
    m = _report(HAND)
    assert m["accuracy"] == pytest.approx(0.75)
    # a: P=1, R=1/2, F1=2/3;  b: P=2/3, R=1, F1=4/5
    assert m["per_class"]["a"] | {"roc_auc": 0, "average_precision": 0} == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "roc_auc": 0, "average_precision": 0}
    )
    assert m["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["f1_micro"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.35) + math.log(0.8) + math.log(0.55)) / 4)
    # Brier: sum over classes of (p - onehot)^2, averaged: (2*.01 + 2*.4225 + 2*.04 + 2*.2025) / 4
    assert m["brier"] == pytest.approx((0.02 + 0.845 + 0.08 + 0.405) / 4)
    # One-vs-rest: 3 of the 4 (positive, negative) pairs are ordered correctly for each class.
    assert m["per_class"]["a"]["roc_auc"] == pytest.approx(0.75)
    assert m["per_class"]["b"]["roc_auc"] == pytest.approx(0.75)
    assert m["roc_auc_macro"] == pytest.approx(0.75)
    # ECE with 10 bins: confidences .9 (right), .65 (wrong), .8 (right), .55 (right), one per bin:
    # (|1-.9| + |0-.65| + |1-.8| + |1-.55|) / 4
    assert m["ece"] == pytest.approx((0.1 + 0.65 + 0.2 + 0.45) / 4)
    # sklearn agrees on the parts it has.
    assert m["f1_macro"] == pytest.approx(skm.f1_score(HAND.labels, HAND.predicted, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(HAND.labels, HAND.probs))


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet([1, 1, 1], 300)
    probs[np.arange(300), labels] += 1.0
    probs /= probs.sum(1, keepdims=True)
    a = bootstrap_ci(labels, probs, log_loss, 300, 0.95, seed=1)
    b = bootstrap_ci(labels, probs, log_loss, 300, 0.95, seed=1)
    c = bootstrap_ci(labels, probs, log_loss, 300, 0.95, seed=2)
    assert a == b and a != c
    assert a["low"] < log_loss(labels, probs) < a["high"]
    assert a["high"] - a["low"] < 0.2
    m = classification_report(labels, probs, ["x", "y", "z"], ece_bins=10, bootstrap=300, ci_level=0.95, seed=1)
    assert m["ci95"]["log_loss"] == a
    assert m["ci95"]["f1_macro"]["low"] <= m["f1_macro"] <= m["ci95"]["f1_macro"]["high"]


def test_calibration_bins_and_ece_of_a_calibrated_model_are_near_zero() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    conf = rng.uniform(0.5, 1.0, n)
    labels = (rng.uniform(size=n) > conf).astype(int)  # class 0 is right with probability conf
    probs = np.stack([conf, 1 - conf], axis=1)
    assert expected_calibration_error(labels, probs, 10) < 0.02
    rows = calibration_bins(labels, probs, 10)
    assert [r["bin"] for r in rows] == [5, 6, 7, 8, 9]  # confidences all above 0.5
    assert sum(r["count"] for r in rows) == n


def test_auc_is_null_for_a_class_absent_from_the_split() -> None:
    pred = Predictions(
        ["1", "2"], ["a", "b", "c"], np.array([0, 1]), np.array([0, 1]), np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    )
    assert _report(pred)["per_class"]["c"]["roc_auc"] is None


def test_worst_mistakes_are_the_most_confident_errors() -> None:
    assert worst_mistakes(HAND, 5) == [1]
    pred = Predictions(
        ["1", "2", "3"],
        ["a", "b"],
        np.array([0, 0, 1]),
        np.array([1, 1, 1]),
        np.array([[0.4, 0.6], [0.1, 0.9], [0.2, 0.8]]),
    )
    assert worst_mistakes(pred, 5) == [1, 0]
    assert worst_mistakes(pred, 1) == [1]


def test_csv_schema_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    write_predictions(path, HAND.images, ["a", "a", "b", "b"], HAND.probs, HAND.classes)
    with path.open() as f:
        assert next(csv.reader(f)) == ["image", "label", "prediction", "prob_a", "prob_b"]
    assert columns(["ants", "bees"]) == ["image", "label", "prediction", "prob_ants", "prob_bees"]
    # Byte for byte what csv.writer wrote before pandas: CRLF line ends, 6 significant digits.
    head = b"image,label,prediction,prob_a,prob_b\r\n1.jpg,a,a,0.9,0.1\r\n2.jpg,a,b,0.35,0.65\r\n"
    assert path.read_bytes().startswith(head)
    back = read_predictions(path)
    assert back.images == HAND.images and back.classes == HAND.classes
    np.testing.assert_array_equal(back.predicted, HAND.predicted)
    np.testing.assert_allclose(back.probs, HAND.probs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,label,prob_a,prob_b\n", r"p.csv:1: header must be image,label,prediction"),
        ("image,label,prediction,prob_a,prob_b,x\n", r"p.csv:1: .* then only 'score_<method>' columns"),
        ("image,label,prediction,prob_a,prob_b,score_k\n1.jpg,a,a,0.5,0.5,x\n", r"p.csv:2: .* must be numbers"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,c,a,0.5,0.5\n", r"p.csv:2: label 'c' is not one of a, b"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,a,a,0.5\n", r"p.csv:2: prob_b is '': .* must be numbers"),
        ("image,label,prediction,prob_a,prob_b\nx,a,a,.5,.5\ny,a,a,.5,.5,0\n", r"p.csv:3: expected 5 fields, got 6"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,a,a,0.5,0.5\n\n", r"p.csv:3: prediction '' is not one of a, b"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,c,x,0.5,0.5\n", r"p.csv:2: prediction 'x' is not one of a, b"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,a,a,0.5,0.5\n1.jpg,a,a,0.5,nan\n", r"p.csv:3: prob_b is 'nan'"),
        ("", r"p.csv:1: header must be image,label,prediction"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,a,a,0.9,0.9\n", r"p.csv:2: probabilities must .* sum to 1"),
        ("image,label,prediction,prob_a,prob_b\n", r"p.csv: no prediction rows"),
    ],
)
def test_bad_csv_is_reported_with_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_predictions(path)


def test_metrics_count_every_class_and_take_probabilities_as_stored() -> None:
    # Class c is absent from the labels and never predicted: it still counts in macro F1 (as 0) and in
    # the log loss's labels, as in a bootstrap resample that misses a class.
    labels, probs = np.array([0, 1, 1]), np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    predicted = probs.argmax(1)
    assert metrics.f1_macro(labels, predicted, 3) == pytest.approx(2 / 3)
    assert metrics.f1_macro(labels, predicted, 2) == pytest.approx(1.0)
    assert log_loss(labels, probs) == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.6)) / 3)
    np.testing.assert_array_equal(metrics.confusion(labels, predicted, 3), [[1, 0, 0], [0, 2, 0], [0, 0, 0]])
    # Brier for two classes: the multi-class definition, not sklearn's binary half of it.
    assert metrics.brier(HAND.labels, HAND.probs) == pytest.approx((0.02 + 0.845 + 0.08 + 0.405) / 4)
    # Probabilities rounded to 6 digits, as the CSV stores them, pass without sklearn's "sum to one" warning.
    rounded = np.array([[0.333333, 0.333333, 0.333333]] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert log_loss(labels, rounded) == pytest.approx(-math.log(0.333333))
        metrics.brier(labels, rounded)


def test_scores_and_unlabelled_rows_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ood.csv"
    scores = {"knn": np.array([0.1, 0.2, 0.3, 0.4]), "energy": np.array([-1.0, -2.0, -3.0, -4.5])}
    write_predictions(path, HAND.images, [None] * 4, HAND.probs, HAND.classes, scores)
    with path.open() as f:
        assert next(csv.reader(f)) == ["image", "label", "prediction", "prob_a", "prob_b", "score_knn", "score_energy"]
    back = read_predictions(path, labelled=False)
    assert (back.labels == -1).all() and list(back.scores) == ["knn", "energy"]
    for name, values in scores.items():
        np.testing.assert_allclose(back.scores[name], values)
    with pytest.raises(ValueError, match=r"ood.csv:2: label '' is not one of a, b"):
        read_predictions(path)  # labels are required unless asked otherwise


def _stage_inputs(tmp_path: Path) -> list[str]:
    """Predictions for HAND and three OOD images, as the test stages write them."""
    scores = {"knn": np.array([0.1, 0.5, 0.2, 0.3])}
    write_predictions(tmp_path / "test.csv", HAND.images, ["a", "a", "b", "b"], HAND.probs, HAND.classes, scores)
    # o1 and its crop o2 (photo "coffee", food) are the report half; o3 ("astronaut", people) the selection half.
    ood_probs = np.array([[0.5, 0.5], [0.7, 0.3], [0.6, 0.4]])
    write_predictions(tmp_path / "op" / "ood.csv", ["o1.jpg", "o2.jpg", "o3.jpg"], [None] * 3, ood_probs,
                      HAND.classes, {"knn": np.array([0.9, 0.25, 0.35])})  # fmt: skip
    (tmp_path / "ood").mkdir()
    for name in ("o1", "o2", "o3"):
        (tmp_path / f"{name}.jpg").write_bytes(b"x")
    (tmp_path / "ood" / "manifest.csv").write_text(
        "path,photo,package,region,half\no1.jpg,coffee,t,full,report\no2.jpg,coffee,t,top_left,report\n"
        "o3.jpg,astronaut,t,full,selection\n"
    )
    detectors = {"temperature": 0.5, "false_reject": 0.25, "thresholds": {"knn": 0.4}}
    (tmp_path / "d.json").write_text(json.dumps(detectors))
    return ["--predictions", "test.csv", "--ood-predictions", "op", "--detectors", "d.json", "--ood", "ood"]


def _knn_params(tmp_path: Path, repo: Path) -> str:
    """The repo's params with unknown.method knn: the one detector the stage inputs have scores of."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["unknown"]["method"] = "knn"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return str(tmp_path / "params.yaml")


UNKNOWN_OUTS = ["--metrics", "u.json", "--report", "ur.json", "--plots", "up"]


def test_ood_evaluate_stage_writes_unknown_metrics(tmp_path: Path, repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = _stage_inputs(tmp_path)
    ood_evaluate.main(["--params", _knn_params(tmp_path, repo), *args, *UNKNOWN_OUTS])
    unknown = json.loads((tmp_path / "ur.json").read_text())
    # The DVC metric: the rates of unknown.method (knn here) only; the report has every detector.
    rates = {"ood_photos_rejected": 1.0, "ood_rejected": 0.5, "known_rejected": 0.25}
    assert json.loads((tmp_path / "u.json").read_text()) == {"unknown": rates}
    assert unknown["n_known_test"] == 4 and unknown["n_ood_images"] == 2 and unknown["n_ood_photos"] == 1
    knn = unknown["methods"]["knn"]
    # Known scores .1 .5 .2 .3 against OOD .9 .25 at threshold .4: one known and one OOD rejected.
    # AUROC: OOD .9 outscores all 4 known, OOD .25 outscores 2 of them: 6 of the 8 pairs.
    assert knn["known_rejected"] == 0.25 and knn["ood_rejected"] == 0.5 and knn["ood_photos_rejected"] == 1.0
    # The target is by distinct photo: the one photo rejected, known rejected .25 <= false_reject .25.
    assert knn["auroc"] == pytest.approx(6 / 8) and knn["meets_target"] is True
    # FPR at 95% known kept: the threshold is the known scores' 95th percentile (.47): OOD photo .9 is rejected.
    assert knn["fpr_at_95"] == 0.0
    # The selection half, apart: o3 (.35) against the same known images, below the threshold.
    selection = unknown["selection"]
    assert (selection["n_ood_images"], selection["n_ood_photos"]) == (1, 1)
    assert selection["methods"]["knn"]["ood_rejected"] == 0.0 and selection["methods"]["knn"]["fpr_at_95"] == 1.0
    assert selection["methods"]["knn"]["auroc"] == pytest.approx(3 / 4)
    assert selection["methods"]["knn"]["meets_target"] is False
    # Where it fails: the whole photos accepted, and rejected / photos per category (src/abcd/oodset/photos.py).
    assert knn["accepted_photos"] == [] and knn["photos_by_category"] == {"food": {"photos": 1, "rejected": 1}}
    assert selection["methods"]["knn"]["accepted_photos"] == ["astronaut"]
    assert selection["methods"]["knn"]["photos_by_category"] == {"people": {"photos": 1, "rejected": 0}}
    # The uncalibrated rule sees softmax(T log p): with T = 0.5, (.7, .3) -> sqrt, renormalised -> (.604, .396),
    # which the rule (max p < .6) keeps; (.5, .5) stays and is rejected. Calibrated, (.7, .3) is kept too.
    assert (np.sqrt([0.7, 0.3]) / np.sqrt([0.7, 0.3]).sum())[0] == pytest.approx(0.604, abs=1e-3)
    assert unknown["methods"]["original_rule_uncalibrated"]["ood_rejected"] == 0.5
    assert unknown["methods"]["original_rule"]["ood_rejected"] == 0.5
    with (tmp_path / "up" / "risk_coverage" / "knn.csv").open() as f:
        assert float(list(csv.DictReader(f))[-1]["coverage"]) == 1.0
    assert (tmp_path / "up" / "risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ood_evaluate_says_not_evaluated_and_why_without_numbers(tmp_path: Path, repo: Path, monkeypatch) -> None:
    """The OOD branch off: ood_data's reason reaches every output; no prediction or detector file is read."""
    monkeypatch.chdir(tmp_path)
    write_not_evaluated(tmp_path / "ood", "no route to the OOD set's Debian photos")
    args = ["--predictions", "none.csv", "--ood-predictions", "none", "--detectors", "none.json", "--ood", "ood"]
    ood_evaluate.main(["--params", str(repo / "params.yaml"), *args, *UNKNOWN_OUTS])
    off = {"evaluated": False, "reason": "no route to the OOD set's Debian photos"}
    assert json.loads((tmp_path / "u.json").read_text()) == {"unknown": off}
    assert json.loads((tmp_path / "ur.json").read_text()) == off
    assert not_evaluated(tmp_path / "up") == off["reason"] and [p.name for p in (tmp_path / "up").iterdir()] == [
        NOT_EVALUATED
    ]


def test_evaluate_stage_writes_metrics_and_plots(tmp_path: Path, repo: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # image paths in the CSV do not exist: the grid shows placeholders
    _stage_inputs(tmp_path)
    out = ["--metrics", "m.json", "--report", "r.json", "--plots", "plots"]
    main(["--params", _knn_params(tmp_path, repo), "--predictions", "test.csv", *out])
    assert "2.jpg: cannot be read for an image grid" in capsys.readouterr().err  # the one mistake's missing file
    report = json.loads((tmp_path / "r.json").read_text())["test"]
    assert report["accuracy"] == pytest.approx(0.75)
    assert set(report["ci95"]) == {"f1_macro", "log_loss"} and set(report["per_class"]) == {"a", "b"}
    # The DVC metric: the deciding numbers only, flat, the CI bounds beside their metric.
    metrics = json.loads((tmp_path / "m.json").read_text())["test"]
    bounds = ["f1_macro_low", "f1_macro_high", "log_loss_low", "log_loss_high"]
    assert sorted(metrics) == sorted(["f1_macro", "log_loss", "accuracy", "roc_auc_macro", "ece", *bounds])
    assert metrics["accuracy"] == report["accuracy"] and metrics["f1_macro_low"] == report["ci95"]["f1_macro"]["low"]
    with (tmp_path / "plots" / "confusion.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["actual"], r["predicted"]) for r in rows] == [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b")]
    for name in ("a", "b"):
        with (tmp_path / "plots" / "roc" / f"{name}.csv").open() as f:
            roc = list(csv.DictReader(f))
        assert float(roc[0]["fpr"]) == 0 and float(roc[-1]["tpr"]) == 1
        with (tmp_path / "plots" / "pr" / f"{name}.csv").open() as f:
            pr = list(csv.DictReader(f))
        assert float(pr[-1]["recall"]) == 0 and float(pr[-1]["precision"]) == 1
    with (tmp_path / "plots" / "calibration.csv").open() as f:
        assert sum(int(r["count"]) for r in csv.DictReader(f)) == 4
    for png in ("confusion", "confusion_normalized", "roc", "pr", "calibration", "worst_mistakes"):
        assert (tmp_path / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_grid_takes_uint8_and_float_images() -> None:
    from abcd.evaluation.figures import image_grid

    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    half = np.full((10, 10, 3), 0.5)  # float in [0, 1], as denormalised tensors are
    grid = image_grid([red, half], ["a", "b\nsecond line"], ["red", "green"], cols=4, tile=32)
    assert grid.dtype == np.uint8 and grid.shape[1] == 2 * (32 + 6) + 6  # columns shrink to the images
    assert tuple(grid[6 + 16, 6 + 16]) == (255, 0, 0)
    assert abs(int(grid[6 + 16, 6 + 38 + 16, 1]) - 128) <= 1


def test_photo_breakdown_counts_by_category_and_names_an_uncategorised_photo() -> None:
    names, rejected = np.array(["b", "a", "c"]), np.array([True, False, False])
    got = photo_breakdown(names, rejected, {"a": "food", "b": "animal", "c": "animal"})
    assert got["accepted_photos"] == ["a", "c"]
    assert got["photos_by_category"] == {"animal": {"photos": 2, "rejected": 1}, "food": {"photos": 1, "rejected": 0}}
    with pytest.raises(InvalidFileError, match=r"without a category in src/abcd/oodset/photos.py: c$"):
        photo_breakdown(names, rejected, {"a": "food", "b": "animal"})
