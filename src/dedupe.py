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


def _near_pairs(hashes: np.ndarray, max_bits: int, block: int = 512) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j with Hamming distance <= max_bits; O(n^2) in blocks of rows."""
    pairs = []
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(dist <= max_bits)):
            a = start + int(i)
            if a < j:
                pairs.append((a, int(j), int(dist[i, j])))
    return pairs


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
