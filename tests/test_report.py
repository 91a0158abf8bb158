from pathlib import Path

from abcd.core.params import load_params
from abcd.evaluation.report import render

TEST = {
    "test": {
        "n": 4,
        "accuracy": 0.75,
        "balanced_accuracy": 0.75,
        "f1_macro": 0.7333,
        "f1_micro": 0.75,
        "log_loss": 0.494,
        "brier": 0.3375,
        "ece": 0.35,
        "roc_auc_macro": 0.75,
        "ci95": {"f1_macro": {"low": 0.4, "high": 1.0}, "log_loss": {"low": 0.2, "high": 0.8}},
        "per_class": {
            "ants": {
                "precision": 1.0,
                "recall": 0.5,
                "f1": 0.6667,
                "support": 2,
                "roc_auc": 0.75,
                "average_precision": 0.8,
            },
            "bees": {
                "precision": 0.6667,
                "recall": 1.0,
                "f1": 0.8,
                "support": 2,
                "roc_auc": None,
                "average_precision": None,
            },
        },
    }
}
TRAIN = {"best_epoch": 3, "val": {"loss": 0.1, "accuracy": 0.9, "f1_macro": 0.88}}
DATA = {"totals": {"found": 11, "kept": 10, "skipped": 1, "train": 6, "val": 2, "test": 2}}  # reports/data.json
UNKNOWN = {
    "n_known_test": 4,
    "n_ood_images": 5,
    "n_ood_photos": 2,
    "target_false_reject": 0.02,
    "temperature": 0.9,
    "ece_test_before": 0.05,
    "ece_test_after": 0.04,
    "methods": {
        "knn": {
            "auroc": 0.99,
            "ood_rejected": 0.8,
            "ood_photos_rejected": 1.0,
            "known_rejected": 0.0,
            "threshold": 1.25,
            "accepted_photos": [],
            "photos_by_category": {"food": {"photos": 1, "rejected": 1}, "people": {"photos": 1, "rejected": 1}},
        },
    },
}


def test_report_has_metrics_with_intervals_data_and_plots(repo: Path) -> None:
    links = [("ROC curves", "../plots/test/roc.png")]
    params = load_params(repo / "params.yaml")
    params = params.model_copy(update={"unknown": params.unknown.model_copy(update={"method": "knn"})})
    text = render(DATA, TRAIN, TEST, params, links, UNKNOWN)
    assert "| metric | value | 95% CI (bootstrap) |" in text
    assert "| macro F1 | 0.7333 | [0.4000, 1.0000] |" in text
    assert "| log loss | 0.4940 | [0.2000, 0.8000] |" in text
    assert "| bees | 0.6667 | 1.0000 | 0.8000 | 2 | n/a | n/a |" in text
    assert "10 images kept, 1 skipped; split train 6 / val 2 / test 2." in text
    assert "best epoch 3" in text
    assert "| **knn** (predict) | 0.9900 | 80.0% | 100.0% | 0.0% | 1.25 |" in text  # unknown.method: knn
    assert "`knn` rejects, by photo category: food 1/1, people 1/1. The photos it accepts: none." in text
    assert "lr 0.0001," in text  # the top-level lr
    assert "Temperature 0.900: test ECE 0.0500 before, 0.0400 after" in text
    assert "![ROC curves](../plots/test/roc.png)" in text


def test_report_says_where_the_head_started_and_how_the_backbone_was_used(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    probe = {**TRAIN, "best_epoch": 0, "init": "probe", "probe_c": 3.0, "probe_val_loss": 0.0234}
    text = render(DATA, probe, TEST, params, [], UNKNOWN)
    assert "(frozen), head started from the linear probe (C 3, val loss 0.0234)" in text
    assert "best epoch 0 (the start)." in text
    tuned = params.model_copy(update={"train": params.train.model_copy(update={"trainable_blocks": 2})})
    text = render(DATA, {**TRAIN, "init": "random"}, TEST, tuned, [], UNKNOWN)
    assert "(last 2 blocks fine-tuned), head started from a random initialisation" in text
    assert "best epoch 3." in text


def test_report_says_the_ood_branch_was_not_evaluated_and_why(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    off = {"evaluated": False, "reason": "ood.evaluate is false"}
    text = render(DATA, TRAIN, TEST, params, [], off, {**off, "routes": {}})
    assert "## Unknown detection\n\nNot evaluated: ood.evaluate is false." in text
    assert "| macro F1 | 0.7333 |" in text  # the classifier's part as ever
    on = render(DATA, TRAIN, TEST, params, [], UNKNOWN, {"evaluated": True, "route": "mirror"})
    assert "The OOD set's Debian photos came through route `mirror`." in on
