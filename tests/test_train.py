import math
from pathlib import Path

import pytest
import torch

from abcd.core.params import TrainParams
from abcd.core.registry import CLASS_WEIGHTS
from abcd.core.schema import ParamsError, build
from abcd.features.store import write_split
from abcd.models.backbones import build_backbone, set_trainable_blocks
from abcd.models.head import Classifier, build_head
from abcd.training.fit import fit
from abcd.training.optim import lr_factor, param_groups

LR = 0.01  # the head's lr: the top-level param, passed to fit beside train's
PARAMS = TrainParams(
    epochs=30,
    batch_size=16,
    optimizer="adamw",
    weight_decay=0.0,
    scheduler="cosine",
    warmup_epochs=0,
    trainable_blocks=0,
    backbone_lr=0.001,
    label_smoothing=0.0,
    class_weights="none",
    grad_clip=0.0,
    patience=0,
    resume=False,
    deterministic=True,
    calibrate=False,
    init="random",
    probe_c=[0.1, 1.0],
)


# The train stage's paths, relative to a test's working directory.
STAGE_ARGS = ["--features", "features", "--data", "data", "--model", "model.pt", "--last", "last.pt"]
STAGE_ARGS += [
    "--logdir",
    "runs",
    "--metrics",
    "train.json",
    "--report",
    "train_report.json",
    "--history",
    "history.csv",
]


def _blobs(n: int, views: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four well-separated Gaussian clusters in 8-d; (N, K, D) when views is set."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(4, 8) * 4
    y = torch.arange(n) % 4
    shape = (n, views, 8) if views else (n, 8)
    noise = torch.randn(shape, generator=g)
    x = (centres[y][:, None] if views else centres[y]) + noise
    return x, y


def test_fit_learns_and_keeps_the_best_epoch_by_val_loss() -> None:
    torch.manual_seed(0)
    result = fit(build_head(8, 4, 0.1), _blobs(200, 3, 0), _blobs(80, None, 1), PARAMS, seed=0, lr=LR)
    losses = [row["val_loss"] for row in result.history]
    assert len(result.history) == PARAMS.epochs
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert result.best_val.loss == pytest.approx(min(losses))
    assert result.best_val.accuracy > 0.95
    assert losses[-1] < losses[0]
    assert result.val_probs.shape == (80, 4)


def test_fit_is_seeded() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(fit(build_head(8, 4, 0.1), _blobs(64, 2, 0), _blobs(32, None, 1), PARAMS, seed=5, lr=LR).history)
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("field", "value", "choices"),
    [
        ("optimizer", "rmsprop", "optimizer 'rmsprop'; choose one of sgd, adam, adamw"),
        ("scheduler", "linear", "scheduler 'linear'; choose one of none, cosine, step"),
        ("class_weights", "inverse", "class weighting 'inverse'; choose one of none, balanced"),
        ("init", "zeros", "head init 'zeros'; choose one of random, probe"),
    ],
)
def test_unknown_choices_list_the_registry(field: str, value: str, choices: str) -> None:
    bad = {**PARAMS.model_dump(), field: value}
    with pytest.raises(ParamsError, match=f"params: 'train.{field}': unknown {choices}"):
        build(TrainParams, bad, "train")


def test_ctrl_c_keeps_the_best_epoch_so_far() -> None:
    def interrupt_at_epoch_4(row: dict, probs: torch.Tensor) -> None:
        if row["epoch"] == 4:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    result = fit(
        build_head(8, 4, 0.1), _blobs(64, 2, 0), _blobs(32, None, 1), PARAMS, seed=5, log=interrupt_at_epoch_4, lr=LR
    )
    assert result.interrupted
    assert len(result.history) == 4  # the signal came while epoch 4 was being logged
    losses = [row["val_loss"] for row in result.history[:3]]  # epochs that completed
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert result.best_val.loss == pytest.approx(min(losses))


