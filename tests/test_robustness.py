"""Bad input never crashes, hangs or runs away: fuzzed image bytes, bombs, bad params per stage."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from abcd.core.cli import run
from abcd.data.images import ImageError, load_rgb
from abcd.stages import (
    evaluate,
    featurize,
    ood_data,
    ood_evaluate,
    ood_featurize,
    ood_test,
    prepare,
    report,
    test,
    train,
)
from tests.conftest import examples

# Each example must finish well inside this (ms): a hang or a runaway decode fails the test.
DEADLINE_MS = 2000


def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    out = {}
    for fmt, mode in (
        ("JPEG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("BMP", "RGB"),
        ("WEBP", "RGB"),
        ("TIFF", "CMYK"),
    ):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
        out[f"{fmt}-{mode}"] = buf.getvalue()
    return out


SEEDS = _seed_images()


def _check_outcome(path: Path) -> None:
    """The only two allowed outcomes: an HxWx3 uint8 array, or an ImageError naming the file."""
    try:
        arr = load_rgb(path, max_pixels=4_000_000)
    except ImageError as err:
        assert str(path) in str(err) and err.reason
        event("clear per-file error")  # counted in --hypothesis-show-statistics
        return
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    event("decoded to RGB")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns on corrupt EXIF before failing
@settings(max_examples=examples(300), deadline=DEADLINE_MS, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_random_bytes_decode_or_fail_cleanly(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.jpg"
    path.write_bytes(data)
    _check_outcome(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=examples(400), deadline=DEADLINE_MS, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_mutated_images_decode_or_fail_cleanly(tmp_path: Path, seed: str, flips, cut) -> None:
    data = bytearray(SEEDS[seed])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = tmp_path / "mutated.img"
    path.write_bytes(bytes(data))
    _check_outcome(path)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds almost no data (a bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(8_000, 8_000))  # 64 megapixels in a 100-byte file
    with pytest.raises(ImageError, match=r"8000x8000 pixels exceeds the limit of 40000000 \(prepare.max_pixels\)"):
        load_rgb(path, max_pixels=40_000_000)
    # Far larger ones are refused by Pillow's own guard while reading the header, limit or not.
    path.write_bytes(_png_header_only(50_000, 50_000))  # 2.5 gigapixels, 7.5 GB as RGB
    for limit in (40_000_000, None):
        with pytest.raises(ImageError, match=r"bomb\.png: cannot decode as an image \(DecompressionBombError"):
            load_rgb(path, max_pixels=limit)


def test_an_image_just_under_the_limit_decodes(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    Image.new("RGB", (100, 50), "red").save(path)
    assert load_rgb(path, max_pixels=5000).shape == (50, 100, 3)
    with pytest.raises(ImageError, match="exceeds the limit of 4999"):
        load_rgb(path, max_pixels=4999)


STAGES = {
    "prepare": (prepare.main, ["--sources", "data/sources.yaml", "--out", "o", "--report", "r.json"]),
    "featurize": (featurize.main, ["--data", "d", "--out", "o"]),
    "train": (
        train.main,
        [
            *("--features", "f", "--data", "d", "--model", "m", "--last", "k", "--logdir", "l"),
            *("--metrics", "x", "--report", "r", "--history", "h"),
        ],
    ),
    "test": (test.main, ["--model", "m", "--data", "d", "--features", "f", "--out", "o", "--detectors", "j"]),
    "evaluate": (evaluate.main, ["--predictions", "p", "--metrics", "m", "--report", "r", "--plots", "o"]),
    "ood_data": (ood_data.main, ["--sources", "s.yaml", "--out", "o", "--report", "r.json"]),
    "ood_featurize": (ood_featurize.main, ["--ood", "q", "--out", "o"]),
    "ood_test": (ood_test.main, ["--model", "m", "--ood", "q", "--features", "f", "--out", "o"]),
    "ood_evaluate": (
        ood_evaluate.main,
        [
            *("--predictions", "p", "--detectors", "j", "--ood", "q", "--ood-predictions", "u"),
            *("--metrics", "m", "--report", "r", "--plots", "o"),
        ],
    ),
    "report": (report.main, ["--reports", "r", "--plots", "p", "--out", "o"]),
}
BAD = [
    (("train", "epochs"), 0, r"'train.epochs' must be an integer >= 1"),
    (("prepare", "split"), {"train": 0.5, "val": 0.2, "test": 0.2}, r"'prepare.split' must be fractions that sum to 1"),
    (("predict", "threshold"), 2, r"'predict.threshold' must be a probability in \[0, 1\]"),
    (("runtime", "precision"), "half", r"'runtime.precision' must be one of 'auto', 'fp32', 'bf16'"),
    (("train", "optimiser"), "adam", r"unknown key 'train.optimiser' \(did you mean 'optimizer'\?\)"),
    (("evaluate", "ci"), 95, r"'evaluate.ci' must be a level in \(0, 1\)"),
]


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[".".join(b[0]) for b in BAD])
def test_every_stage_refuses_bad_params_before_any_work(
    stage: str, key: tuple[str, str], value, message: str, repo: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[key[0]][key[1]] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    main, args = STAGES[stage]
    monkeypatch.setattr(sys, "argv", [stage, *args])
    with pytest.raises(SystemExit) as exit_info:
        run(main, stage)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{stage}: error: params:")
    assert len(err.strip().splitlines()) == 1  # one precise line, no traceback
    import re

    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_unknown_choices_fail_at_stage_start(repo: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["backbone"] = "resnet9"
    params["train"]["scheduler"] = "linear"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    backbone = "params: 'model.backbone': unknown backbone 'resnet9'; choose one of efficientnet_lite0, "
    for stage in STAGES:  # every stage checks every choice at params load, also those that build no backbone
        main, args = STAGES[stage]
        monkeypatch.setattr(sys, "argv", [stage, *args])
        with pytest.raises(SystemExit):
            run(main, stage)
        assert capsys.readouterr().err.startswith(f"{stage}: error: {backbone}"), stage
    params["model"]["backbone"] = "resnet18"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    main, args = STAGES["train"]
    monkeypatch.setattr(sys, "argv", ["train", *args])
    with pytest.raises(SystemExit):
        run(main, "train")
    expected = "params: 'train.scheduler': unknown scheduler 'linear'; choose one of none, cosine, step"
    assert capsys.readouterr().err.startswith(f"train: error: {expected}")
