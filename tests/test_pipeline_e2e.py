"""The real pipeline, end to end: `dvc repro`, an lr experiment, metrics diff, plots, predict, the artifact.

One run (conftest's ``reproduced``: a copy of the repo on a few real photos per class, 2 epochs) serves every
test here; the lr experiments change their project, so they run in a copy of it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from abcd.oodset.photos import PHOTOS
from tests.conftest import CLASSES
from tests.ood_routes import deb_route
from tests.pipeline_utils import copy_project, run

pytestmark = pytest.mark.slow


STAGES = ("validate", "prepare", "featurize", "train", "onnx_backbone", "export", "quantize", "test", "evaluate")
OOD_STAGES = ("ood_data", "ood_featurize", "ood_test", "ood_evaluate", "ood_onnx_features", "int8_gates")


def test_repro_runs_every_stage_and_writes_parseable_outputs(reproduced) -> None:
    repo, env, out = reproduced
    for stage in (*STAGES, *OOD_STAGES, "report"):
        assert f"Running stage '{stage}'" in out
    data = json.loads((repo / "reports/data.json").read_text())["totals"]
    assert data == {"found": 24, "kept": 24, "skipped": 0, "train": 16, "val": 4, "test": 4}
    assert not (repo / "metrics/data.json").exists()  # image counts are not a DVC metric

    with (repo / "data/predictions/test.csv").open() as f:
        rows = list(csv.DictReader(f))
    methods = ("max_softmax", "energy", "knn", "mahalanobis_pp", "vim", "fusion")
    scores = [f"score_{m}" for m in methods]
    assert list(rows[0]) == ["image", "label", "prediction", *(f"prob_{c}" for c in CLASSES), *scores]
    assert len(rows) == 4 and {r["label"] for r in rows} == set(CLASSES)
    detectors = json.loads((repo / "data/predictions/detectors.json").read_text())
    assert set(detectors["thresholds"]) == set(methods)

    # The metrics files DVC compares hold the deciding numbers only; the full reports are beside them.
    report = json.loads((repo / "reports/test.json").read_text())["test"]
    for key in ("accuracy", "f1_macro", "f1_micro", "log_loss", "brier", "ece", "ci95", "roc_auc_macro"):
        assert key in report
    assert set(report["per_class"]) == set(CLASSES)
    ci = report["ci95"]
    deciding = {
        **{k: report[k] for k in ("f1_macro", "log_loss", "accuracy", "roc_auc_macro", "ece")},
        **{f"{k}_{end}": ci[k][end] for k in ("f1_macro", "log_loss") for end in ("low", "high")},
    }
    assert json.loads((repo / "metrics/test.json").read_text()) == {"test": deciding}
    train_report = json.loads((repo / "reports/train.json").read_text())
    assert "f1_macro" in train_report["val"] and "probe_c" in train_report
    assert json.loads((repo / "metrics/train.json").read_text()) == {
        "best_epoch": train_report["best_epoch"],
        "val": {"loss": train_report["val"]["loss"]},
    }
    _check_pngs_history_and_model(repo, rows)
    report = (repo / "reports/report.md").read_text()
    assert "| macro F1 |" in report and "![ROC curves](../plots/test/roc.png)" in report
    assert any((repo / "runs/train").glob("events.out.tfevents.*"))

    status = run(["dvc", "status", "--json"], repo, env)
    assert json.loads(status.strip().splitlines()[-1]) == {}


def test_unknown_metrics_agree_with_the_predictions(reproduced) -> None:
    """reports/unknown.json agrees with AUROC and rejection rates recomputed from the predictions CSVs;
    metrics/unknown.json holds the rates of the detector predict uses (unknown.method) only."""
    from sklearn.metrics import roc_auc_score

    deb_route()  # the OOD branch ran (ood.evaluate auto): the project's routes are this machine's
    repo, _, _ = reproduced
    assert json.loads((repo / "reports/ood_data.json").read_text())["route"] in ("mirror", "system")
    with (repo / "data/predictions/test.csv").open() as f:
        known = list(csv.DictReader(f))
    with (repo / "data/ood_predictions/ood.csv").open() as f:
        ood = list(csv.DictReader(f))
    assert len(ood) == len(PHOTOS) and {r["label"] for r in ood} == {""}  # ood.crops off: one image a photo
    detectors = json.loads((repo / "data/predictions/detectors.json").read_text())
    unknown = json.loads((repo / "reports/unknown.json").read_text())
    method = yaml.safe_load((repo / "params.yaml").read_text())["unknown"]["method"]
    chosen = {k: unknown["methods"][method][k] for k in ("ood_photos_rejected", "ood_rejected", "known_rejected")}
    assert json.loads((repo / "metrics/unknown.json").read_text()) == {"unknown": chosen}
    assert set(unknown["methods"]) == {"original_rule_uncalibrated", "original_rule", *detectors["thresholds"]}
    # The metrics are the report half's (no crops here: one image per photo); the selection half's beside them.
    with (repo / "data/ood/manifest.csv").open() as f:
        halves = [r["half"] for r in csv.DictReader(f)]
    assert len(halves) == len(ood)
    ood = [r for r, h in zip(ood, halves) if h == "report"]
    assert (unknown["n_known_test"], unknown["n_ood_images"], unknown["n_ood_photos"]) == (4, 45, 45)
    assert unknown["selection"]["n_ood_photos"] == halves.count("selection") == 46
    # train.calibrate is false: T = 1, so the original rule's calibrated and raw scores are the same.
    assert unknown["temperature"] == detectors["temperature"] == 1.0
    rule = 1.0 - yaml.safe_load((repo / "params.yaml").read_text())["predict"]["threshold"]
    thresholds = {**detectors["thresholds"], "original_rule": rule, "original_rule_uncalibrated": rule}
    is_ood = [0] * len(known) + [1] * len(ood)
    for name, threshold in thresholds.items():
        if name.startswith("original_rule"):
            scores = [1.0 - max(float(r[f"prob_{c}"]) for c in CLASSES) for r in known + ood]
        else:
            scores = [float(r[f"score_{name}"]) for r in known + ood]
        m = unknown["methods"][name]
        assert m["auroc"] == pytest.approx(roc_auc_score(is_ood, scores)), name
        assert m["threshold"] == pytest.approx(threshold), name
        assert m["known_rejected"] == pytest.approx(sum(s > threshold for s in scores[: len(known)]) / len(known))
        rejected = sum(s > threshold for s in scores[len(known) :]) / len(ood)
        assert m["ood_rejected"] == m["ood_photos_rejected"] == pytest.approx(rejected), name  # no crops here


def _check_pngs_history_and_model(repo: Path, rows: list) -> None:
    """The PNGs decode to their figure's size (inches x dpi 110) and are not blank; the history has each
    epoch; model.pt loads for these classes and its head gives the test CSV's probabilities."""
    from PIL import Image

    from abcd.models.checkpoint import load_checkpoint

    for png, size in (("confusion", (572, 505)), ("roc", (605, 550))):
        with Image.open(repo / f"plots/test/{png}.png") as img:
            img.load()
            assert (img.format, img.size) == ("PNG", size), png
            low, high = img.convert("L").getextrema()
            assert low < high, f"{png}.png is a single colour"

    train = json.loads((repo / "reports/train.json").read_text())
    with (repo / "plots/train_history.csv").open() as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]  # the probe start, then 2 epochs
    best = history[train["best_epoch"]]
    assert float(best["val_loss"]) == pytest.approx(train["val"]["loss"])

    loaded = load_checkpoint(repo / "models/model.pt", expected_classes=CLASSES)  # builds the backbone, strict
    assert loaded.classes == CLASSES and loaded.backbone == "efficientnet_lite2"
    from abcd.features.store import read_paths

    feats, paths = np.load(repo / "data/features/test/features.npy"), read_paths(repo / "data/features", "test")
    assert sorted(paths) == sorted(r["image"] for r in rows)
    with torch.inference_mode():
        probs = torch.softmax(loaded.model.eval().head(torch.from_numpy(feats).float()), dim=1).numpy()
    by_image = {r["image"]: r for r in rows}
    for path, p in zip(paths, probs):
        expected = [float(by_image[path][f"prob_{c}"]) for c in CLASSES]
        np.testing.assert_allclose(p, expected, atol=1e-5, err_msg=path)


