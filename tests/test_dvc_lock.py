"""The committed dvc.lock describes the committed code and params (no stale results on main).

DVC itself judges the code and params: `dvc status` hashes each dep as `dvc repro` would (a folder of code
as one `.dir` hash, .dvcignore applied). Only what git tracks is judged (code, the sources file, params):
the data deps are pipeline outputs, absent from a fresh clone.

Marked slow, so out of `make test-fast`: after any edit under src/ the lock is stale until `dvc repro`
runs and it is committed. `make test` on a clean checkout must pass it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _stale_in_status(repo: Path, status: dict) -> list[str]:
    """What `dvc status --json` reports changed among a stage's git-tracked deps, its params and its command."""
    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    tracked = {*files, *(str(parent) for f in files for parent in Path(f).parents)}
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if change == "changed command":
                stale.append(f"{stage}: command")
            elif isinstance(change, dict):
                for path, what in change.get("changed deps", {}).items():
                    if isinstance(what, dict):  # a params file: {key: new | modified | deleted}
                        stale += [f"{stage}: {path} {key} ({state})" for key, state in what.items()]
                    elif path in tracked:
                        stale.append(f"{stage}: {path} ({what})")
    return stale


def test_lock_matches_code_and_params(repo: Path) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    stale = [f"{name}: stage in dvc.yaml but not in the lock" for name in stages if name not in lock]
    stale += [f"{name}: stage in the lock but not in dvc.yaml" for name in lock if name not in stages]
    for name in stages.keys() & lock.keys():
        declared = set(stages[name].get("deps", []))
        locked = {dep["path"] for dep in lock[name].get("deps", [])}
        if declared != locked:
            stale.append(f"{name}: deps {sorted(declared ^ locked)} differ between dvc.yaml and the lock")
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "--wait-for-lock", "status", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stale += _stale_in_status(repo, json.loads(proc.stdout))
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit): {stale}"
