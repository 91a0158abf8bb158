import csv
from pathlib import Path

import pytest

from src.ood_data import MIN_CROP_SIDE, PHOTOS, main, regions


def test_regions_are_whole_image_then_quadrants_when_large_enough() -> None:
    assert regions(640, 427) == [
        ("full", (0, 0, 640, 427)),
        ("tl", (0, 0, 320, 213)),
        ("tr", (320, 0, 640, 213)),
        ("bl", (0, 213, 320, 426)),
        ("br", (320, 213, 640, 426)),
    ]
    assert regions(2 * MIN_CROP_SIDE - 2, 1000) == [("full", (0, 0, 2 * MIN_CROP_SIDE - 2, 1000))]
    assert regions(640, 427, crops=False) == [("full", (0, 0, 640, 427))]


def test_no_cat_dog_bee_or_ant_photo_is_listed() -> None:
    names = {p.name for p in PHOTOS}
    assert "chelsea" not in names  # scikit-image's chelsea is a cat
    assert len(names) == len(PHOTOS) == 20


def test_stage_writes_images_manifest_and_sources(tmp_path: Path, repo: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "ood"
    main(["--out", str(out), "--params", str(repo / "params.yaml")])  # ood_crops: true
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["photo"] for r in rows} == {p.name for p in PHOTOS}
    assert sum(r["region"] == "full" for r in rows) == len(PHOTOS) < len(rows)
    assert all(Path(r["path"]).is_file() for r in rows)
    sources = (out / "SOURCES.md").read_text()
    assert f"{len(PHOTOS)} distinct photos, {len(rows)} images" in sources and "licence" in sources