def test_forced_repro_is_byte_identical(reproduced) -> None:
    """train.deterministic (default true): re-running every stage gives the same bytes."""
    repo, env, _ = reproduced
    files = [
        "data/predictions/test.csv",
        "metrics/test.json",
        "metrics/train.json",
        "models/model.pt",
        "models/model.onnx",
        "data/ood_predictions/ood.csv",
        "metrics/unknown.json",
        "models/model.int8.onnx",
    ]
    before = {f: (repo / f).read_bytes() for f in files}
    run(["dvc", "repro", "--force"], repo, env)
    for f in files:
        assert (repo / f).read_bytes() == before[f], f
    assert json.loads(run(["dvc", "status", "--json"], repo, env, stdout_only=True)) == {}


def test_editing_the_ood_catalogue_touches_only_the_ood_branch(reproduced) -> None:
    repo, env, _ = reproduced
    catalogue = repo / "src/abcd/oodset/photos.py"
    original = catalogue.read_bytes()
    catalogue.write_bytes(original + b"# an edit\n")
    try:
        status = json.loads(run(["dvc", "status", "--json"], repo, env, stdout_only=True))
    finally:
        catalogue.write_bytes(original)
    assert set(status) == {"ood_data", "ood_evaluate"}, status  # report follows only if their outputs change