def test_ctrl_c_before_any_epoch_propagates() -> None:
    def interrupt(row: dict, probs: torch.Tensor) -> None:
        raise KeyboardInterrupt

    class Boom(torch.nn.Linear):
        def forward(self, x):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(Boom(8, 4), _blobs(16, 1, 0), _blobs(8, None, 1), PARAMS, seed=0, log=interrupt, lr=LR)


def test_resuming_from_the_last_state_gives_the_uninterrupted_result() -> None:
    params = PARAMS.model_copy(update={"epochs": 6, "warmup_epochs": 1})
    train, val = _blobs(64, 3, 0), _blobs(32, None, 1)
    torch.manual_seed(0)
    full = fit(build_head(8, 4, 0.3), train, val, params, seed=5, lr=LR)

    states: list[dict] = []

    def stop_after_epoch_3(row: dict, probs: torch.Tensor) -> None:
        if row["epoch"] == 4:
            raise KeyboardInterrupt  # killed during epoch 4: the last complete state is epoch 3's

    torch.manual_seed(0)
    fit(build_head(8, 4, 0.3), train, val, params, seed=5, log=stop_after_epoch_3, on_epoch_end=states.append, lr=LR)
    assert [s["epoch"] for s in states] == [1, 2, 3]
    torch.manual_seed(123)  # a new process: different global RNG until the state restores it
    resumed = fit(build_head(8, 4, 0.3), train, val, params, seed=5, resume=states[-1], lr=LR)
    assert resumed.history == full.history
    assert resumed.best_epoch == full.best_epoch
    for k, v in full.head.state_dict().items():
        assert torch.equal(resumed.head.state_dict()[k], v)


def test_early_stopping_after_patience_epochs_without_a_better_val_loss() -> None:
    # lr so high that val loss stops improving quickly.
    params = PARAMS.model_copy(update={"epochs": 40, "patience": 3, "scheduler": "none", "optimizer": "sgd"})
    torch.manual_seed(0)
    result = fit(build_head(8, 4, 0.0), _blobs(64, 2, 0), _blobs(32, None, 1), params, seed=0, lr=5.0)
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 3


def test_lr_warms_up_then_follows_the_schedule() -> None:
    p = PARAMS.model_copy(update={"epochs": 10, "warmup_epochs": 2})
    assert [lr_factor(e, p) for e in (0, 1)] == pytest.approx([1 / 3, 2 / 3])
    assert lr_factor(2, p) == 1.0 and lr_factor(6, p) == pytest.approx(0.5)
    assert lr_factor(9, p) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    step = p.model_copy(update={"scheduler": "step"})
    assert [lr_factor(e, step) for e in (2, 4, 5, 7, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_balanced_class_weights_are_inverse_frequencies() -> None:
    w = CLASS_WEIGHTS.get("balanced")(torch.tensor([10.0, 30.0, 20.0, 20.0]))
    assert w.tolist() == pytest.approx([2.0, 2 / 3, 1.0, 1.0])
    assert CLASS_WEIGHTS.get("none")(torch.tensor([1.0, 2.0])) is None


def test_label_smoothing_class_weights_and_clipping_train() -> None:
    params = PARAMS.model_copy(update={"label_smoothing": 0.1, "class_weights": "balanced", "grad_clip": 1.0})
    torch.manual_seed(0)
    result = fit(build_head(8, 4, 0.1), _blobs(200, 3, 0), _blobs(80, None, 1), params, seed=0, lr=LR)
    assert result.best_val.accuracy > 0.95
    # Smoothing keeps the training loss above the entropy floor it imposes.
    assert result.history[-1]["train_loss"] > 0.1


def _tail(blocks: int) -> tuple[Classifier, torch.nn.Sequential]:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    set_trainable_blocks(backbone, blocks)
    prefix, suffix = backbone.split(blocks)
    model = Classifier(suffix, backbone.num_features, 4, 0.0)
    suffix.requires_grad_(True)
    return model, prefix


def test_set_trainable_blocks_unfreezes_only_the_last_blocks() -> None:
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    set_trainable_blocks(backbone, 2)
    trainable = {n for n, p in backbone.module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("blocks.6.", "conv_head.", "bn2.")) for n in trainable)
    assert any(n.startswith("blocks.6.") for n in trainable) and "conv_head.weight" in trainable
    with pytest.raises(ValueError, match=r"'train\.trainable_blocks' is 10, out of range: this backbone has 9 blocks"):
        set_trainable_blocks(backbone, 10)


def test_fine_tuning_keeps_batchnorm_statistics_and_trains_bn_affine() -> None:
    model, _ = _tail(2)
    groups = param_groups(model, PARAMS.model_copy(update={"backbone_lr": 0.001}), 0.01)
    assert [g["lr"] for g in groups] == [0.01, 0.001]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.head.parameters()}
    bn = model.backbone[-1][1]  # bn2 of the conv head
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    weight = bn.weight.detach().clone()
    x = torch.randn(16, 2, 192, 7, 7)  # the frozen prefix's output for lite0, 2 views
    y = torch.arange(16) % 4
    params = PARAMS.model_copy(update={"epochs": 2, "trainable_blocks": 2})
    fit(model, (x, y), (x[:, 0], y), params, seed=0, num_classes=4, lr=LR)
    assert not model.backbone[-1].training  # backbone stays in eval mode after training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert not torch.equal(bn.weight.detach(), weight)


