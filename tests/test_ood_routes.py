"""Routes to the OOD set's Debian photos: every route gives the same data/ood, a data report says which was
read, and without one the OOD branch is off under ood.evaluate auto (its stages pass on why) and fails under true."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from abcd.core.errors import UserError
from abcd.data.ood_manifest import NOT_EVALUATED, not_evaluated
from abcd.oodset import assemble
from abcd.oodset.photos import DEB, DEB_PACKAGES, PHOTOS
from abcd.oodset.pins import DEB_SHA256, DEB_VERSIONS
from abcd.oodset.routes import ENV_USE, OodSourcesFile, choose_route, installed, route_problem
from abcd.stages import ood_data, ood_featurize
from tests.conftest import SHARED_OOD_PHOTOS
from tests.ood_routes import SYSTEM, deb_route, routes_file

DEB_FILES = [p for p in PHOTOS if p.source == DEB]


def test_every_debian_photo_has_its_bytes_pinned() -> None:
    assert set(DEB_SHA256) == {p.relpath for p in DEB_FILES} and len(DEB_FILES) == 70
    assert set(DEB_VERSIONS) == set(DEB_PACKAGES)


def _nowhere(tmp_path: Path) -> OodSourcesFile:
    return OodSourcesFile(routes={"mirror": str(tmp_path / "absent"), "system": str(tmp_path / "empty")})


def test_no_route_turns_auto_off_and_true_fails(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    sources = _nowhere(tmp_path)
    off = choose_route("auto", "auto", sources, PHOTOS, tmp_path, {})
    assert off.name is None and off.root is None
    first = DEB_FILES[0].relpath
    assert off.why == (
        f"no route to the OOD set's Debian photos (ood.use=auto): mirror ({tmp_path / 'absent'}): 70 of 70 files "
        f"missing (first: {first}); system ({tmp_path / 'empty'}): 70 of 70 files missing (first: {first})"
    )
    assert off.report() == {"evaluated": False, "reason": off.why, "routes": off.routes}
    assert set(off.routes) == {"mirror", "system"}
    with pytest.raises(UserError, match=r"^ood.evaluate is true but there is no route .* \(make system-deps\), or set"):
        choose_route(True, "auto", sources, PHOTOS, tmp_path, {})
    assert choose_route(False, "auto", sources, PHOTOS, tmp_path, {}).why == "ood.evaluate is false"


def test_files_with_other_bytes_are_no_route(tmp_path: Path) -> None:
    """Another version of a package would change data/ood: it is named, not read."""
    for photo in DEB_FILES:
        installed(tmp_path, photo.relpath).parent.mkdir(parents=True, exist_ok=True)
        installed(tmp_path, photo.relpath).write_bytes(b"another version")
    first = DEB_FILES[0]
    assert route_problem(tmp_path, PHOTOS) == (
        f"{first.relpath} differs from the file of {first.package} {DEB_VERSIONS[first.package]} (another version?)"
    )


def test_a_route_is_chosen_by_the_environment_then_ood_use_then_auto(tmp_path: Path) -> None:
    root = deb_route()
    sources = OodSourcesFile(routes={"gone": str(tmp_path / "absent"), "here": str(root)})
    auto = choose_route("auto", "auto", sources, PHOTOS, tmp_path, {})
    assert (auto.name, auto.root, auto.why) == ("here", root, "ood.use=auto: the first route with every file")
    assert auto.routes["gone"]["problem"].startswith("70 of 70 files missing")
    assert auto.report()["route"] == "here" and auto.report()["evaluated"] is True
    assert choose_route("auto", "here", sources, PHOTOS, tmp_path, {}).why == "ood.use=here"
    named = choose_route("auto", "here", sources, PHOTOS, tmp_path, {ENV_USE: "gone"})  # the environment wins
    assert named.name is None and named.why.startswith(f"no route to the OOD set's Debian photos (${ENV_USE}=gone)")
    with pytest.raises(UserError, match=r"^ood.use is 'nope'; choose one of auto, gone, here$"):
        choose_route("auto", "nope", sources, PHOTOS, tmp_path, {})


def _both_routes() -> None:
    for root in (SHARED_OOD_PHOTOS, SYSTEM):
        problem = route_problem(root, PHOTOS)
        if problem is not None:
            pytest.skip(f"needs both routes to the Debian photos; {root}: {problem}")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_both_routes_write_byte_identical_files(tmp_path: Path, monkeypatch) -> None:
    """A few photos (the whole set: the slow test below): the mirror's and the installed packages'."""
    _both_routes()
    few = (*DEB_FILES[:3], next(p for p in PHOTOS if p.source != DEB))
    monkeypatch.setattr(assemble, "PHOTOS", few)
    out, trees = tmp_path / "ood", []
    for root in (SHARED_OOD_PHOTOS, SYSTEM):
        assert assemble.build_ood_set(out, True, root) > len(few)
        trees.append(_tree(out))
    assert trees[0] == trees[1] and "manifest.csv" in trees[0]


@pytest.mark.slow
def test_both_routes_give_a_byte_identical_data_ood_and_a_report_naming_each(
    tmp_path: Path, repo: Path, monkeypatch
) -> None:
    _both_routes()
    monkeypatch.chdir(tmp_path)  # data/ood's manifest names its images by the --out path, as in the pipeline
    sources = routes_file(tmp_path, mirror=SHARED_OOD_PHOTOS, system=SYSTEM)
    trees, reports = [], []
    for route in ("mirror", "system"):
        monkeypatch.setenv(ENV_USE, route)
        args = ["--sources", str(sources), "--out", "data/ood", "--report", f"{route}.json"]
        ood_data.main(["--params", str(repo / "params.yaml"), *args])
        trees.append(_tree(tmp_path / "data" / "ood"))
        reports.append(json.loads((tmp_path / f"{route}.json").read_text()))
    assert trees[0] == trees[1] and len(trees[0]) == 423 + 2  # images, manifest.csv, SOURCES.md
    assert [r["route"] for r in reports] == ["mirror", "system"]
    assert reports[1]["chosen_by"] == f"${ENV_USE}=system" and reports[1]["images"] == 423
    assert reports[1]["photos"] == 91 and reports[1]["deb_photos"] == 70 and reports[1]["pip_photos"] == 21


def _params(tmp_path: Path, repo: Path, evaluate: bool | str) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ood"]["evaluate"] = evaluate
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_without_a_route_the_branch_is_off_and_says_why(tmp_path: Path, repo: Path, capsys) -> None:
    """ood_data writes the reason in place of the set and in its report; ood_featurize passes it on."""
    sources = routes_file(tmp_path, mirror=tmp_path / "absent", system=tmp_path / "absent")
    args = ["--sources", str(sources), "--out", str(tmp_path / "ood"), "--report", str(tmp_path / "r.json")]
    ood_data.main(["--params", str(_params(tmp_path, repo, "auto")), *args])
    reason = not_evaluated(tmp_path / "ood")
    assert reason.startswith("no route to the OOD set's Debian photos (ood.use=auto): mirror (")
    assert [p.name for p in (tmp_path / "ood").iterdir()] == [NOT_EVALUATED]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["evaluated"] is False and report["reason"] == reason and set(report["routes"]) == {"mirror", "system"}
    ood_featurize.main(
        ["--params", str(repo / "params.yaml"), "--ood", str(tmp_path / "ood"), "--out", str(tmp_path / "f")]
    )
    assert not_evaluated(tmp_path / "f") == reason
    assert f"ood_featurize: not evaluated: {reason}" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"ood\.evaluate is true but there is no route"):
        ood_data.main(["--params", str(_params(tmp_path, repo, True)), *args])
    ood_data.main(["--params", str(_params(tmp_path, repo, False)), *args])  # off: no route is even looked at
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "evaluated": False,
        "reason": "ood.evaluate is false",
        "routes": {},
    }
