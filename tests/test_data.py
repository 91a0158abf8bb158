from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from abcd.data.images import ImageError, Sample, load_rgb, read_manifest, stratified_split, write_manifest
from tests.conftest import CLASSES, make_image

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(f"{label}/{i}.jpg", label) for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_complete_and_disjoint() -> None:
    samples = _samples({"ants": 153, "bees": 164, "cats": 300, "dogs": 300})
    splits = stratified_split(samples, FRACTIONS, seed=42)
    paths = [s.path for items in splits.values() for s in items]
    assert sorted(paths) == sorted(s.path for s in samples)  # every sample exactly once
    for label, n in Counter(s.label for s in samples).items():
        for name, frac in FRACTIONS.items():
            got = sum(s.label == label for s in splits[name])
            assert abs(got - frac * n) <= 1, (label, name, got)


def test_split_is_seeded() -> None:
    samples = _samples({"ants": 30, "bees": 30})
    a = stratified_split(samples, FRACTIONS, seed=1)
    b = stratified_split(list(reversed(samples)), FRACTIONS, seed=1)  # input order must not matter
    c = stratified_split(samples, FRACTIONS, seed=2)
    assert a == b
    assert a["test"] != c["test"]


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "I;16"])
def test_load_rgb_converts_every_mode(tmp_path: Path, mode: str) -> None:
    ext = ".tiff" if mode == "CMYK" else ".png"
    path = make_image(tmp_path / f"img{ext}", mode=mode, size=(20, 10))
    arr = load_rgb(path)
    assert arr.shape == (10, 20, 3) and arr.dtype == np.uint8


def test_truncated_and_non_image_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    good = make_image(tmp_path / "good.jpg", size=(256, 256))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (truncated, text, tmp_path / "missing.jpg"):
        with pytest.raises(ImageError, match=path.name) as info:
            load_rgb(path)
        assert info.value.path == str(path)


def test_manifest_round_trip_and_validation(tmp_path: Path) -> None:
    samples = [Sample("a.jpg", "ants"), Sample("b, with comma.jpg", "dogs")]
    for s in samples:
        make_image(tmp_path / s.path)
    path = tmp_path / "m.csv"
    write_manifest(path, samples)
    assert path.read_bytes() == b'path,label\r\na.jpg,ants\r\n"b, with comma.jpg",dogs\r\n'  # as csv.writer wrote it
    assert read_manifest(path, CLASSES, root=tmp_path) == samples
    path.write_text("path,label\na.jpg,ants\nb.jpg,bees,x\n")
    with pytest.raises(ValueError, match=r"m.csv:3: expected 2 fields, got 3"):
        read_manifest(path, CLASSES, root=tmp_path)
    path.write_text("path,label\na.jpg,ants\n\nb.jpg\n")  # a blank line, then a row without its label
    with pytest.raises(ValueError, match=r"m.csv:3: label '' is not one of"):
        read_manifest(path, CLASSES, root=tmp_path)
    path.write_text("path,label\ngone.jpg,ants\nb.jpg,wolves\n")  # the first bad line speaks, whatever its fault
    with pytest.raises(ValueError, match=r"m.csv:2: path 'gone.jpg' does not exist"):
        read_manifest(path, CLASSES, root=tmp_path)
    path.write_text("path,label\na.jpg,ants\nb.jpg,wolves\n")
    with pytest.raises(ValueError, match=r"m.csv:3: label 'wolves' is not one of ants, bees, cats, dogs"):
        read_manifest(path, CLASSES, root=tmp_path)
    path.write_text("path,label\na.jpg,ants\ngone.jpg,bees\n")
    with pytest.raises(ValueError, match=r"m.csv:3: path 'gone.jpg' does not exist"):
        read_manifest(path, CLASSES, root=tmp_path)
    path.write_text("file,class\n")
    with pytest.raises(ValueError, match="header must be path,label"):
        read_manifest(path, CLASSES, root=tmp_path)
    path.write_text("")
    with pytest.raises(ValueError, match="header must be path,label"):
        read_manifest(path, CLASSES, root=tmp_path)
