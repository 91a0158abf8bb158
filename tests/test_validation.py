"""Every validation rule of `prepare` on generated bad files; duplicates, leakage, split sizes."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from abcd.core.params import ParamsError, parse_params
from abcd.data.dedupe import Item, dhash, find_duplicates
from abcd.data.images import SplitError, load_rgb, stratified_split, to_rgb
from abcd.data.prepare import File, inspect_files, layout, take_per_class
from abcd.data.sources import SourceError, load_sources
from abcd.stages.prepare import main
from tests.conftest import CLASSES, make_image
from tests.pipeline_utils import photo_source, write_sources

PREPARE_ARGS = ["--params", "params.yaml", "--sources", "sources.yaml", "--out", "prep", "--report", "r.json"]


def prepare_in(tmp_path: Path, params: dict, sets: dict[str, list[dict]], monkeypatch) -> dict:
    """Write params.yaml and sources.yaml in ``tmp_path``, run prepare there; its data report."""
    write_sources(tmp_path / "sources.yaml", sets)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    main(PREPARE_ARGS)
    return json.loads(Path("r.json").read_text())


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` and carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _animated(path: Path, fmt: str) -> Path:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "green", "blue")]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, expected skip kind or None when it must be kept)."""
    d = tmp_path / "files"
    d.mkdir()
    good = make_image(d / "good.jpg", size=(256, 192))
    files: dict[str, tuple[Path, str | None]] = {"good": (good, None)}

    truncated = d / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    files["truncated"] = (truncated, "undecodable")
    (d / "empty.jpg").write_bytes(b"")
    files["zero-byte"] = (d / "empty.jpg", "undecodable")
    (d / "notes.jpg").write_text("this is not a picture\n")
    files["text named .jpg"] = (d / "notes.jpg", "undecodable")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    files["CMYK JPEG"] = (d / "cmyk.jpg", None)
    files["RGBA PNG"] = (make_image(d / "rgba.png", mode="RGBA"), None)
    Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)).save(d / "grey16.png")
    files["16-bit PNG"] = (d / "grey16.png", None)
    files["palette PNG"] = (make_image(d / "palette.PNG", mode="P"), None)
    files["grey BMP"] = (make_image(d / "grey.bmp", mode="L"), None)
    files["upper-case .JPEG"] = (make_image(d / "upper.JPEG"), None)
    files["webp"] = (make_image(d / "still.webp"), None)
    (d / "huge.png").write_bytes(_png_declaring(8_000, 8_000))  # over prepare.max_pixels
    files["huge declared size"] = (d / "huge.png", "too_large")
    (d / "gigantic.png").write_bytes(_png_declaring(20_000, 20_000))  # over Pillow's own guard too
    files["gigantic declared size"] = (d / "gigantic.png", "too_large")
    files["animated GIF"] = (_animated(d / "anim.gif", "GIF"), "unsupported_extension")
    files["animated WebP"] = (_animated(d / "anim.webp", "WEBP"), "animated")
    files["animated GIF named .png"] = (_animated(d / "anim-gif.png", "GIF"), "animated")
    (d / "README").write_text("no extension")
    files["no extension"] = (d / "README", "unsupported_extension")
    return files


def test_every_validation_rule(bad_files: dict[str, tuple[Path, str | None]]) -> None:
    files = [File("src", "ants", f"src/{name}", path.name, path) for name, (path, _) in bad_files.items()]
    result = inspect_files(files, max_pixels=40_000_000)
    kinds = {s.path.removeprefix("src/"): s.kind for s in result.skipped}
    for name, (_, expected) in bad_files.items():
        assert kinds.get(name) == expected, (name, kinds.get(name), expected)
    kept = {i.key.removeprefix("src/") for i in result.items}
    assert kept == {name for name, (_, expected) in bad_files.items() if expected is None}
    reasons = {s.path.removeprefix("src/"): s.reason for s in result.skipped}
    assert reasons["huge declared size"] == "8000x8000 pixels exceeds the limit of 40000000 (prepare.max_pixels)"
    assert reasons["animated WebP"] == "animated image (3 frames)"
    assert reasons["animated GIF"] == "unsupported extension .gif"


