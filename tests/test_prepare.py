import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from abcd.data.images import read_manifest
from abcd.data.sources import resolve_path as resolve_source
from abcd.stages.prepare import main
from tests.conftest import CLASSES
from tests.pipeline_utils import photo_source, write_sources

ARGS = [
    "--sources",
    "sources.yaml",
    "--out",
    "data/prepared",
    "--report",
    "reports/data.json",
]


def test_relative_source_resolves_against_the_repo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert resolve_source("../shared/x", repo) == tmp_path / "shared" / "x"
    assert resolve_source("/abs/x", repo) == Path("/abs/x")


def test_relative_source_inside_a_dvc_temp_experiment_resolves_against_the_parent_repo(tmp_path: Path) -> None:
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc123"
    assert resolve_source("../shared/x", workspace) == tmp_path / "shared" / "x"


@pytest.fixture
def params_file(repo: Path, tmp_path: Path, image_tree: Path) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    write_sources(tmp_path / "sources.yaml", {"photos": [photo_source(image_tree)]})
    params["prepare"]["use"] = "photos"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_prepare_copies_splits_and_reports(params_file: Path, image_tree: Path, tmp_path: Path, monkeypatch) -> None:
    (image_tree / "cats" / "corrupt.jpg").write_bytes(b"\x00" * 100)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ABCD_DATA", raising=False)
    main(["--params", str(params_file), *ARGS, "--grid", "plots/data/samples.png"])

    full = json.loads(Path("reports/data.json").read_text())
    assert full["totals"] == {"found": 41, "kept": 40, "skipped": 1, "train": 24, "val": 8, "test": 8}
    assert full["source_set"] == "photos" and full["chosen_by"] == "prepare.use=photos"
    assert full["per_class"]["cats"] == {
        "found": 11,
        "kept": 10,
        "skipped": 1,
        "skipped_by_reason": {"undecodable": 1},
        "train": 6,
        "val": 2,
        "test": 2,
    }
    assert [(s["file"], s["kind"]) for s in full["skipped"]] == [("photos/cats/corrupt.jpg", "undecodable")]
    for counts in full["per_class"].values():
        assert counts["found"] == counts["kept"] + counts["skipped"]
    seen = set()
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        samples = read_manifest(Path(f"data/prepared/{split}.csv"), CLASSES)
        assert len(samples) == n
        assert {s.label for s in samples} == set(CLASSES)  # stratified: every class in every split
        for s in samples:
            assert Path(s.path).is_file() and s.path.startswith(f"data/prepared/images/{s.label}/{s.label}_")
        seen |= {s.path for s in samples}
    assert len(seen) == 40
    assert not Path("data/prepared.tmp").exists()
    with Image.open("plots/data/samples.png") as grid:
        assert grid.width > 3 * 3 * 100 and grid.height > 4 * 100  # 3 per split x 3 splits, 4 classes


def test_env_var_overrides_the_source_set(params_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABCD_DATA", "nonesuch")
    with pytest.raises(ValueError, match=r"\$ABCD_DATA is 'nonesuch'; choose one of auto, photos"):
        main(["--params", str(params_file), *ARGS])
    assert not Path("data/prepared").exists()
    monkeypatch.setenv("ABCD_DATA", "auto")
    main(["--params", str(params_file), *ARGS])
    assert json.loads(Path("reports/data.json").read_text())["chosen_by"] == (
        "$ABCD_DATA=auto: first set whose local paths exist"
    )
