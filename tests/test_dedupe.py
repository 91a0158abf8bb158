"""The sub-quadratic near-duplicate search finds exactly the pairs of the O(n^2) one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from abcd.data.dedupe import _near_pairs, _quadratic_pairs, band_masks, dhash
from tests.conftest import CLASSES


def _with_near_copies(rng: np.random.Generator, n: int, copies: int, max_flips: int) -> np.ndarray:
    """n random hashes plus ``copies`` of them with 0..max_flips random bits flipped (exact copies included)."""
    hashes = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    idx = rng.integers(0, n, copies)
    flips = np.zeros(copies, dtype=np.uint64)
    for t in range(copies):
        for bit in rng.choice(64, rng.integers(0, max_flips + 1), replace=False):
            flips[t] |= np.uint64(1) << np.uint64(bit)
    return np.concatenate([hashes, hashes[idx] ^ flips])


@pytest.mark.parametrize("max_bits", [0, 1, 4, 6, 10])
def test_same_pairs_as_quadratic_on_random_hashes(max_bits: int) -> None:
    hashes = _with_near_copies(np.random.default_rng(max_bits), 2000, 600, max_bits + 2)
    expected = _quadratic_pairs(hashes, max_bits)
    assert len(expected) > 100  # planted pairs within max_bits exist, and some just beyond it
    assert _near_pairs(hashes, max_bits) == expected


def test_runs_of_equal_keys_and_degenerate_hashes() -> None:
    """Many identical hashes (flat pictures hash to 0) and a few bits off them: every pair still found."""
    rng = np.random.default_rng(7)
    hashes = np.concatenate(
        [
            np.zeros(50, dtype=np.uint64),
            np.uint64(1) << rng.integers(0, 64, 30).astype(np.uint64),
            _with_near_copies(rng, 300, 50, 5),
        ]
    )
    assert _near_pairs(hashes, 4) == _quadratic_pairs(hashes, 4)
    assert _near_pairs(hashes[:1], 4) == [] and _near_pairs(hashes[:0], 4) == []


def test_band_masks_cover_every_bit_and_pairs_of_bands() -> None:
    masks = band_masks(4)
    assert len(masks) == 15  # C(6, 2)
    assert np.bitwise_or.reduce(np.array(masks, dtype=np.uint64)) == np.uint64(2**64 - 1)
    assert {int(np.bitwise_count(m)) for m in masks} <= {20, 21, 22}  # bands of 10 or 11 bits
    with pytest.raises(ValueError, match="max_bits"):
        band_masks(63)


@pytest.mark.slow
def test_same_pairs_as_quadratic_on_the_mirror(shared_photos: Path) -> None:
    """The mirror's photos and a re-encoded, downscaled copy of every fifth: real dHashes are far from uniform."""
    hashes = []
    for label in CLASSES:
        for k, path in enumerate(sorted((shared_photos / label).iterdir())):
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            hashes.append(dhash(rgb))
            if k % 5 == 0:
                small = Image.fromarray(rgb).resize((max(1, rgb.shape[1] // 2), max(1, rgb.shape[0] // 2)))
                hashes.append(dhash(np.asarray(small)))
    hashes = np.array(hashes, dtype=np.uint64)
    for max_bits in (4, 8, 12):
        expected = _quadratic_pairs(hashes, max_bits)
        assert len(expected) >= len(hashes) // 6  # at least most of the planted copies
        assert _near_pairs(hashes, max_bits) == expected
