"""dvc.yaml cannot drift from the code: each stage's code deps are its module and the subpackages it imports.

A stage depends on its own module (``src/abcd/stages/<stage>.py``) and on every library folder
(``src/abcd/<subpackage>``) that holds a module of its import closure: a dep means "this job's
code". A folder it imports but does not declare would leave stale outputs that `dvc status` calls
up to date; a declared folder it does not import re-runs it for nothing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import itertools
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from abcd.core import registry
from tests.conftest import REPO

SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# Paths a stage writes that DVC must not track, and why.
UNTRACKED = {"runs/train": "TensorBoard event files carry wall-clock times: dvc.lock would change on every run"}


def module_file(name: str) -> Path | None:
    """The file of module ``abcd.x.y`` (a package's ``__init__.py``), or None if it is not in this repo."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def abcd_imports(path: Path) -> set[str]:
    """The ``abcd`` modules one file imports, at any depth (a function-level import is a dependency too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "abcd"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "abcd":
                continue
            found.add(node.module)
            # `from abcd.evaluation import figures` imports the module abcd.evaluation.figures
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return found


def closure(module: str) -> set[str]:
    """``module`` and every ``abcd`` module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        assert path is not None, f"{name} is imported but is no module of src/abcd"
        todo.extend(abcd_imports(path))
    return seen


def code_deps(stage: str) -> set[str]:
    """What a stage's dvc.yaml deps must be: its module's file and the folders of the library it imports."""
    deps = set()
    for name in closure(stage):
        parts = name.split(".")
        if len(parts) < 2:
            continue  # abcd/__init__.py: a docstring (test_the_package_root_holds_no_code)
        if parts[1] == "stages":
            assert name in (stage, "abcd.stages"), f"{stage} imports the stage module {name}"
            continue
        deps.add(f"src/abcd/{parts[1]}")
    return deps | {str(module_file(stage).relative_to(REPO))}


def stage_module(cmd: str) -> str:
    words = [w for w in shlex.split(cmd) if "=" not in w or w.startswith("-")]  # PYTHONPATH=src ...
    assert words[:2] == ["python", "-m"], f"stage command {cmd!r} is not `python -m abcd.stages.<stage>`"
    return words[2]


def all_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__") for p in SRC.rglob("*.py")
    )


def test_closure_follows_nested_and_package_imports() -> None:
    # The helpers themselves: `from abcd.x import module` and an import inside a function both count.
    assert "abcd.evaluation.figures" in closure("abcd.training.log")  # from abcd.evaluation import figures
    assert "abcd.features.transforms" in closure("abcd.training.inputs")  # imported inside PrefixActivations.build
    assert not any(m.startswith("torch") for m in closure("abcd.stages.train"))  # third-party: not ours


def test_the_package_root_holds_no_code() -> None:
    """Every stage imports ``abcd/__init__.py``: it is no dep, so it must stay a docstring."""
    body = ast.parse((SRC / "abcd/__init__.py").read_text()).body
    assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_the_import_closure(name: str) -> None:
    stage = STAGES[name]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
    declared = {d for d in deps if d.startswith("src/")}
    expected = code_deps(stage_module(stage["cmd"]))
    assert declared == expected, (
        f"dvc.yaml stage {name!r}: missing {sorted(expected - declared)}, not imported {sorted(declared - expected)}"
    )


def test_no_module_imports_a_stage() -> None:
    importers = {
        (m, i) for m in all_modules() for i in abcd_imports(module_file(m)) if i.startswith("abcd.stages.") and m != i
    }
    assert not importers, f"stage modules are entry points, not library: {sorted(importers)}"