def test_without_a_route_the_ood_branch_says_not_evaluated_and_the_classifier_stands(reproduced) -> None:
    """ood.evaluate auto, both routes gone: the OOD branch re-runs and says why; no classifier stage re-runs,
    its metrics stay, and the report and the plots render. Then the routes come back."""
    deb_route()
    repo, env, _ = reproduced
    sources = repo / "data/ood_sources.yaml"
    original = sources.read_bytes()
    test_metrics = (repo / "metrics/test.json").read_bytes()
    sources.write_text(yaml.safe_dump({"routes": {"mirror": str(repo / "absent"), "system": str(repo / "absent")}}))
    try:
        out = run(["dvc", "repro"], repo, env)
        for stage in (*OOD_STAGES, "report"):
            assert f"Running stage '{stage}'" in out, stage
        for stage in STAGES:
            assert f"Running stage '{stage}'" not in out, stage
        assert "ood_data: not evaluated: no route to the OOD set's Debian photos (ood.use=auto)" in out
        reason = json.loads((repo / "reports/ood_data.json").read_text())["reason"]
        assert json.loads((repo / "metrics/unknown.json").read_text()) == {
            "unknown": {"evaluated": False, "reason": reason}
        }
        assert json.loads((repo / "reports/unknown.json").read_text()) == {"evaluated": False, "reason": reason}
        int8 = json.loads((repo / "metrics/int8.json").read_text())["int8"]
        assert int8["passed"] is None and int8["ood"] == {"evaluated": False, "reason": reason}
        assert "ood_agreement" not in int8 and 0 <= int8["test_agreement"] <= 1
        assert (repo / "metrics/test.json").read_bytes() == test_metrics
        assert f"## Unknown detection\n\nNot evaluated: {reason}." in (repo / "reports/report.md").read_text()
        (shown,) = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env, stdout_only=True)).values()
        assert shown["data"]["metrics/unknown.json"]["data"]["unknown"]["evaluated"] is False  # a column, not an error
        run(["dvc", "plots", "show", "-o", "plots_off"], repo, env)
        assert json.loads(run(["dvc", "status", "--json"], repo, env, stdout_only=True)) == {}
    finally:
        sources.write_bytes(original)
        run(["dvc", "repro"], repo, env)  # the OOD outputs back, from DVC's run cache
    assert json.loads((repo / "reports/ood_data.json").read_text())["evaluated"] is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=-1", "validate: error: params: 'lr' must be a number > 0"),
        # DVC refuses a key params.yaml lacks unless written +key; written so, the stage names where lr lives.
        ("+train.lr=0.001", "params: 'train.lr' is the top-level 'lr' (dvc exp run -S lr=0.001)"),
        (
            "model.backbone=resnet9",
            "validate: error: params: 'model.backbone': unknown backbone 'resnet9'; choose one of",
        ),
        ("+train.optimiser=adam", "unknown key 'train.optimiser' (did you mean 'optimizer'?)"),
    ],
)
def test_bad_values_through_dvc_exp_run_fail_with_the_rule(reproduced, override: str, message: str) -> None:
    repo, env, _ = reproduced
    params_before = (repo / "params.yaml").read_bytes()
    proc = subprocess.run(
        ["dvc", "exp", "run", "--temp", "-S", override], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (repo / "params.yaml").read_bytes() == params_before  # a temp run leaves the workspace alone


def _outputs(repo: Path) -> dict[str, bytes]:
    """Every file the pipeline wrote (DVC outs, metrics, plots, reports), by path."""
    folders = (
        "data/prepared",
        "data/features",
        "data/ood",
        "data/ood_features",
        "data/ood_predictions",
        "data/predictions",
        "models",
        "metrics",
        "reports",
        "plots",
    )
    return {
        str(f.relative_to(repo)): f.read_bytes() for d in folders for f in sorted((repo / d).rglob("*")) if f.is_file()
    }


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", "sixty", "'train.epochs'"),
        ("prepare", "max_pixels", "lots", "'prepare.max_pixels'"),
        (None, "Lr", 0.5, "unknown key 'Lr' (did you mean 'lr'?)"),
    ],
)
def test_a_bad_param_fails_before_any_output_is_removed(
    reproduced, tmp_path: Path, section: str | None, key: str, value: object, message: str
) -> None:
    """The validate stage runs first: DVC removes no stage's outputs, and restoring the param restores the status."""
    repo = copy_project(reproduced[0], tmp_path / "repo")
    env = reproduced[1]
    status_before = run(["dvc", "status", "--json"], repo, env, stdout_only=True)
    outputs = _outputs(repo)
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    (params[section] if section else params)[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "validate: error: params: " in proc.stderr + proc.stdout
    assert message in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert _outputs(repo) == outputs
    (repo / "params.yaml").write_text(original)
    assert run(["dvc", "status", "--json"], repo, env, stdout_only=True) == status_before


def test_tensorboard_logs_have_scalars_and_images(reproduced) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    repo, env, _ = reproduced
    acc = EventAccumulator(str(repo / "runs/train"), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/val")] == [0, 1, 2]  # the probe start (epoch 0), then each epoch
    assert {"val/predictions", "val/confusion"} <= set(tags["images"])
    grid = acc.Images("val/predictions")[0]
    assert grid.width > 4 * 192 and grid.height > 192  # labelled thumbnails, 4 per row (4 val images here)
    # The `tensorboard` command itself starts (it needs pkg_resources from setuptools < 81).
    from tensorboard.version import VERSION

    out = run([str(Path(sys.executable).parent / "tensorboard"), "--version_tb"], repo, env, stdout_only=True)
    assert out.strip() == VERSION


def _metrics_of(shown: list, name: str) -> dict:
    for commit in shown:
        for exp in commit.get("experiments") or []:
            if exp.get("name") == name:
                rev = exp["revs"][0]["data"]
                return {path: d["data"] for path, d in rev["metrics"].items()}
    raise AssertionError(f"experiment {name!r} not in dvc exp show: {json.dumps(shown)[:2000]}")


def test_lr_experiments_rerun_only_what_depends_on_lr_and_compare(reproduced, tmp_path: Path) -> None:
    shared, env, _ = reproduced
    repo = copy_project(shared, tmp_path / "repo")
    # The literal command: `lr` is a top-level param. A random start (set in params.yaml, committed, so
    # that the command below is exactly `-S lr=...`): from the probe start, 2 epochs at either lr may
    # both leave epoch 0 the best.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["init"] = "random"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], repo, env)
    run(["git", "commit", "-qam", "random init"], repo, env)
    outs = {}
    for name, lr in (("lr-low", "0.001"), ("lr-high", "0.5")):
        outs[name] = run(["dvc", "exp", "run", "-n", name, "-S", f"lr={lr}"], repo, env)
    for out in outs.values():
        # Not the backbone's passes: neither featurize's nor the OOD branch's own (ood_featurize), nor the
        # ONNX backbone's (its parts and their features, which export, quantize and int8_gates take as stored).
        for stage in ("prepare", "featurize", "ood_data", "ood_featurize", "onnx_backbone", "ood_onnx_features"):
            assert f"Stage '{stage}' didn't change, skipping" in out
            assert f"Running stage '{stage}'" not in out
        for stage in ("train", "export", "quantize", "test", "evaluate", "ood_test", "ood_evaluate", "int8_gates"):
            assert f"Running stage '{stage}'" in out
        assert "Running stage 'report'" in out
        assert "export: backbone part: stored in data/onnx_backbone" in out
        assert "quantize: int8 backbone: stored in data/onnx_backbone" in out
        for route in ("fp32 test", "int8 test", "fp32 ood", "int8 ood"):
            assert f"int8_gates: {route} features: cached in data/" in out, route

    # The workspace now holds lr-high: metrics diff against HEAD shows the change, in a short table:
    # the deciding numbers only (data counts do not change with lr).
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo, env).strip().splitlines()[-1])
    changed = {(path, key) for path, metrics in diff.items() for key, d in metrics.items() if d.get("diff")}
    assert ("metrics/train.json", "val.loss") in changed
    rows = run(["dvc", "metrics", "diff", "--md"], repo, env, stdout_only=True).strip().splitlines()[2:]
    assert 1 <= len(rows) <= 15, rows
    assert not any("per_class" in r or "threshold" in r or "methods." in r for r in rows), rows

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env, stdout_only=True))
    low, high = _metrics_of(shown, "lr-low"), _metrics_of(shown, "lr-high")
    assert low["metrics/train.json"]["val"]["loss"] != high["metrics/train.json"]["val"]["loss"]
    assert "f1_macro" in low["metrics/test.json"]["test"] and "f1_macro" in high["metrics/test.json"]["test"]

    exp_diff = run(["dvc", "exp", "diff", "lr-low", "lr-high", "--json"], repo, env, stdout_only=True)
    lr_change = json.loads(exp_diff)["params"]["params.yaml"]["lr"]
    assert (lr_change["old"], lr_change["new"]) == (0.001, 0.5)
    table = run(["dvc", "exp", "show", "--sort-by", "val.loss", "--sort-order", "asc", "--csv"], repo, env)
    assert "lr-low" in table and "lr-high" in table
    header = next(csv.reader([table.splitlines()[0]]))
    assert not any("per_class" in c or "methods." in c for c in header), header  # reports' numbers stay out
    # The deciding numbers: best epoch and val loss, test 9, the chosen detector's 3 (no image counts), the int8
    # model's verdict, F1 change and agreement on test and OOD.
    assert len([leaf for metrics in low.values() for leaf in _leaves(metrics)]) == 18, low

    run(["dvc", "plots", "diff", "lr-low", "lr-high", "-o", "plots_diff"], repo, env)
    page = (repo / "plots_diff" / "index.html").read_text()
    assert "lr-low" in page and "lr-high" in page and "cdn.jsdelivr" not in page

    run(["dvc", "exp", "apply", "lr-low"], repo, env)
    assert yaml.safe_load((repo / "params.yaml").read_text())["lr"] == 0.001