def test_resume_refuses_a_last_checkpoint_made_with_other_params(tmp_path, repo) -> None:
    from abcd.core.errors import InvalidFileError
    from abcd.core.params import load_params
    from abcd.models.checkpoint import load_training_state

    params = load_params(repo / "params.yaml")
    path = tmp_path / "last.pt"
    resuming = params.model_copy(update={"train": params.train.model_copy(update={"resume": True})})
    assert load_training_state(path, resuming.to_dict()) is None  # nothing to resume: start from epoch 1
    other = params.model_copy(update={"lr": params.lr * 2})
    torch.save({"format": 1, "params": other.to_dict(), "state": {"epoch": 3}}, path)
    with pytest.raises(InvalidFileError, match="made with other params; resuming needs the same ones"):
        load_training_state(path, resuming.to_dict())
    torch.save({"format": 1, "params": params.to_dict(), "state": {"epoch": 3}}, path)  # resume: false there
    assert load_training_state(path, resuming.to_dict()) == {"epoch": 3}


def _features_dir(tmp_path: Path, repo: Path, monkeypatch) -> list[str]:
    """A featurize output for 8-d synthetic features, val images on disk, and the train stage's args."""
    import json

    import yaml

    from abcd.data.images import Sample, write_manifest
    from tests.conftest import CLASSES, make_image

    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["model"]["backbone"] = "efficientnet_lite0"
    raw["train"]["epochs"] = 3
    raw["unknown"]["knn_k"] = 2
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    (x, y), (vx, vy) = _blobs(40, 2, 0), _blobs(16, None, 1)
    features = Path("features")
    features.mkdir()
    train = {"features": x.numpy(), "eval_features": x[:, 0].numpy() + 0.1, "labels": y.numpy()}
    write_split(features, "train", **train, paths=[f"t{i}" for i in range(40)])
    write_split(features, "val", vx.numpy(), vy.numpy(), [f"v{i}" for i in range(16)])
    meta = {"backbone": "efficientnet_lite0", "classes": CLASSES, "num_features": 8, "precision": "fp32"}
    meta["preprocess"] = {
        "input_size": 8,
        "resize_size": 8,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bicubic",
    }
    (features / "meta.json").write_text(json.dumps(meta))
    torch.save({"conv.weight": torch.arange(6.0).reshape(2, 3)}, features / "backbone.pt")
    val = [Sample(str(make_image(Path(f"img/v{i}.jpg"), seed=i)), CLASSES[int(vy[i])]) for i in range(16)]
    write_manifest(Path("data/val.csv"), val)
    return STAGE_ARGS