def test_no_import_cycle() -> None:
    graph = {m: abcd_imports(module_file(m)) - {m} for m in all_modules()}
    # A package's __init__ is imported on the way to its modules: not an edge that closes a cycle.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    cycles = []
    for start in graph:
        todo, seen = list(graph[start]), set()
        while todo:
            name = todo.pop()
            if name == start:
                cycles.append(start)
                break
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
    assert not cycles, f"modules on an import cycle: {cycles}"


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
def test_registry_targets_are_in_the_folders_of_their_users(reg: registry.Registry) -> None:
    """The closure sees static imports only: a registry's lazily imported implementations must lie in a
    folder that every module looking a name up in it imports (so its stages declare that folder)."""
    name = next(k for k, v in vars(registry).items() if v is reg)
    targets = {reg.target(n).partition(":")[0] for n in reg}
    folders = {f"src/abcd/{t.split('.')[1]}" for t in targets if t.startswith("abcd.")}
    users = [m for m in all_modules() if f"{name}.get(" in (t := module_file(m).read_text()) or f"{name}.items(" in t]
    assert users, f"no module looks up {name}"
    for module in users:
        imported = {f"src/abcd/{m.split('.')[1]}" for m in closure(module) if m.count(".") >= 1}
        assert folders <= imported, f"{module} looks up {name} but imports nothing of {sorted(folders - imported)}"
    for n in reg:  # and every name resolves to its implementation
        module, _, attribute = reg.target(n).partition(":")
        assert reg.get(n) is getattr(importlib.import_module(module), attribute)


CLASSIFIER = ("prepare", "featurize", "train", "onnx_backbone", "export", "quantize", "test", "evaluate")
OOD_BRANCH = ("ood_data", "ood_featurize", "ood_test", "ood_evaluate", "ood_onnx_features", "int8_gates")
# What only the OOD branch may read: the OOD photos' routes, their catalogue, and the branch's outputs.
OOD_ONLY = (
    "data/ood_sources.yaml",
    "src/abcd/oodset",
    "data/ood",
    "data/ood_features",
    "data/ood_predictions",
    "data/ood_onnx_features",
)


def _paths(stage: dict, *keys: str) -> set[str]:
    return {d if isinstance(d, str) else next(iter(d)) for key in keys for d in stage.get(key, [])}


def _upstream(name: str) -> set[str]:
    """The stages whose outputs ``name`` reads, transitively (not ``name`` itself)."""
    writers = {out: other for other, stage in STAGES.items() for out in _paths(stage, "outs", "metrics", "plots")}
    found, todo = set(), [name]
    while todo:
        for dep in _paths(STAGES[todo.pop()], "deps"):
            writer = writers.get(dep)
            if writer is not None and writer not in found:
                found.add(writer)
                todo.append(writer)
    return found


def test_the_classifier_needs_neither_the_ood_photos_nor_their_catalogue() -> None:
    # validate reads all of params.yaml, the ood section too, but its marker never changes (see dvc.yaml).
    assert set(STAGES) == {"validate", *CLASSIFIER, *OOD_BRANCH, "report"}
    for name in CLASSIFIER:
        assert _upstream(name) <= {"validate", *CLASSIFIER}, name
        deps = _paths(STAGES[name], "deps")
        assert not deps & set(OOD_ONLY), f"{name} reads {sorted(deps & set(OOD_ONLY))}"
        assert not [p for p in STAGES[name].get("params", []) if str(p).split(".")[0] == "ood"], name


def test_editing_the_ood_catalogue_reruns_only_the_ood_branch_and_the_report() -> None:
    """What `dvc status` lists after an edit of src/abcd/oodset/photos.py, and what may re-run after it."""
    direct = {name for name, stage in STAGES.items() if "src/abcd/oodset" in _paths(stage, "deps")}
    assert direct == {"ood_data", "ood_evaluate"}
    downstream = {name for name in STAGES if _upstream(name) & direct}
    assert downstream <= {*OOD_BRANCH, "report"}, downstream
    # The OOD images' backbone pass does not wait for training.
    assert _upstream("ood_featurize") == {"validate", "ood_data"}


def test_the_committed_results_are_the_ones_the_lock_records() -> None:
    """Every output git tracks (metrics, reports, markers) has the md5 dvc.lock recorded when its stage ran, so
    metrics/*.json are the results of the models and data the lock pins (metrics/int8.json decides the default
    model: tests/test_quantize.py)."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    git = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    tracked = set(git.stdout.split())
    outs = {o["path"]: o["md5"] for stage in lock.values() for o in stage.get("outs", []) if o["path"] in tracked}
    assert "metrics/int8.json" in outs and "metrics/test.json" in outs
    differ = [p for p, md5 in outs.items() if hashlib.md5((REPO / p).read_bytes()).hexdigest() != md5]
    assert not differ, f"edited after dvc repro (run it and commit dvc.lock): {differ}"