def test_modes_convert_consistently_to_rgb() -> None:
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent: white, not the hidden colour
    assert (to_rgb(clear) == 255).all()
    half = Image.new("LA", (4, 4), (0, 128))
    assert to_rgb(half)[0, 0].tolist() == [127, 127, 127]
    wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert to_rgb(wide)[0, :, 0].tolist() == [0, 128, 255]  # scaled, not clipped at 255
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert (to_rgb(cmyk) == 255).all()


def test_sixteen_bit_png_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(np.array([[256, 40000]], dtype=np.uint16)).save(path)
    assert load_rgb(path)[0, :, 1].tolist() == [1, 156]


def _reencoded(path: Path, out: Path, quality: int = 60, scale: float = 0.7) -> Path:
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BICUBIC).save(
            out, quality=quality
        )
    return out


def _item(key: str, label: str, path: Path) -> Item:
    import hashlib

    return Item(key, label, hashlib.sha256(path.read_bytes()).hexdigest(), dhash(load_rgb(path)))


def test_exact_and_near_duplicates_and_conflicting_classes(shared_photos: Path, tmp_path: Path) -> None:
    ants = sorted((shared_photos / "ants").iterdir())[:4]
    cats = sorted((shared_photos / "cats").iterdir())[:4]
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(ants[0], copy)
    near = _reencoded(ants[1], tmp_path / "near.jpg")
    filed_twice = _reencoded(cats[0], tmp_path / "cat-as-dog.jpg", quality=90, scale=1.0)
    items = [
        *(_item(f"a/{p.name}", "ants", p) for p in ants),
        *(_item(f"c/{p.name}", "cats", p) for p in cats),
        _item("z/copy.jpg", "ants", copy),
        _item("z/near.jpg", "ants", near),
        _item("z/cat-as-dog.jpg", "dogs", filed_twice),
    ]
    found = {d.key: d for d in find_duplicates(items, max_bits=4)}
    assert set(found) == {"z/copy.jpg", "z/near.jpg", f"c/{cats[0].name}", "z/cat-as-dog.jpg"}
    assert (
        found["z/copy.jpg"].kind == "exact_duplicate"
        and found["z/copy.jpg"].reason == f"same bytes as a/{ants[0].name}"
    )
    assert (
        found["z/near.jpg"].kind == "near_duplicate"
        and f"same picture as a/{ants[1].name}" in found["z/near.jpg"].reason
    )
    assert found["z/cat-as-dog.jpg"].kind == found[f"c/{cats[0].name}"].kind == "conflicting_classes"
    assert "filed under classes cats, dogs" in found["z/cat-as-dog.jpg"].reason


def test_different_real_photos_are_not_near_duplicates(shared_photos: Path) -> None:
    paths = [p for label in CLASSES for p in sorted((shared_photos / label).iterdir())[:25]]
    items = [_item(p.name, p.parent.name, p) for p in paths]
    assert find_duplicates(items, max_bits=4) == []


def test_no_picture_leaks_across_splits(shared_photos: Path, repo: Path, tmp_path: Path, monkeypatch) -> None:
    """Copies and re-encodings spread over the source: each picture ends in one split at most once."""
    source = tmp_path / "photos"
    for label in CLASSES:
        for p in sorted((shared_photos / label).iterdir())[:8]:
            (source / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, source / label / p.name)
    for p in sorted((source / "bees").iterdir())[:4]:
        shutil.copyfile(p, source / "bees" / f"copy-{p.name}")
        _reencoded(p, source / "bees" / f"small-{p.name}")
    cat = sorted((source / "cats").iterdir())[0]
    shutil.copyfile(cat, source / "dogs" / "really-a-cat.jpg")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["use"] = "photos"
    report = prepare_in(tmp_path, params, {"photos": [photo_source(source)]}, monkeypatch)
    assert report["per_class"]["bees"]["skipped_by_reason"] == {"exact_duplicate": 4, "near_duplicate": 4}
    assert report["per_class"]["cats"]["skipped_by_reason"] == {"conflicting_classes": 1}
    assert report["per_class"]["dogs"]["skipped_by_reason"] == {"conflicting_classes": 1}
    assert report["totals"] == {"found": 41, "kept": 31, "skipped": 10, "train": 17, "val": 7, "test": 7}
    hashes: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for line in Path(f"prep/{split}.csv").read_text().splitlines()[1:]:
            path = line.rsplit(",", 1)[0]
            h = dhash(load_rgb(path))
            for other_split, other in hashes.items():
                assert int(np.bitwise_count(np.uint64(h) ^ np.uint64(int(other)))) > 4, (path, other_split)
            hashes[f"{split}:{path}"] = str(h)