def test_train_stage_saves_featurizes_backbone_weights_without_building_the_backbone(tmp_path, repo, monkeypatch):
    import numpy as np

    from abcd.evaluation.calibration import fit_temperature, nll
    from abcd.models.checkpoint import load_checkpoint
    from abcd.ood.detectors import head_logits
    from abcd.stages.train import main

    args = _features_dir(tmp_path, repo, monkeypatch)
    monkeypatch.setattr("abcd.training.inputs.build_backbone", lambda *a, **k: pytest.fail("train built the backbone"))
    assert main(args) == 0
    loaded = load_checkpoint(tmp_path / "model.pt", lazy=True)
    assert torch.equal(loaded.state_dict["backbone.conv.weight"], torch.arange(6.0).reshape(2, 3))
    assert loaded.head[1].weight.shape == (4, 8) and loaded.extra["temperature"] == 1.0  # calibrate: false
    # The temperature a fit would give is still recorded: the one fitted on the saved head's val logits.
    val = tmp_path / "features" / "val"
    logits, labels = head_logits(loaded.head, np.load(val / "features.npy")), np.load(val / "labels.npy")
    calibration = loaded.extra["calibration"]
    assert calibration["fitted_temperature"] == pytest.approx(fit_temperature(logits, labels), rel=1e-6)
    assert calibration["val_nll_before"] == pytest.approx(nll(logits, labels), rel=1e-6)
    # kNN's bank: the 40 x 2 augmented views, then featurize's 40 eval views (unit length, fp16).
    train = tmp_path / "features" / "train"
    rows = np.concatenate([np.load(train / "features.npy").reshape(-1, 8), np.load(train / "eval_features.npy")])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.extra["unknown"]["knn"]["state"]["bank"].float().numpy(), rows, atol=1e-3)