def _leaves(d: dict, prefix: str = "") -> list[str]:
    return [
        k for key, v in d.items() for k in (_leaves(v, f"{prefix}{key}.") if isinstance(v, dict) else [prefix + key])
    ]


def _stop_queue_workers(repo: Path) -> None:
    """Kill DVC queue workers started in ``repo`` (they are detached from the test)."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "dvc" in cmdline and ("queue-worker" in cmdline or "--run-all" in cmdline):
            with contextlib.suppress(psutil.Error):
                if Path(proc.info["cwd"] or "/").resolve().is_relative_to(repo.resolve()):
                    proc.kill()


def test_queued_grid_search_runs_in_temp_workspaces(reproduced) -> None:
    """Queued experiments run in copies under .dvc/tmp/exps/; cached stages still skip there."""
    repo, env, _ = reproduced
    sweep = ["-S", "lr=0.01,0.1", "-S", "train.epochs=1,2", "-S", "train.init=random"]  # random: see above
    run(["dvc", "exp", "run", "--queue", *sweep], repo, env)
    # Workers are daemons that keep inherited pipes open: give them no pipes, then poll.
    subprocess.run(
        ["dvc", "queue", "start", "-j", "2"],
        cwd=repo,
        env=env,
        check=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = run(["dvc", "queue", "status"], repo, env, stdout_only=True)
            finished = sum(word in ("Success", "Failed") for line in status.splitlines() for word in line.split())
            if finished >= 4:
                break
            time.sleep(2)
        assert "Failed" not in status, status
    finally:
        _stop_queue_workers(repo)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env, stdout_only=True))
    runs = [
        exp["revs"][0]
        for commit in shown
        for exp in commit.get("experiments") or []
        if exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["lr"] in (0.01, 0.1)
    ]
    assert len(runs) == 4, json.dumps(shown)[:3000]
    grid = set()
    for rev in runs:
        assert not rev.get("error"), rev["error"]
        params = rev["data"]["params"]["params.yaml"]["data"]
        grid.add((params["lr"], params["train"]["epochs"]))
        assert "test" in rev["data"]["metrics"]["metrics/test.json"]["data"]
    assert grid == {(0.01, 1), (0.01, 2), (0.1, 1), (0.1, 2)}
    # Run two at a time, each in its own workspace: every result belongs to its own params.
    # (With 1 or 2 epochs and the same lr, epoch 1 is identical, so only lr must change the result.)
    by_lr: dict[float, set[float]] = {}
    for rev in runs:
        params = rev["data"]["params"]["params.yaml"]["data"]
        metrics = rev["data"]["metrics"]["metrics/train.json"]["data"]
        assert 1 <= metrics["best_epoch"] <= params["train"]["epochs"]
        by_lr.setdefault(params["lr"], set()).add(round(metrics["val"]["loss"], 6))
    assert not by_lr[0.01] & by_lr[0.1]
    # `make exps`, the readable view (`-o install`: the venv is this one): the deciding numbers and the
    # knobs that differ between these experiments, no dependency hashes, every experiment a row.
    table = run(["make", "-s", "-o", "install", "exps", "ARGS=--csv"], repo, env, stdout_only=True)
    header, *rows = list(csv.reader(io.StringIO(table)))
    deciding = ["test.f1_macro", "test.log_loss", "unknown.ood_photos_rejected", "unknown.known_rejected", "lr"]
    assert {*deciding, "train.epochs"} <= set(header), header
    assert not [c for c in header if c.startswith(("src/", "data/", "models/", "seed", "classes"))], header
    assert len(header) <= 40 and len(rows) >= 5, table


def _y_fields(spec: dict) -> dict[str, list[str]]:
    return {path: [fields] if isinstance(fields, str) else fields for path, fields in spec["y"].items()}


def _csv_points(repo: Path, spec: dict) -> Counter:
    """(x, y) of every row of a dvc.yaml plot's CSVs, once per y field, as the CSV text has them."""
    points: Counter = Counter()
    for path, fields in _y_fields(spec).items():
        with (repo / path).open() as f:
            rows = list(csv.DictReader(f))
        assert rows, f"{path} has no rows"
        points.update((row[spec["x"]], row[field]) for row in rows for field in fields)
    return points


