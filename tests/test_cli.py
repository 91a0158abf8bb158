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


@pytest.mark.slow  # a real process; test_robustness checks every stage's refusal in this one
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


def test_a_full_disk_is_one_line_naming_the_output(tmp_path: Path, capsys) -> None:
    """ENOSPC from a write (no path in the OS error) becomes a DiskFullError naming the output; nothing is left."""
    import errno

    from abcd.core.errors import DiskFullError
    from abcd.core.fileio import atomic_dir, atomic_file

    target = tmp_path / "models" / "model.pt"
    with (
        pytest.raises(DiskFullError, match=r"no space left on the device writing .*models/model.pt"),
        atomic_file(target),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not list(target.parent.iterdir())
    with pytest.raises(DiskFullError, match=r"writing .*prepared"), atomic_dir(tmp_path / "prepared") as tmp:
        (tmp / "a.png").write_bytes(b"x")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert not (tmp_path / "prepared.tmp").exists() and not (tmp_path / "prepared").exists()

    def main(argv):  # a write outside fileio: the OS error's own path, still one line
        raise OSError(errno.ENOSPC, "No space left on device", "runs/train/events.out")

    code, err = _exit(main, capsys)
    assert code == 1
    assert err == (
        "stage: error: no space left on the device writing runs/train/events.out: free some space, then run it again\n"
    )

    def other(argv):  # any other OS error is not the disk: a bug's traceback
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        run(other, "stage")


def test_validate_checks_every_key_and_keeps_its_marker(tmp_path: Path, capsys) -> None:
    """The stage every other depends on: a bad value or an unknown top-level key fails in one line and
    leaves the marker as it was; a valid file writes the same bytes every time."""
    from abcd.stages import validate

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    sources = tmp_path / "sources.yaml"
    sources.write_text((REPO / "data" / "sources.yaml").read_text())
    marker = tmp_path / "params.ok"

    def validate_with(data: dict) -> tuple[int, str]:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
        argv = ["--params", str(tmp_path / "params.yaml"), "--sources", str(sources), "--out", str(marker)]
        return _exit(lambda _: validate.main(argv), capsys)

    assert validate_with(params) == (0, "")
    first = marker.read_bytes()
    assert validate_with(params)[0] == 0 and marker.read_bytes() == first
    for bad, message in (
        ({**params, "Lr": 0.5}, "unknown key 'Lr' (did you mean 'lr'"),
        ({**params, "train": {**params["train"], "epochs": "sixty"}}, "'train.epochs'"),
        ({**params, "prepare": {**params["prepare"], "max_pixels": "lots"}}, "'prepare.max_pixels'"),
        ({**params, "classes": ["fourmis", "abeilles"], "prepare": {**params["prepare"], "use": "mirror"}},
         "'sets.mirror[0].folders' must be keyed by classes (fourmis, abeilles)"),
    ):  # fmt: skip
        code, err = validate_with(bad)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
        assert marker.read_bytes() == first
