"""Exact (same bytes) and near (same picture re-encoded or resized) duplicates.

Exact: the sha256 of the file. Near: a 64-bit difference hash (dHash) of the decoded
picture: the picture in grey shrunk to 9x8, one bit per horizontal neighbour pair
("is the left pixel brighter?"). Re-encoding, resizing and mild colour changes move few
bits; different photos differ in about half of them. Two files whose hashes are within
``max_bits`` are the same picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from PIL import Image


def dhash(rgb: np.ndarray) -> int:
    """64-bit difference hash of an HxWx3 uint8 picture."""
    grey = Image.fromarray(rgb).convert("L").resize((9, 8), Image.Resampling.BOX)
    px = np.asarray(grey, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


@dataclass(frozen=True)
class Item:
    """One valid file: a unique key, its class, and its two hashes."""

    key: str
    label: str
    sha256: str
    dhash: int


@dataclass(frozen=True)
class Duplicate:
    """A file left out because of another one: ``kind`` is exact_duplicate, near_duplicate or
    conflicting_classes (the same picture filed under two classes: every copy is left out)."""

    key: str
    kind: str
    reason: str


def _quadratic_pairs(hashes: np.ndarray, max_bits: int, block: int = 512) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j with Hamming distance <= max_bits, comparing every pair: O(n^2).

    The reference :func:`_near_pairs` is tested against (tests/test_dedupe.py)."""
    pairs = []
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(dist <= max_bits)):
            a = start + int(i)
            if a < j:
                pairs.append((a, int(j), int(dist[i, j])))
    return pairs


def band_masks(max_bits: int) -> list[np.uint64]:
    """Masks of every pair of ``max_bits + 2`` contiguous bit bands.

    Pigeonhole: two hashes within ``max_bits`` differ in at most ``max_bits`` bands, so at
    least two of the ``max_bits + 2`` bands are identical, and the pair has the same value
    under one of these masks. Pairs of bands rather than the single bands of plain
    multi-index hashing: a 21-bit key (max_bits 4) makes a random pair collide with
    probability 2^-21 instead of 2^-13, so 1M random hashes give about 2M candidates instead
    of 3*10^8, for 15 sorts instead of 5.
    """
    bands = max_bits + 2
    if not 0 <= max_bits <= 62:
        raise ValueError(f"max_bits must be within 0..62, got {max_bits}")
    edges = np.linspace(0, 64, bands + 1).round().astype(int)
    single = [sum(1 << b for b in range(lo, hi)) for lo, hi in pairwise(edges)]
    return [np.uint64(single[a] | single[b]) for a in range(bands) for b in range(a + 1, bands)]


def _near_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j with Hamming distance <= max_bits, sorted; the pairs of :func:`_quadratic_pairs`.

    Sub-quadratic: only pairs that agree under one of :func:`band_masks` are compared. Per
    mask, a sort by the masked hash puts such pairs in runs; step k compares each position
    with the one k further on while both are in the same run, so the work is the number of
    candidate pairs, not n times the longest run.
    """
    n = len(hashes)
    found_i, found_j, found_d = [], [], []
    for mask in band_masks(max_bits):
        keys = hashes & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        run_end = np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n]))
        active = np.arange(n)
        k = 1
        while True:
            active = active[active + k < run_end[active]]
            if not active.size:
                break
            a, b = order[active], order[active + k]
            dist = np.bitwise_count(hashes[a] ^ hashes[b])
            near = dist <= max_bits
            a, b = a[near], b[near]
            found_i.append(np.minimum(a, b))
            found_j.append(np.maximum(a, b))
            found_d.append(dist[near])
            k += 1
    if not found_i:
        return []
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    # A pair agreeing under several masks is found once per mask.
    _, first = np.unique(i.astype(np.int64) * n + j, return_index=True)
    return [(int(i[f]), int(j[f]), int(d[f])) for f in first]


def find_duplicates(items: Sequence[Item], max_bits: int) -> list[Duplicate]:
    """Group files that are the same picture; keep the first of each single-class group.

    ``items`` order decides which copy is kept (the caller passes them sorted). Groups are
    closed transitively (A~B and B~C puts A, B, C together), so a picture never ends up
    in two splits through a chain of near copies.
    """
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_by_sha: dict[str, int] = {}
    exact: set[int] = set()
    for i, item in enumerate(items):
        if item.sha256 in first_by_sha:
            union(first_by_sha[item.sha256], i)
            exact.add(i)
        else:
            first_by_sha[item.sha256] = i
    distance: dict[int, int] = {}
    if items:
        hashes = np.array([item.dhash for item in items], dtype=np.uint64)
        for i, j, d in _near_pairs(hashes, max_bits):
            union(i, j)
            distance[j] = min(d, distance.get(j, 64))

    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(find(i), []).append(i)
    out: list[Duplicate] = []
    for members in groups.values():
        if len(members) == 1:
            continue
        keys = [items[i].key for i in members]
        labels = sorted({items[i].label for i in members})
        if len(labels) > 1:
            for i in members:
                others = ", ".join(k for k in keys if k != items[i].key)
                out.append(
                    Duplicate(
                        items[i].key,
                        "conflicting_classes",
                        f"the same picture is filed under classes {', '.join(labels)} (copies: {others}); "
                        "all copies left out",
                    )
                )
            continue
        kept = items[members[0]]
        for i in members[1:]:
            if i in exact:
                original = items[first_by_sha[items[i].sha256]].key
                out.append(Duplicate(items[i].key, "exact_duplicate", f"same bytes as {original}"))
            else:
                bits = int(np.bitwise_count(np.uint64(items[i].dhash) ^ np.uint64(kept.dhash)))
                out.append(Duplicate(items[i].key, "near_duplicate", f"same picture as {kept.key} (dHash {bits} bits)"))
    return sorted(out, key=lambda d: d.key)
