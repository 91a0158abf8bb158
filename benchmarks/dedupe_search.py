"""Near-duplicate search on random 64-bit hashes: the sub-quadratic search against the O(n^2) one.

    python benchmarks/dedupe_search.py [--n 1000000] [--sample 20000] [--max-bits 4]

Times abcd.data.dedupe._near_pairs on --n random hashes (plus 1% planted near copies, so that
groups exist), and checks on --sample other hashes (also 1% near copies) that it finds exactly the pairs,
and so the groups, of the quadratic search. A benchmark, not a test: tests/test_dedupe.py
checks correctness on every run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from abcd.data.dedupe import _near_pairs, _quadratic_pairs


def planted(n: int, seed: int = 0) -> np.ndarray:
    """n hashes: 99% random, 1% copies of them with 0..5 bits flipped (some beyond the rule)."""
    rng = np.random.default_rng(seed)
    copies = n // 100
    hashes = rng.integers(0, np.iinfo(np.uint64).max, n - copies, dtype=np.uint64, endpoint=True)
    src = rng.integers(0, n - copies, copies)
    bits = rng.integers(0, 64, (copies, 5)).astype(np.uint64)
    keep = np.arange(5)[None, :] < rng.integers(0, 6, copies)[:, None]
    flips = np.bitwise_or.reduce(np.where(keep, np.uint64(1) << bits, np.uint64(0)), axis=1)
    out = np.concatenate([hashes, hashes[src] ^ flips])
    return out[rng.permutation(n)]


def groups(n: int, pairs: list[tuple[int, int, int]]) -> set[frozenset[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[max(find(i), find(j))] = min(find(i), find(j))
    by_root: dict[int, set[int]] = {}
    for i in range(n):
        by_root.setdefault(find(i), set()).add(i)
    return {frozenset(g) for g in by_root.values() if len(g) > 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=20_000)
    ap.add_argument("--max-bits", type=int, default=4)
    args = ap.parse_args()
    hashes = planted(args.n)
    t0 = time.perf_counter()
    pairs = _near_pairs(hashes, args.max_bits)
    fast = time.perf_counter() - t0
    print(f"sub-quadratic search, {args.n} hashes: {fast:.1f} s, {len(pairs)} pairs within {args.max_bits} bits")
    sample = planted(args.sample, seed=1)  # its own 1% of near copies
    t0 = time.perf_counter()
    expected = _quadratic_pairs(sample, args.max_bits)
    slow = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = _near_pairs(sample, args.max_bits)
    fast_sample = time.perf_counter() - t0
    same = got == expected and groups(len(sample), got) == groups(len(sample), expected)
    print(
        f"{args.sample}-hash sample: quadratic {slow:.1f} s, sub-quadratic {fast_sample:.2f} s, "
        f"{len(expected)} pairs, {len(groups(len(sample), expected))} groups; identical: {same}"
    )
    if not same:
        raise SystemExit("the searches disagree")


if __name__ == "__main__":
    main()
