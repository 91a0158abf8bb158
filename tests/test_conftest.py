"""The shared photo mirror's guard: a skip on a developer's machine, a failure under CI."""

import re
from pathlib import Path

import pytest

from tests.conftest import CLASSES, require_shared_photos


def _mirror(root: Path, classes: list[str]) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
    return root


def test_a_complete_mirror_is_returned_as_is(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    mirror = _mirror(tmp_path / "photos", CLASSES)
    assert require_shared_photos(mirror) == mirror


def test_a_missing_mirror_skips_with_the_path_outside_ci(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    absent = tmp_path / "absent"
    with pytest.raises(
        pytest.skip.Exception, match=rf"{re.escape(str(absent))} does not exist; expected one folder of JPEG"
    ):
        require_shared_photos(absent)
    monkeypatch.setenv("CI", "")  # set but empty: not CI
    with pytest.raises(pytest.skip.Exception):
        require_shared_photos(absent)


def test_a_missing_mirror_fails_under_ci_naming_the_path_and_the_classes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    absent = tmp_path / "absent"
    expected = (
        rf"\$CI is set, so the photo mirror is required: .*{re.escape(str(absent))} does not exist; "
        r".*\(ants, bees, cats, dogs\)"
    )
    with pytest.raises(pytest.fail.Exception, match=expected):
        require_shared_photos(absent)
    partial = _mirror(tmp_path / "partial", CLASSES[:2])
    with pytest.raises(
        pytest.fail.Exception, match=rf"{re.escape(str(partial))} has no folder for class\(es\) cats, dogs;"
    ):
        require_shared_photos(partial)
