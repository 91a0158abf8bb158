"""The committed dvc.lock describes the committed code and params (no stale results on main)."""

import hashlib
from pathlib import Path

import yaml


def test_lock_matches_code_and_params(repo: Path) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    stale = [f"{name}: stage in dvc.yaml but not in the lock" for name in stages if name not in lock]
    for name, stage in lock.items():
        deps = {dep["path"] for dep in stage.get("deps", [])}
        if name not in stages:
            stale.append(f"{name}: stage in the lock but not in dvc.yaml")
        elif deps != set(stages[name].get("deps", [])):
            stale.append(f"{name}: deps {sorted(deps ^ set(stages[name].get('deps', [])))} differ from dvc.yaml")
        for dep in stage.get("deps", []):
            path = repo / dep["path"]
            if not dep["path"].startswith("src/"):
                continue
            if not path.is_file():  # a module moved or removed since the lock was written
                stale.append(f"{name}: {dep['path']} (missing)")
            elif hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            current = params
            for part in key.split("."):
                current = current[part]
            if current != value:
                stale.append(f"{name}: params {key}")
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit): {stale}"