def test_train_stage_without_the_backbone_weights_says_to_rerun_featurize(tmp_path, repo, monkeypatch) -> None:
    from abcd.stages.train import main

    args = _features_dir(tmp_path, repo, monkeypatch)
    (tmp_path / "features" / "backbone.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"features/backbone.pt .*run: dvc repro featurize"):
        main(args)


def test_train_stage_fine_tunes_the_last_block_and_saves_a_loadable_model(tmp_path, repo, monkeypatch) -> None:
    import yaml

    from abcd.data.images import Sample, write_manifest
    from abcd.models.checkpoint import load_checkpoint
    from abcd.stages.train import main
    from tests.conftest import CLASSES, make_image

    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["model"]["backbone"] = "efficientnet_lite0"
    raw["train"].update(trainable_blocks=1, epochs=2, batch_size=4)
    raw["featurize"]["views"] = 2
    raw["runtime"].update(precision="fp32", num_workers=0)
    raw["unknown"]["knn_k"] = 2
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    for split, n in (("train", 3), ("val", 2)):
        samples = [
            Sample(str(make_image(Path(f"img/{split}/{c}{i}.jpg"), seed=10 * k + i, size=(80, 64))), c)
            for k, c in enumerate(CLASSES)
            for i in range(n)
        ]
        write_manifest(Path(f"data/{split}.csv"), samples)
    # featurize's pooled features, which the probe that starts the head is fitted on (random here).
    import numpy as np

    rng = np.random.default_rng(0)
    Path("features").mkdir()
    for split, n in (("train", 3), ("val", 2)):
        labels = np.repeat(np.arange(4), n)
        feats = rng.normal(size=(4 * n, 1280)).astype(np.float32) + labels[:, None]
        paths = [f"{split}{i}" for i in range(len(labels))]
        write_split(Path("features"), split, feats, labels, paths, eval_features=feats)
    assert main(STAGE_ARGS) == 0
    loaded = load_checkpoint(tmp_path / "model.pt", expected_classes=CLASSES)  # builds lite0, strict load
    assert loaded.trainable_blocks == 1
    pretrained = build_backbone("efficientnet_lite0", pretrained=True).module.state_dict()
    changed = {k for k, v in loaded.model.backbone.state_dict().items() if not torch.equal(v, pretrained[k])}
    last_block = {k for k in changed if k.startswith(("conv_head", "bn2"))}
    assert changed and changed == last_block  # only the last block (conv head + its BN affine) was trained
    # kNN's bank: the 12 training images' 2 views and their eval view, all through the fine-tuned backbone.
    bank = loaded.extra["unknown"]["knn"]["state"]["bank"]
    assert bank.shape == (12 * 2 + 12, 1280)
    eval_rows = bank[24:].float()
    assert not any(torch.allclose(eval_rows, bank[i:24:2].float(), atol=1e-2) for i in range(2))  # not a view
    stored = torch.from_numpy(np.load("features/train/eval_features.npy"))
    assert not torch.allclose(eval_rows, stored / stored.norm(dim=1, keepdim=True), atol=1e-2)  # not featurize's


def test_fit_keeps_the_start_as_epoch_0_when_no_epoch_beats_it() -> None:
    from abcd.training.probe import fit_probe

    train, val = _blobs(64, 2, 0), _blobs(32, None, 1)
    head = build_head(8, 4, 0.0)
    probe = fit_probe((train[0][:, 0], train[1]), val, 4, [1.0])
    with torch.no_grad():
        head[1].weight.copy_(probe.weight)
        head[1].bias.copy_(probe.bias)
    # Training on shuffled labels makes every epoch worse than the probe: epoch 0 must come back, untouched.
    shuffled = (train[0], train[1][torch.randperm(64, generator=torch.Generator().manual_seed(0))])
    result = fit(head, shuffled, val, PARAMS.model_copy(update={"epochs": 3}), seed=0, keep_start=True, lr=LR)
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    assert result.best_epoch == 0 and result.history[0]["lr"] == 0.0
    assert result.best_val.loss == pytest.approx(result.history[0]["val_loss"])
    assert min(row["val_loss"] for row in result.history[1:]) > result.best_val.loss
    assert torch.allclose(result.head[1].weight, probe.weight.float())
    # With a sensible lr, training can beat the start; it is then an ordinary epoch >= 1.
    better = fit(
        build_head(8, 4, 0.0), train, val, PARAMS.model_copy(update={"epochs": 3}), seed=0, keep_start=True, lr=LR
    )
    assert better.best_epoch >= 1 and better.history[0]["val_loss"] > better.best_val.loss


def test_probe_init_puts_the_probe_fit_in_the_heads_linear_layer() -> None:
    from abcd.training.init import init_head
    from abcd.training.probe import fit_probe

    train, val = _blobs(64, None, 0), _blobs(32, None, 1)
    torch.manual_seed(0)
    head = build_head(8, 4, 0.5)
    drawn = head[1].weight.detach().clone()
    info = init_head(head[1], train, val, PARAMS.model_copy(update={"init": "probe"}))
    probe = fit_probe(train, val, 4, PARAMS.probe_c)
    assert info == {"init": "probe", "probe_c": probe.c, "probe_val_loss": pytest.approx(probe.val_loss)}
    assert not torch.allclose(drawn, probe.weight.float())  # so the check below can tell the two apart
    assert torch.allclose(head[1].weight, probe.weight.float()) and torch.allclose(head[1].bias, probe.bias.float())
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(head.eval()(val[0]), val[1]).item()
    assert loss == pytest.approx(probe.val_loss, rel=1e-5)  # the head now is the probe, dropout and all
    # init: random keeps the weights drawn when the head was built.
    head = build_head(8, 4, 0.5)
    drawn = {k: v.clone() for k, v in head.state_dict().items()}
    assert init_head(head[1], train, val, PARAMS.model_copy(update={"init": "random"})) == {"init": "random"}
    assert all(torch.equal(v, drawn[k]) for k, v in head.state_dict().items())


def test_resume_after_epoch_0_continues_like_an_uninterrupted_run() -> None:
    params = PARAMS.model_copy(update={"epochs": 4})
    train, val = _blobs(64, 2, 0), _blobs(32, None, 1)
    torch.manual_seed(0)
    full = fit(build_head(8, 4, 0.3), train, val, params, seed=5, keep_start=True, lr=LR)
    states: list[dict] = []

    def stop_in_epoch_3(row: dict, probs: torch.Tensor) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    fit(
        build_head(8, 4, 0.3),
        train,
        val,
        params,
        5,
        stop_in_epoch_3,
        on_epoch_end=states.append,
        keep_start=True,
        lr=LR,
    )
    assert [s["epoch"] for s in states] == [1, 2]  # epoch 0 is not a training state of its own
    resumed = fit(build_head(8, 4, 0.3), train, val, params, seed=5, resume=states[-1], keep_start=True, lr=LR)
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2, 3, 4]
    assert resumed.history == full.history and resumed.best_epoch == full.best_epoch