def _samples(counts: dict[str, int]):
    from abcd.data.images import Sample

    return [Sample(f"{label}/{i:03d}.jpg", label) for label, n in counts.items() for i in range(n)]


def test_split_by_count_with_rest_and_too_few_images() -> None:
    samples = _samples({"ants": 30, "bees": 40})
    splits = stratified_split(samples, {"train": 12, "val": 8, "test": "rest"}, seed=0)
    counts = {name: sorted(s.label for s in items) for name, items in splits.items()}
    assert counts["train"].count("ants") == 12 and counts["val"].count("bees") == 8
    assert counts["test"].count("ants") == 10 and counts["test"].count("bees") == 20
    fixed = stratified_split(samples, {"train": 12, "val": 8, "test": 5}, seed=0)
    assert len(fixed["test"]) == 10  # counts per class; the rest are unused, not silently in a split
    with pytest.raises(SplitError, match=r"class ants has 30 usable images; .* needs at least 31 per class"):
        stratified_split(samples, {"train": 20, "val": 10, "test": "rest"}, seed=0)
    with pytest.raises(SplitError, match=r"class ants has 2 usable images: too few .* leaves val, test with none"):
        stratified_split(_samples({"ants": 2}), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)


def test_the_original_scale_does_not_fit_the_ants(params_file_for_split) -> None:
    """125 train + 80 val + a test set per class needs more ants than the mirror (or the upstream archive) has."""
    message = params_file_for_split({"train": 125, "val": 80, "test": "rest"})
    assert "class ants has 153 usable images; prepare.split (train 125/val 80/test rest) needs at least 206" in message


@pytest.fixture
def params_file_for_split(shared_photos: Path, repo: Path, tmp_path: Path, monkeypatch, capsys):
    from abcd.core.cli import run

    def go(split: dict) -> str:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["prepare"].update(use="m", split=split)
        write_sources(tmp_path / "sources.yaml", {"m": [photo_source(shared_photos)]})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr("sys.argv", ["prepare", "--sources", "sources.yaml", "--out", "o", "--report", "r.json"])
        with pytest.raises(SystemExit):
            run(main, "prepare")
        return capsys.readouterr().err

    return go


def test_take_is_chosen_by_content_not_by_seed(tmp_path: Path) -> None:
    items = [Item(f"s/{i}", "ants", f"{(i * 7919) % 101:064x}", 0) for i in range(10)]
    kept, over = take_per_class(items, {i.key: "s" for i in items}, {"s": 4})
    assert len(kept) == 4 and len(over) == 6 and all(s.kind == "over_take" for s in over)
    assert kept == sorted(sorted(items, key=lambda i: i.sha256)[:4], key=lambda i: i.key)
    assert take_per_class(items, {i.key: "s" for i in items}, {"s": "all"}) == (sorted(items, key=lambda i: i.key), [])


def test_changing_only_the_seed_changes_only_the_split(
    image_tree: Path, repo: Path, tmp_path: Path, monkeypatch
) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["use"] = "p"
    write_sources(tmp_path / "sources.yaml", {"p": [photo_source(image_tree, name="p", take=8)]})
    monkeypatch.chdir(tmp_path)
    reports = []
    for seed in (1, 2):
        params["seed"] = seed
        Path("params.yaml").write_text(yaml.safe_dump(params))
        main(
            [
                "--params",
                "params.yaml",
                "--sources",
                "sources.yaml",
                "--out",
                f"p{seed}",
                "--report",
                f"r{seed}.json",
            ]
        )
        reports.append(json.loads(Path(f"r{seed}.json").read_text()))
    assert reports[0] == reports[1]  # same counts, same skipped files (take is not seeded)
    kept = [sorted(p.name for p in Path(f"p{seed}/images").rglob("*.jpg")) for seed in (1, 2)]
    assert kept[0] == kept[1]
    assert Path("p1/test.csv").read_text() != Path("p2/test.csv").read_text().replace("p2/", "p1/")


