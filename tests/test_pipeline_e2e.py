"""The real pipeline, end to end: `dvc repro`, an lr experiment, metrics diff, plots, predict.

Runs in a copy of the repo on a few real photos per class, with 2 epochs.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLASSES

pytestmark = pytest.mark.slow
PER_CLASS = 6


def _run(cmd: list[str], cwd: Path, env: dict[str, str], stdout_only: bool = False) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, shared_photos_module: Path) -> tuple[Path, dict[str, str]]:
    """A git+DVC copy of this repo whose params point at a small sample of the real photos."""
    root = tmp_path_factory.mktemp("e2e")
    source = root / "photos"
    rng = random.Random(0)
    for label in CLASSES:
        files = sorted((shared_photos_module / label).iterdir())
        for f in rng.sample(files, PER_CLASS):
            (source / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, source / label / f.name)

    repo_src = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo_src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    repo = root / "repo"
    for rel in filter(None, listed):
        if (repo_src / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_src / rel, repo / rel)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["source"] = str(source)
    params["featurize"].update(views=2, batch_size=16)
    params["train"].update(epochs=2, batch_size=8)
    params["runtime"]["num_workers"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    }
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "copy"], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def shared_photos_module() -> Path:
    from tests.conftest import SHARED_PHOTOS

    if not SHARED_PHOTOS.is_dir():
        pytest.skip(f"real photos not found at {SHARED_PHOTOS}")
    return SHARED_PHOTOS


@pytest.fixture(scope="module")
def reproduced(project: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str], str]:
    repo, env = project
    out = _run(["dvc", "repro"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "baseline"], repo, env)
    return repo, env, out


def test_repro_runs_every_stage_and_writes_parseable_outputs(reproduced) -> None:
    repo, env, out = reproduced
    for stage in ("prepare", "featurize", "train", "test", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out

    data = json.loads((repo / "metrics/data.json").read_text())["data"]
    assert data == {"kept": 24, "skipped": 0, "train": 16, "val": 4, "test": 4}

    with (repo / "data/predictions/test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "label", "prediction", *(f"prob_{c}" for c in CLASSES)]
    assert len(rows) == 4 and {r["label"] for r in rows} == set(CLASSES)

    metrics = json.loads((repo / "metrics/test.json").read_text())["test"]
    for key in ("accuracy", "f1_macro", "f1_micro", "log_loss", "brier", "ece", "ci95", "roc_auc_macro"):
        assert key in metrics
    assert set(metrics["per_class"]) == set(CLASSES)
    assert "f1_macro" in json.loads((repo / "metrics/train.json").read_text())["val"]
    for f in ("plots/test/confusion.png", "plots/test/roc.png", "plots/train_history.csv", "models/model.pt"):
        assert (repo / f).stat().st_size > 0
    report = (repo / "reports/report.md").read_text()
    assert "| macro F1 |" in report and "![ROC curves](../plots/test/roc.png)" in report
    assert any((repo / "runs/train").glob("events.out.tfevents.*"))

    status = _run(["dvc", "status", "--json"], repo, env)
    assert json.loads(status.strip().splitlines()[-1]) == {}


def test_tensorboard_logs_have_scalars_and_images(reproduced) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    repo, env, _ = reproduced
    acc = EventAccumulator(str(repo / "runs/train"), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"} <= set(tags["scalars"])
    assert len(acc.Scalars("loss/val")) == 2  # one point per epoch
    assert {"val/predictions", "val/samples"} <= set(tags["images"])
    # The `tensorboard` command itself starts (it needs pkg_resources from setuptools < 81).
    out = _run([str(Path(sys.executable).parent / "tensorboard"), "--version_tb"], repo, env, stdout_only=True)
    assert out.strip()


def test_lr_experiment_reruns_only_what_depends_on_lr(reproduced) -> None:
    repo, env, _ = reproduced
    out = _run(["dvc", "exp", "run", "-n", "lr-high", "-S", "train.lr=0.5"], repo, env)
    for stage in ("prepare", "featurize"):
        assert f"Stage '{stage}' didn't change, skipping" in out
        assert f"Running stage '{stage}'" not in out
    for stage in ("train", "test", "evaluate"):
        assert f"Running stage '{stage}'" in out

    diff = json.loads(_run(["dvc", "metrics", "diff", "--json"], repo, env).strip().splitlines()[-1])
    changed = {(path, key) for path, metrics in diff.items() for key, d in metrics.items() if d.get("diff")}
    assert ("metrics/train.json", "val.loss") in changed

    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo, env))
    names = [exp["name"] for commit in shown for exp in (commit.get("experiments") or [])]
    assert "lr-high" in names


def test_plots_show_renders_the_declared_plots(reproduced) -> None:
    repo, env, _ = reproduced
    rendered = json.loads(_run(["dvc", "plots", "show", "--json"], repo, env))["data"]
    for plot_id in ("Confusion matrix (test)", "ROC curves, one vs rest (test)", "Training curves, loss"):
        assert rendered[plot_id][0]["type"] == "vega"
        # The Vega spec carries the data points, so the plot is not empty.
        assert len(json.dumps(rendered[plot_id][0]["content"])) > 1000
    for png in ("plots/test/confusion.png", "plots/test/roc.png"):
        assert rendered[png][0]["type"] == "image"
    _run(["dvc", "plots", "show", "-o", "plots_html"], repo, env)
    assert (repo / "plots_html" / "index.html").is_file()


def test_predict_command_uses_the_trained_checkpoint(reproduced) -> None:
    repo, env, _ = reproduced
    image = next((repo / "data/prepared/images/cats").iterdir())
    out = _run([sys.executable, "-m", "src.predict", str(image)], repo, env, stdout_only=True)
    path, label, prob = out.strip().splitlines()[-1].split("\t")[:3]
    assert path == str(image)
    assert label in [*CLASSES, "unknown"]
    assert 0.0 < float(prob.split()[0]) <= 1.0