def test_train_stage_starts_the_head_from_the_probe(tmp_path, repo, monkeypatch) -> None:
    import csv
    import json

    import numpy as np
    import yaml

    import abcd.stages.train
    from abcd.models.checkpoint import load_checkpoint
    from abcd.stages.train import main
    from abcd.training.probe import fit_probe

    args = _features_dir(tmp_path, repo, monkeypatch)
    started: dict[str, torch.Tensor] = {}
    real_init_head = abcd.stages.train.init_head

    def init_head_and_record(linear, train, val, params):
        info = real_init_head(linear, train, val, params)
        started.update(weight=linear.weight.detach().clone(), bias=linear.bias.detach().clone(), train=train[0])
        return info

    monkeypatch.setattr(abcd.stages.train, "init_head", init_head_and_record)
    assert main(args) == 0
    metrics = json.loads((tmp_path / "train_report.json").read_text())
    # The DVC metric holds the deciding two only.
    assert json.loads((tmp_path / "train.json").read_text()) == {
        "best_epoch": metrics["best_epoch"],
        "val": {"loss": metrics["val"]["loss"]},
    }
    grid = yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["probe_c"]
    assert len(grid) > 1 and metrics["init"] == "probe" and metrics["probe_c"] in grid
    features = tmp_path / "features"
    train = tuple(torch.from_numpy(np.load(features / f"train/{a}.npy")) for a in ("eval_features", "labels"))
    val = tuple(torch.from_numpy(np.load(features / f"val/{a}.npy")) for a in ("features", "labels"))
    probe = fit_probe(train, val, 4, grid)  # the whole grid: the stage's choice of C is checked too
    assert probe.c == metrics["probe_c"] and metrics["probe_val_loss"] == pytest.approx(probe.val_loss)
    # Whatever the best epoch: the head started from the probe fitted on the train images' eval view...
    assert torch.equal(started["train"], train[0])
    assert torch.allclose(started["weight"], probe.weight.float(), atol=1e-6)
    assert torch.allclose(started["bias"], probe.bias.float(), atol=1e-6)
    # ...and epoch 0 of the history is that start, validated before any step.
    with (tmp_path / "history.csv").open() as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3] and float(history[0]["lr"]) == 0.0
    assert float(history[0]["val_loss"]) == pytest.approx(probe.val_loss, rel=1e-5)
    loaded = load_checkpoint(tmp_path / "model.pt", lazy=True)
    assert loaded.extra["init"] == "probe" and loaded.extra["probe_c"] == metrics["probe_c"]
    # The checkpoint holds the best epoch: the probe itself when epoch 0 won, trained weights otherwise.
    best_is_start = torch.allclose(loaded.head[1].weight, probe.weight.float(), atol=1e-6)
    assert best_is_start == (metrics["best_epoch"] == 0)
    assert metrics["val"]["loss"] == pytest.approx(float(history[metrics["best_epoch"]]["val_loss"]))
    assert metrics["val"]["loss"] <= probe.val_loss + 1e-6


def test_train_stage_with_features_from_an_older_featurize_says_to_rerun_it(tmp_path, repo, monkeypatch) -> None:
    from abcd.stages.train import main

    args = _features_dir(tmp_path, repo, monkeypatch)
    (tmp_path / "features" / "train" / "eval_features.npy").unlink()
    with pytest.raises(ValueError, match=r"train: no eval_features .*run dvc repro featurize"):
        main(args)