def _xy(points: list[dict], spec: dict) -> list[tuple[str, str]]:
    """(x, y) of the data points DVC put in a Vega spec (the y column of a multi-field plot is inferred)."""
    fields = {field for fields in _y_fields(spec).values() for field in fields}
    if len(fields) > 1:
        return [(p[spec["x"]], p["dvc_inferred_y_value"]) for p in points]
    (field,) = fields
    return [(p[spec["x"]], p[field]) for p in points]


def test_plots_render_offline(reproduced) -> None:
    repo, env, _ = reproduced
    rendered = json.loads(run(["dvc", "plots", "show", "--json"], repo, env, stdout_only=True))["data"]
    plots = {
        k: v
        for item in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
        if isinstance(item, dict)
        for k, v in item.items()
    }
    for plot_id in (
        "Confusion matrix (test)",
        "Confusion matrix, normalised (test)",
        "ROC curves, one vs rest (test)",
        "Precision-recall curves, one vs rest (test)",
        "Calibration curve (test)",
        "Training curves, loss",
        "Risk-coverage, test + OOD (accepted OOD image = error)",
    ):
        assert rendered[plot_id][0]["type"] == "vega"
        # The Vega spec carries the data points: exactly the rows of the plot's CSVs, one per y field.
        points = rendered[plot_id][0]["content"]["data"]["values"]
        assert Counter(_xy(points, plots[plot_id])) == _csv_points(repo, plots[plot_id]), plot_id
    confusion = rendered["Confusion matrix (test)"][0]["content"]["data"]["values"]
    assert sorted(p["actual"] for p in confusion) == CLASSES  # the 4 test images, one per class
    roc = rendered["ROC curves, one vs rest (test)"][0]["content"]["data"]["values"]
    assert {p["filename"] for p in roc} == {f"{c}.csv" for c in CLASSES}
    for png in ("confusion", "roc", "pr", "calibration", "worst_mistakes"):
        assert rendered[f"plots/test/{png}.png"][0]["type"] == "image"
    run(["dvc", "plots", "show", "-o", "plots_html"], repo, env)
    page = (repo / "plots_html" / "index.html").read_text()
    assert "vegaEmbed(" in page and "cdn.jsdelivr" not in page  # scripts inlined by the template


