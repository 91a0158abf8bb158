from pathlib import Path

import pytest
import yaml

from abcd.core.params import ParamsError, load_params, parse_params


@pytest.fixture
def raw(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def test_default_params_load(repo: Path) -> None:
    p = load_params(repo / "params.yaml")
    assert p.classes == ["ants", "bees", "cats", "dogs"]
    assert p.model.backbone == "efficientnet_lite2"
    assert p.predict.threshold == 0.6
    assert isinstance(p.augment.scale, tuple) and len(p.augment.scale) == 2
    assert p.to_dict()["augment"]["scale"] == list(p.augment.scale)  # plain data for checkpoints


def test_misspelled_key_suggests_the_right_one(raw: dict) -> None:
    raw["train"]["n_epochs"] = raw["train"].pop("epochs")
    with pytest.raises(ParamsError, match=r"unknown key 'train.n_epochs'.*allowed keys in 'train': .*epochs"):
        parse_params(raw)
    raw["train"]["epochs"] = raw["train"].pop("n_epochs")
    raw["trian"] = raw.pop("train")
    with pytest.raises(ParamsError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        parse_params(raw)


def test_missing_key_is_named(raw: dict) -> None:
    del raw["predict"]["threshold"]
    with pytest.raises(ParamsError, match=r"'predict' is missing key\(s\): threshold"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", 2.5, r"'train.epochs' must be an integer"),
        ("train", "probe_c", [], r"'train.probe_c' must be a non-empty list of numbers > 0"),
        ("train", "probe_c", [1.0, 0], r"'train.probe_c' must be a non-empty list of numbers > 0"),
        ("train", "probe_c", 1.0, r"'train.probe_c' must be a list"),
        ("predict", "threshold", 1.5, r"'predict.threshold' must be a probability in \[0, 1\]"),
        ("runtime", "precision", "fp16", r"'runtime.precision' must be one of 'auto', 'fp32', 'bf16'"),
        ("runtime", "num_workers", -1, r"'runtime.num_workers' must be an integer >= 0 or 'auto'"),
        ("runtime", "processes", 0, r"'runtime.processes' must be an integer >= 1 or 'auto' \(one per GPU\)"),
        ("runtime", "processes", "all", r"'runtime.processes' must be an integer or one of 'auto', got 'all'"),
        ("augment", "scale", [0.9, 0.5], r"'augment.scale' must be \[min, max\]"),
        ("model", "dropout", 1.0, r"'model.dropout' must be a probability in \[0, 1\)"),
        ("unknown", "false_reject", 0.5, r"'unknown.false_reject' must be a fraction in \[0, 0.5\)"),
        ("unknown", "knn_k", 0, r"'unknown.knn_k' must be an integer >= 1"),
        ("featurize", "batch_size", 0, r"'featurize.batch_size' must be an integer >= 1"),
        ("featurize", "batch_size", 12.5, r"'featurize.batch_size' must be an integer"),
        ("predict", "batch_size", 0, r"'predict.batch_size' must be an integer >= 1"),
        ("ood", "evaluate", "yes", r"'ood.evaluate' must be true/false or one of 'auto', got 'yes'"),
        ("ood", "crops", 1, r"'ood.crops' must be true/false"),
        ("unknown", "ood_crops", True, r"'unknown.ood_crops' moved to 'ood.crops'"),
    ],
)
def test_bad_values_fail_with_the_rule(raw: dict, section: str, key: str, value, message: str) -> None:
    raw[section][key] = value
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_split_fractions_must_sum_to_one(raw: dict) -> None:
    raw["prepare"]["split"] = {"train": 0.7, "val": 0.2, "test": 0.2}
    with pytest.raises(ParamsError, match=r"'prepare.split' must be fractions that sum to 1 \(they sum to 1.1\)"):
        parse_params(raw)


def test_scientific_notation_string_is_a_number(raw: dict) -> None:
    raw["lr"] = "3e-3"  # PyYAML reads 3e-3 (no dot) as a string
    assert parse_params(raw).lr == pytest.approx(0.003)


@pytest.mark.parametrize(
    ("value", "message"), [(0, r"'lr' must be a number > 0"), ("fast", r"'lr' must be a number, got 'fast'")]
)
def test_top_level_lr_is_checked(raw: dict, value, message: str) -> None:
    raw["lr"] = value
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_lr_under_train_points_to_the_top_level_key(raw: dict) -> None:
    """`-S train.lr=...` (the old layout) fails naming where lr lives now."""
    raw["train"]["lr"] = 0.001
    with pytest.raises(ParamsError, match=r"'train.lr' is the top-level 'lr' \(dvc exp run -S lr=0.001\)"):
        parse_params(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
