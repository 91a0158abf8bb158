"""Helpers for the slow tests that run the real DVC pipeline in a temporary copy of the repo."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import CLASSES, REPO, SHARED_OOD_PHOTOS

PER_CLASS = 6


def run(cmd: list[str], cwd: Path, env: dict[str, str], stdout_only: bool = False, check: bool = True) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def pipeline_env() -> dict[str, str]:
    """The venv first on PATH (stage commands call `python`, queue workers call `dvc`)."""
    return {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    }


def copy_repo(dest: Path) -> Path:
    """Copy this repo's files (tracked, and untracked but not ignored) to ``dest``: no outputs, no .git."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def photo_source(path: Path, name: str = "photos", take: int | str = "all") -> dict:
    """A sources-file entry for a local directory with one folder per class."""
    return {"name": name, "location": str(path), "sha256": None, "folders": {c: [c] for c in CLASSES}, "take": take}


def write_sources(path: Path, sets: dict[str, list[dict]], downloads: str = "data/downloads") -> Path:
    """A sources file (``data/sources.yaml``'s format) holding these named sets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"sets": sets, "downloads": downloads}, sort_keys=False))
    return path


def make_project(root: Path, photos: Path) -> tuple[Path, dict[str, str]]:
    """A git+DVC copy of this repo whose params point at PER_CLASS real photos per class, 2 epochs.

    ``$ABCD_TEST_PRECISION`` (fp32 or bf16), where set, is the copy's ``runtime.precision``: on a CPU with
    bf16, ``ABCD_TEST_PRECISION=fp32`` times the pipeline tests as a CPU without it runs them (``auto`` = fp32).
    """
    source = root / "photos"
    rng = random.Random(0)
    for label in CLASSES:
        (source / label).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(sorted((photos / label).iterdir()), PER_CLASS):
            shutil.copyfile(f, source / label / f.name)

    repo = copy_repo(root / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    write_sources(repo / "data" / "sources.yaml", {"photos": [photo_source(source)]})
    # The OOD photos' mirror beside this repo, not beside the copy (where ../shared does not exist).
    routes = {"mirror": str(SHARED_OOD_PHOTOS), "system": "/"}
    (repo / "data" / "ood_sources.yaml").write_text(yaml.safe_dump({"routes": routes}, sort_keys=False))
    params["prepare"]["use"] = "photos"
    params["featurize"].update(views=2, batch_size=16)
    params["train"].update(epochs=2, batch_size=8)
    params["evaluate"]["bootstrap"] = 100
    params["unknown"]["knn_k"] = 3  # the training bank has only a few dozen features here
    params["ood"]["crops"] = False  # 91 OOD images instead of 423: the OOD branch stays quick
    params["runtime"]["num_workers"] = 0
    params["runtime"]["precision"] = os.environ.get("ABCD_TEST_PRECISION") or params["runtime"]["precision"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = pipeline_env()
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "copy"], repo, env)
    return repo, env


def copy_project(repo: Path, dest: Path) -> Path:
    """A copy of a pipeline project (``make_project``) with its git history, DVC cache and outputs, at ``dest``.

    Not DVC's ``.dvc/tmp`` (locks, the experiment queue): a copy starts with none. The default DVC remote
    (``../abcd-dvc-remote``) is relative, so the copy has its own beside ``dest``.
    """

    def ignore(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder) == repo / ".dvc" else []

    shutil.copytree(repo, dest, symlinks=True, ignore=ignore)
    return dest
