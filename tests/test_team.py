"""Two machines share results the DVC way: a bare git repo as `origin`, the default DVC remote.

Machine A (a copy of conftest's reproduced and committed project) pushes its results, runs an experiment and
pushes it (git, DVC data, the experiment); machine B clones and gets the model, the predictions and the
experiment without running a stage.
The default remote (.dvc/config, ``../abcd-dvc-remote`` beside each clone) is used as it
ships: both clones sit in one folder, so they share it, offline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.pipeline_utils import copy_project, run

OUTS = ["models/model.pt", "data/predictions/test.csv", "data/features/test/features.npy", "metrics/test.json"]


def _digests(repo: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((repo / rel).read_bytes()).hexdigest() for rel in OUTS}


def _experiment(shown: list, name: str) -> dict:
    for commit in shown:
        for exp in commit.get("experiments") or []:
            if exp.get("name") == name:
                return exp["revs"][0]["data"]
    raise AssertionError(f"experiment {name!r} not in dvc exp show: {json.dumps(shown)[:2000]}")


def _ran_nothing(out: str) -> None:
    assert "Running stage" not in out, out
    assert "didn't change, skipping" in out or "up to date" in out, out


@pytest.mark.slow
def test_two_clones_share_model_predictions_and_experiments(reproduced, tmp_path: Path) -> None:
    team = tmp_path / "team"  # A, B, origin.git and abcd-dvc-remote side by side
    team.mkdir()
    shared, env, _ = reproduced
    a = copy_project(shared, team / "a")
    origin = team / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], team, env)
    remote = team / "abcd-dvc-remote"
    assert run(["dvc", "config", "core.remote"], a, env, stdout_only=True).strip() == "team"
    url = run(["dvc", "config", "remote.team.url"], a, env, stdout_only=True).strip()
    assert (a / ".dvc" / url).resolve() == remote.resolve()  # relative to .dvc/: beside the clone

    # Machine A: the pipeline's results, committed, pushed; an experiment, pushed by name.
    _ran_nothing(run(["dvc", "repro"], a, env))
    baseline = _digests(a)
    run(["dvc", "push"], a, env)
    assert remote.is_dir() and any(remote.rglob("*")), "dvc push wrote nothing to the default remote"
    run(["git", "remote", "add", "origin", str(origin)], a, env)
    run(["git", "push", "-q", "origin", "HEAD:main"], a, env)
    out = run(["dvc", "exp", "run", "-n", "lr-up", "-S", "lr=0.003", "-S", "train.init=random"], a, env)
    assert "Running stage 'train'" in out and "Running stage 'featurize'" not in out
    experiment = _digests(a)
    assert experiment["models/model.pt"] != baseline["models/model.pt"]
    exp_metrics = json.loads((a / "metrics/train.json").read_text())
    run(["dvc", "exp", "push", "origin", "lr-up"], a, env)

    # Machine B: clone, pull: the baseline's outputs, nothing to run.
    run(["git", "clone", "-q", "--branch", "main", str(origin), "b"], team, env)
    b = team / "b"
    assert not (b / "models/model.pt").exists()
    run(["dvc", "pull"], b, env)
    assert _digests(b) == baseline
    assert "Data and pipelines are up to date" in run(["dvc", "status"], b, env)
    _ran_nothing(run(["dvc", "repro"], b, env))

    # A's experiment: listed with its metrics, applied and checked out without training.
    run(["dvc", "exp", "pull", "origin", "lr-up"], b, env)
    shown = _experiment(json.loads(run(["dvc", "exp", "show", "--json"], b, env, stdout_only=True)), "lr-up")
    assert shown["params"]["params.yaml"]["data"]["lr"] == 0.003
    assert shown["metrics"]["metrics/train.json"]["data"]["val"] == exp_metrics["val"]
    run(["dvc", "exp", "apply", "lr-up"], b, env)
    run(["dvc", "checkout"], b, env)
    assert _digests(b) == experiment
    assert "Data and pipelines are up to date" in run(["dvc", "status"], b, env)
    _ran_nothing(run(["dvc", "repro"], b, env))