def test_predict_command_uses_the_trained_checkpoint(reproduced) -> None:
    """predict on the test split's cat photo gives what the test stage wrote for it from the cached features."""
    repo, env, _ = reproduced
    with (repo / "data/predictions/test.csv").open() as f:
        (expected,) = [r for r in csv.DictReader(f) if r["label"] == "cats"]
    method = yaml.safe_load((repo / "params.yaml").read_text())["unknown"]["method"]
    threshold = json.loads((repo / "data/predictions/detectors.json").read_text())["thresholds"][method]
    image = repo / expected["image"]
    cmd = [sys.executable, "-m", "abcd.serving.predict", str(image), "--format", "csv", "--runtime", "torch"]
    out = run(cmd, repo, env, stdout_only=True)
    (row,) = csv.DictReader(out.strip().splitlines())
    assert row["path"] == str(image) and row["error"] == ""
    probs = [float(row[f"prob_{c}"]) for c in CLASSES]
    np.testing.assert_allclose(probs, [float(expected[f"prob_{c}"]) for c in CLASSES], atol=1e-4)
    assert float(row["probability"]) == pytest.approx(max(probs), abs=1e-6)
    # The score is the test stage's for unknown.method (fusion by default), judged at its threshold.
    assert float(row["unknown_score"]) == pytest.approx(float(expected[f"score_{method}"]), rel=1e-4, abs=1e-4)
    known = float(expected[f"score_{method}"]) <= threshold
    assert row["prediction"] == (expected["prediction"] if known else "unknown")


