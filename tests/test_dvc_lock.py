"""The committed dvc.lock describes the committed code and params (no stale results on main)."""

import hashlib
from pathlib import Path

import yaml


def test_lock_matches_code_and_params(repo: Path) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    stale = []
    for name, stage in lock.items():
        for dep in stage.get("deps", []):
            path = repo / dep["path"]
            code = dep["path"].startswith("src/") and path.is_file()
            if code and hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            current = params
            for part in key.split("."):
                current = current[part]
            if current != value:
                stale.append(f"{name}: params {key}")
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit): {stale}"
