import json
from pathlib import Path

import pytest
import yaml

from src.data import read_manifest
from src.prepare import main, resolve_source
from tests.conftest import CLASSES


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
    params["prepare"]["source"] = str(image_tree)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_prepare_copies_splits_and_reports(params_file: Path, image_tree: Path, tmp_path: Path, monkeypatch) -> None:
    (image_tree / "cats" / "corrupt.jpg").write_bytes(b"\x00" * 100)
    monkeypatch.chdir(tmp_path)
    main(["--params", str(params_file), "--out", "data/prepared", "--report", "metrics/data.json"])

    report = json.loads(Path("metrics/data.json").read_text())
    assert report == {"data": {"kept": 40, "skipped": 1, "train": 24, "val": 8, "test": 8}}
    skipped = Path("data/prepared/skipped.csv").read_text()
    assert "corrupt.jpg" in skipped
    seen = set()
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        samples = read_manifest(Path(f"data/prepared/{split}.csv"), CLASSES)
        assert len(samples) == n
        assert {s.label for s in samples} == set(CLASSES)  # stratified: every class in every split
        for s in samples:
            assert Path(s.path).is_file() and s.path.startswith("data/prepared/images/")
        seen |= {s.path for s in samples}
    assert len(seen) == 40
    assert not Path("data/prepared.tmp").exists()