def test_onnx_export_matches_torch_fp32_on_the_test_split_and_ood_set(reproduced, monkeypatch) -> None:
    """The exported model against the checkpoint in fp32: probabilities, classes and every unknown decision."""
    from abcd.data.images import load_rgb
    from abcd.data.ood_manifest import read_ood_manifest
    from abcd.serving.onnx_model import OnnxClassifier, file_sha256
    from tests.test_export import METHODS, torch_fp32

    repo, env, _ = reproduced
    monkeypatch.chdir(repo)  # the OOD manifest's paths are relative to the project's root, as for its stages
    with (repo / "data/prepared/test.csv").open() as f:
        paths = [repo / r["path"] for r in csv.DictReader(f)]
    paths += [repo / p for p in read_ood_manifest(repo / "data/ood/manifest.csv")[0]]
    images = [load_rgb(p) for p in paths]
    probs, scores = torch_fp32(repo / "models/model.pt", images)
    model = OnnxClassifier(repo / "models/model.onnx")
    default = yaml.safe_load((repo / "params.yaml").read_text())["unknown"]["method"]
    assert model.exported_from(repo / "models/model.pt") and model.meta["method"] == default == "fusion"
    batch = np.stack([model.preprocess(im) for im in images])
    for method in METHODS:
        onnx_probs, onnx_scores = model.run(batch, method)
        assert np.abs(onnx_probs - probs).max() <= 1e-4
        assert (onnx_probs.argmax(1) == probs.argmax(1)).all()
        threshold = model.detector(method).threshold
        assert ((onnx_scores > threshold) == (scores[method] > threshold)).all(), method

    # predict's default runtime is the int8 export (made from models/model.pt): its answer.
    out = run(
        [sys.executable, "-m", "abcd.serving.predict", str(paths[0]), "--format", "json"], repo, env, stdout_only=True
    )
    (row,) = json.loads(out)["results"]
    int8 = OnnxClassifier(repo / "models/model.int8.onnx")
    assert int8.meta["quantization"]["fp32"]["sha256"] == file_sha256(repo / "models/model.onnx")
    int8_probs, _ = int8.run(batch[:1], default)
    assert [row["probabilities"][c] for c in CLASSES] == pytest.approx(list(int8_probs[0]), abs=1e-5)


