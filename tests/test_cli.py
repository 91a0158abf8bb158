"""Stage entry points: an input error is one line and exit 1; a bug keeps its traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from abcd.core.cli import run, stage_args
from abcd.core.errors import InvalidFileError, MissingFileError, UserError
from tests.conftest import REPO


def _exit(main, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        run(main, "stage")
    return exc.value.code, capsys.readouterr().err


def test_a_user_error_is_one_line_and_exit_1(capsys) -> None:
    def main(argv):
        raise MissingFileError("features not found: data/features/meta.json (run: dvc repro featurize)")

    code, err = _exit(main, capsys)
    assert code == 1
    assert err == "stage: error: features not found: data/features/meta.json (run: dvc repro featurize)\n"


def test_a_bug_keeps_its_traceback(capsys) -> None:
    # A ValueError from a genuine bug (a numpy shape error, say) is not an input error.
    def main(argv):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    with pytest.raises(ValueError, match="broadcast"):
        run(main, "stage")
    assert capsys.readouterr().err == ""


def test_exit_status_and_interrupt(capsys) -> None:
    assert _exit(lambda argv: 130, capsys)[0] == 130
    assert _exit(lambda argv: None, capsys)[0] == 0

    def interrupted(argv):
        raise KeyboardInterrupt

    assert _exit(interrupted, capsys) == (130, "stage: interrupted\n")


def test_input_errors_are_user_errors_and_the_builtin_callers_expect() -> None:
    assert issubclass(MissingFileError, UserError) and issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(InvalidFileError, UserError) and issubclass(InvalidFileError, ValueError)


def test_stage_args_lists_reads_and_writes() -> None:
    args = stage_args(
        "doc",
        ["--in", "a", "--ood-out", "b"],
        reads={"in": "input"},
        writes={"ood-out": "output", "grid": "optional output"},
        optional=("grid",),
    )
    assert (args.params, args.__dict__["in"], args.ood_out, args.grid) == (
        Path("params.yaml"),
        Path("a"),
        Path("b"),
        None,
    )
    with pytest.raises(SystemExit):  # a required path missing: argparse's usage error
        stage_args("doc", [], writes={"out": "output"})


def test_a_stage_refuses_a_bad_choice_before_any_work(tmp_path: Path) -> None:
    """Real process, the evaluate stage (no torch): a mistyped backbone fails at params load, in one line."""
    data = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    data["model"]["backbone"] = "resnet-18"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "abcd.stages.evaluate", "--params", str(tmp_path / "params.yaml")]
    for flag in ("predictions", "metrics", "report", "plots"):
        cmd += [f"--{flag}", str(out / flag)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate: error: params: 'model.backbone': unknown backbone")
    assert "did you mean 'resnet18'?" in lines[0] and not out.exists()
