"""dvc.yaml cannot drift from the code: each stage's code deps are exactly its modules' import closure.

A module a stage imports but does not declare would leave stale outputs that `dvc status`
calls up to date; a declared module it does not import re-runs it for nothing.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import shlex
from pathlib import Path

import pytest
import yaml

from src import registry
from tests.conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# Paths a stage writes that DVC must not track, and why.
UNTRACKED = {"runs/train": "TensorBoard event files carry wall-clock times: dvc.lock would change on every run"}


def src_imports(path: Path) -> set[str]:
    """The ``src`` modules one file imports, at any depth (a function-level import is a dependency too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("src.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "src":
                found |= {f"src.{a.name}" for a in node.names}
            elif node.module.startswith("src."):
                found.add(node.module)
    return found


def closure(module: str) -> set[str]:
    """``module`` and every ``src`` module it imports, transitively, as paths (``src/x.py``)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(src_imports(REPO / f"{name.replace('.', '/')}.py"))
    return {f"{name.replace('.', '/')}.py" for name in seen}


def stage_module(cmd: str) -> str:
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], f"stage command {cmd!r} is not `python -m src.<stage>`"
    return words[2]


def test_closure_follows_nested_and_package_imports(tmp_path: Path) -> None:
    # The helpers themselves: `from src import x` and an import inside a function both count.
    assert "src/figures.py" in closure("src.train_log")  # from src import figures
    assert "src/transforms.py" in closure("src.train_inputs")  # imported inside PrefixActivations.build
    assert "src/torch.py" not in closure("src.train")  # third-party imports are not src modules


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
    declared = {d for d in deps if d.startswith("src/")}
    expected = closure(stage_module(stage["cmd"]))
    assert declared == expected, (
        f"dvc.yaml stage {name!r}: missing {sorted(expected - declared)}, not imported {sorted(declared - expected)}"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_path_in_cmd_is_a_dep_or_an_out(name: str) -> None:
    stage = STAGES[name]
    declared = set()
    for key in ("deps", "outs", "metrics", "plots"):
        declared |= {d if isinstance(d, str) else next(iter(d)) for d in stage.get(key, [])}
    words = shlex.split(stage["cmd"])
    paths = [value for flag, value in itertools.pairwise(words) if flag.startswith("--")]
    assert paths, f"stage {name!r} passes no paths"
    # A folder passed whole may be declared file by file (report reads metrics/*.json).
    inside = {p for p in paths if any(d.startswith(p + "/") for d in declared)}
    undeclared = [p for p in paths if p not in declared | inside and p not in UNTRACKED]
    assert not undeclared, f"dvc.yaml stage {name!r} passes {undeclared} without declaring them as deps or outs"


@pytest.mark.parametrize(
    "reg", [v for v in vars(registry).values() if isinstance(v, registry.Registry)], ids=lambda r: r.kind
)
def test_registry_targets_are_imported_where_they_are_looked_up(reg: registry.Registry) -> None:
    """The closure sees static imports only: a registry's lazily imported implementations must be static
    imports of every module that looks a name up in it (so its stages declare them)."""
    name = next(k for k, v in vars(registry).items() if v is reg)
    targets = {reg.target(n).partition(":")[0] for n in reg}
    src_targets = {f"{t.replace('.', '/')}.py" for t in targets if t.startswith("src.")}
    users = [
        p for p in (REPO / "src").glob("*.py") if f"{name}.get(" in p.read_text() or f"{name}.items(" in p.read_text()
    ]
    assert users, f"no module looks up {name}"
    for path in users:
        module = f"src.{path.stem}"
        missing = src_targets - closure(module)
        assert not missing, f"{path.name} looks up {name} but does not import {sorted(missing)}"
    for n in reg:  # and every name resolves to its implementation
        module, _, attribute = reg.target(n).partition(":")
        assert reg.get(n) is getattr(importlib.import_module(module), attribute)