def test_model_artifact_from_a_local_clone_predicts_on_its_own(reproduced, tmp_path: Path) -> None:
    """`dvc artifacts get` fetches model.pt (dvc.yaml's `artifacts:`) from a local clone, offline; that
    file alone, in an empty directory without params.yaml, predicts what the test stage wrote."""
    repo, env, _ = reproduced
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    # The clone has the git history but no DVC cache of its own: point it at the repo's cache, offline.
    run(["dvc", "cache", "dir", "--local", str(repo / ".dvc" / "cache")], clone, env)
    # A GTO version tag (annotated, as `gto register` writes it): what `dvc artifacts get` resolves.
    run(
        ["git", "tag", "-a", "abcd-classifier@v0.1.0", "-m", "Registering artifact abcd-classifier version v0.1.0"],
        clone,
        env,
    )
    shown = yaml.safe_load((clone / "dvc.yaml").read_text())["artifacts"]["abcd-classifier"]
    assert shown["type"] == "model" and shown["path"] == "models/model.pt" and shown["labels"]
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    run(["dvc", "artifacts", "get", str(clone), "abcd-classifier", "-o", "model.pt"], empty, env)
    assert sorted(p.name for p in empty.iterdir()) == ["model.pt"]
    committed = run(["git", "show", "HEAD:dvc.lock"], clone, env, stdout_only=True)
    model_md5 = next(
        o["md5"] for o in yaml.safe_load(committed)["stages"]["train"]["outs"] if o["path"] == "models/model.pt"
    )
    assert hashlib.md5((empty / "model.pt").read_bytes()).hexdigest() == model_md5

    with (repo / "data/predictions/test.csv").open() as f:
        dog = next(r for r in csv.DictReader(f) if r["label"] == "dogs")
    image = empty / "photo.jpg"
    image.write_bytes((repo / dog["image"]).read_bytes())
    # `python -m abcd.serving.predict` with only the code on PYTHONPATH: no params.yaml, nothing else of the repo.
    argv = [
        sys.executable,
        "-m",
        "abcd.serving.predict",
        str(image),
        "--checkpoint",
        str(empty / "model.pt"),
        "--format",
        "json",
    ]
    alone = json.loads(run(argv, empty, {**env, "PYTHONPATH": str(repo)}, stdout_only=True))
    assert sorted(p.name for p in empty.iterdir()) == ["model.pt", "photo.jpg"]
    stored = torch.load(empty / "model.pt", weights_only=True)["extra"]
    assert alone["method"] == stored["predict"]["method"] == "fusion"  # unknown.method, stored by train
    assert alone["threshold"] == pytest.approx(stored["unknown"]["fusion"]["threshold"])
    # The same file inside the repo (params.yaml sets the same defaults there) gives the same answer.
    in_repo = json.loads(run(argv, repo, env, stdout_only=True))
    assert (alone["method"], alone["threshold"]) == (in_repo["method"], in_repo["threshold"])
    (a,), (b,) = alone["results"], in_repo["results"]
    assert a["prediction"] == b["prediction"] and a["prediction"] in [*CLASSES, "unknown"]
    np.testing.assert_allclose([a["probabilities"][c] for c in CLASSES], [b["probabilities"][c] for c in CLASSES])