BAD_PREPARE = [
    ({"split": {"train": 0.6, "val": 0.2, "test": 0.3}}, r"'prepare.split' must be fractions that sum to 1"),
    (
        {"split": {"train": 125, "val": 0.5, "test": "rest"}},
        r"'prepare.split' must be fractions in \(0, 1\) .* or counts",
    ),
    ({"near_duplicate_bits": 64}, r"'prepare.near_duplicate_bits' must be an integer in \[0, 63\]"),
    ({"sources": {"mirror": []}}, r"'prepare.sources' moved to the sources file data/sources.yaml"),
]


@pytest.mark.parametrize(("change", "message"), BAD_PREPARE)
def test_bad_prepare_params_name_the_key(repo: Path, change: dict, message: str) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["prepare"].update(change)
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_bad_sources_file_names_the_file_and_the_key(repo: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((repo / "data" / "sources.yaml").read_text())
    path = tmp_path / "sources.yaml"

    def load() -> None:
        path.write_text(yaml.safe_dump(raw))
        load_sources(path)

    load()  # the shipped file is valid
    mirror = raw["sets"]["mirror"][0]
    mirror["take"] = 0
    with pytest.raises(SourceError, match=r"^sources: 'sets.mirror\[0\].take' must be an integer >= 1 or 'all', got 0"):
        load()
    mirror["take"] = "all"
    mirror["sha256"] = "abc"
    with pytest.raises(SourceError, match=r"'sets.mirror\[0\].sha256' must be 64 hex digits or null, got 'abc'"):
        load()
    mirror["sha256"] = None
    mirror["folder"] = mirror.pop("folders")
    with pytest.raises(SourceError, match=r"unknown key 'sets.mirror\[0\].folder' \(did you mean 'folders'"):
        load()
    mirror["folders"] = mirror.pop("folder")
    raw["sets"]["mirror"] = []
    with pytest.raises(SourceError, match=r"'sets.mirror' must be a non-empty list of sources"):
        load()
    with pytest.raises(SourceError, match=r"sources: file not found: .*nowhere.yaml"):
        load_sources(tmp_path / "nowhere.yaml")


def test_prepare_use_must_name_a_set_of_the_sources_file(image_tree: Path, repo: Path, tmp_path: Path, monkeypatch):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["use"] = "nope"
    write_sources(tmp_path / "sources.yaml", {"p": [photo_source(image_tree, name="p")], "q": []})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ABCD_DATA", raising=False)
    with pytest.raises(SourceError, match=r"'sets.q' must be a non-empty list"):
        main(PREPARE_ARGS)
    write_sources(tmp_path / "sources.yaml", {"p": [photo_source(image_tree, name="p")]})
    with pytest.raises(SourceError, match=r"prepare.use is 'nope'; choose one of auto, p"):
        main(PREPARE_ARGS)
    assert not Path("prep").exists()


def test_layout_keeps_the_source_names_unless_two_files_collide() -> None:
    files = [
        File("s", "ants", "s/train/ants/a.jpg", "a.jpg", Path("x")),
        File("s", "ants", "s/val/ants/a.jpg", "a.jpg", Path("y")),
        File("s", "ants", "s/val/ants/b.jpg", "b.jpg", Path("z")),
        File("t", "bees", "t/bees/a.jpg", "a.jpg", Path("w")),
    ]
    assert layout(files) == {
        "s/train/ants/a.jpg": "ants/s/train/ants/a.jpg",
        "s/val/ants/a.jpg": "ants/s/val/ants/a.jpg",
        "s/val/ants/b.jpg": "ants/b.jpg",
        "t/bees/a.jpg": "bees/a.jpg",
    }


def test_every_found_file_is_kept_or_skipped_with_a_reason(image_tree: Path, repo: Path, tmp_path: Path, monkeypatch):
    """Counts per class that leave images over are reported as not_in_split, not dropped silently."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"].update(use="p", split={"train": 4, "val": 2, "test": 2})
    report = prepare_in(tmp_path, params, {"p": [photo_source(image_tree, name="p")]}, monkeypatch)
    for label, counts in report["per_class"].items():
        assert counts["found"] == counts["kept"] + counts["skipped"] == 10, label
        assert counts["skipped_by_reason"] == {"not_in_split": 2}
        assert (counts["train"], counts["val"], counts["test"]) == (4, 2, 2)
    assert {s["kind"] for s in report["skipped"]} == {"not_in_split"} and len(report["skipped"]) == 8
