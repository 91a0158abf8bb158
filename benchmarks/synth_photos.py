"""Synthetic photo sets for the growth benchmark: unique pictures made from the mirror's photos.

Each picture is a random crop (30-80% of the area, aspect 3:4 to 4:3) of a mirror photo of
its class, flipped or not, scaled to a short side of 160-320 px, with its colour channels
scaled by 0.8-1.2 and saved at JPEG quality 70-95. A candidate is kept only if its dHash,
computed on the decoded file exactly as prepare does, is more than ``max_bits`` from every
picture kept so far (all classes): prepare's near-duplicate rule keeps all of them.

Then a known number of planted duplicates, each of a different kept picture, in the same
class, named to sort after every original (prepare keeps the first key of a group):
exact (the same bytes) and near (re-encoded at quality 60, 90% of the size, dHash within
``max_bits``). The list is written to ``planted.json``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from abcd.data.dedupe import dhash

SOURCE_SIDE = 480  # mirror photos are cut down to this short side once: crops then stay fast


def _load_sources(folder: Path) -> list[Image.Image]:
    out = []
    for path in sorted(folder.iterdir()):
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((SOURCE_SIDE * 2, SOURCE_SIDE * 2))
            out.append(im.copy())
    return out


def _variant(im: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = im.size
    area = rng.uniform(0.3, 0.8) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = im.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    side = int(rng.integers(160, 321))
    scale = side / min(crop.size)
    crop = crop.resize((max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))))
    rgb = np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(70, 96)))
    return buf.getvalue()


def _file_dhash(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as im:
        return dhash(np.asarray(im.convert("RGB")))


def build_set(
    mirror: Path, dest: Path, classes: list[str], n: int, planted: int, max_bits: int = 4, seed: int = 0
) -> dict:
    """``n`` unique pictures (n / len(classes) per class) + ``planted`` exact and ``planted`` near copies."""
    if dest.exists():
        shutil.rmtree(dest)
    rng = np.random.default_rng(seed)
    hashes = np.zeros(0, dtype=np.uint64)
    originals: dict[str, list[Path]] = {}
    rejected = 0
    for k, label in enumerate(classes):
        sources = _load_sources(mirror / label)
        (dest / label).mkdir(parents=True)
        want = n // len(classes) + (k < n % len(classes))
        originals[label] = []
        while len(originals[label]) < want:
            data = _variant(sources[int(rng.integers(len(sources)))], rng)
            h = _file_dhash(data)
            if len(hashes) and np.bitwise_count(hashes ^ np.uint64(h)).min() <= max_bits:
                rejected += 1
                continue
            hashes = np.append(hashes, np.uint64(h))
            path = dest / label / f"u{len(originals[label]):06d}.jpg"
            path.write_bytes(data)
            originals[label].append(path)
    exact, near = [], []
    picks = rng.permutation([p for paths in originals.values() for p in paths])[: 2 * planted]
    for i, original in enumerate(picks):
        original = Path(original)
        if i < planted:
            copy = original.with_name(f"zz-exact-{i:05d}.jpg")
            shutil.copyfile(original, copy)
            exact.append({"copy": _key(copy), "of": _key(original)})
            continue
        with Image.open(original) as im:
            im = im.convert("RGB")
            im = im.resize((max(1, im.size[0] * 9 // 10), max(1, im.size[1] * 9 // 10)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=60)
        pair = np.array([_file_dhash(buf.getvalue()), _file_dhash(original.read_bytes())], dtype=np.uint64)
        bits = int(np.bitwise_count(pair[0] ^ pair[1]))
        if bits > max_bits:
            continue  # not a near copy by the rule: not planted
        copy = original.with_name(f"zz-near-{i:05d}.jpg")
        copy.write_bytes(buf.getvalue())
        near.append({"copy": _key(copy), "of": _key(original), "bits": bits})
    info = {"unique": n, "candidates_rejected": rejected, "exact": exact, "near": near}
    (dest / "planted.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _key(path: Path) -> str:
    """class/file: how the copy is named in prepare's data report (after the source's name)."""
    return f"{path.parent.name}/{path.name}"
