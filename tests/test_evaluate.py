import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from src.evaluate import compute_metrics, main
from src.predictions import Predictions, columns, read_predictions, write_predictions

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


def test_metrics_on_a_hand_worked_case() -> None:
    m = compute_metrics(HAND)
    assert m["accuracy"] == pytest.approx(0.75)
    # a: P=1, R=1/2, F1=2/3;  b: P=2/3, R=1, F1=4/5
    assert m["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["f1_micro"] == pytest.approx(0.75)
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.35) + math.log(0.8) + math.log(0.55)) / 4)
    # One-vs-rest: 3 of the 4 (positive, negative) pairs are ordered correctly for each class.
    assert m["roc_auc"] == {"a": pytest.approx(0.75), "b": pytest.approx(0.75)}
    assert m["roc_auc_macro"] == pytest.approx(0.75)


def test_auc_is_null_for_a_class_absent_from_the_split() -> None:
    pred = Predictions(
        ["1", "2"], ["a", "b", "c"], np.array([0, 1]), np.array([0, 1]), np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    )
    assert compute_metrics(pred)["roc_auc"]["c"] is None


def test_csv_schema_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    write_predictions(path, HAND.images, ["a", "a", "b", "b"], HAND.probs, HAND.classes)
    with path.open() as f:
        assert next(csv.reader(f)) == ["image", "label", "prediction", "prob_a", "prob_b"]
    assert columns(["ants", "bees"]) == ["image", "label", "prediction", "prob_ants", "prob_bees"]
    back = read_predictions(path)
    assert back.images == HAND.images and back.classes == HAND.classes
    np.testing.assert_array_equal(back.predicted, HAND.predicted)
    np.testing.assert_allclose(back.probs, HAND.probs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,label,prob_a,prob_b\n", r"p.csv:1: header must be image,label,prediction"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,c,a,0.5,0.5\n", r"p.csv:2: label 'c' is not one of a, b"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,a,a,0.5\n", r"p.csv:2: expected 5 fields, got 4"),
        ("image,label,prediction,prob_a,prob_b\n1.jpg,a,a,0.9,0.9\n", r"p.csv:2: probabilities must .* sum to 1"),
        ("image,label,prediction,prob_a,prob_b\n", r"p.csv: no prediction rows"),
    ],
)
def test_bad_csv_is_reported_with_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_predictions(path)


def test_evaluate_stage_writes_metrics_and_plots(tmp_path: Path) -> None:
    csv_path = tmp_path / "test.csv"
    write_predictions(csv_path, HAND.images, ["a", "a", "b", "b"], HAND.probs, HAND.classes)
    main(["--predictions", str(csv_path), "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["accuracy"] == pytest.approx(0.75)
    with (tmp_path / "plots" / "confusion.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["actual"], r["predicted"]) for r in rows] == [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b")]
    for name in ("a", "b"):
        with (tmp_path / "plots" / "roc" / f"{name}.csv").open() as f:
            roc = list(csv.DictReader(f))
        assert float(roc[0]["fpr"]) == 0 and float(roc[-1]["tpr"]) == 1
    for png in ("confusion.png", "roc.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
