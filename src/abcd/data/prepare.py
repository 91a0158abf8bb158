"""What prepare does to the photos of a source: validate every file, drop duplicates, take per class, split, report."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from abcd.core.params import PrepareParams, SplitParams
from abcd.core.preprocess import MAX_ASPECT
from abcd.data.dedupe import Item, dhash, find_duplicates
from abcd.data.images import (
    ImageError,
    Sample,
    Skipped,
    has_image_extension,
    load_rgb,
    split_counts,
    stratified_split,
)
from abcd.data.sources import (
    Opened,
    SourcesFile,
    choose_set,
    describe,
    list_files,
    open_source,
    resolve_path,
)

SPLITS = ("train", "val", "test")


# The order of the "skipped by reason" columns in the report.
SKIP_KINDS = (
    "unsupported_extension",
    "undecodable",
    "too_large",
    "animated",
    "exact_duplicate",
    "near_duplicate",
    "conflicting_classes",
    "over_take",
    "not_in_split",
)


@dataclass(frozen=True)
class File:
    """One file found under a class folder of a source."""

    source: str
    label: str
    key: str  # <source>/<folder>/<rel>: unique and machine-independent
    rel: str  # path below the class folder
    path: Path


@dataclass
class Inspected:
    items: list[Item] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    source_of: dict[str, str] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "hash": 0.0})


def inspect_files(files: Sequence[File], max_pixels: int) -> Inspected:
    """Validate every file (extension, full decode, pixel and aspect limits, not animated) and hash the valid ones."""
    out = Inspected()
    for f in files:
        if not has_image_extension(f.path):
            reason = f"unsupported extension {f.path.suffix or '(none)'}"
            out.skipped.append(Skipped(f.key, reason, "unsupported_extension"))
            continue
        t0 = time.perf_counter()
        try:
            rgb = load_rgb(f.path, max_pixels, allow_animated=False, max_aspect=MAX_ASPECT)
        except ImageError as err:
            out.skipped.append(Skipped(f.key, err.reason, err.kind))
            continue
        finally:
            out.seconds["decode"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        item = Item(f.key, f.label, hashlib.sha256(f.path.read_bytes()).hexdigest(), dhash(rgb))
        out.seconds["hash"] += time.perf_counter() - t0
        out.items.append(item)
        out.paths[f.key] = f.path
        out.source_of[f.key] = f.source
    return out


def take_per_class(
    items: Sequence[Item], source_of: dict[str, str], takes: dict[str, int | str]
) -> tuple[list[Item], list[Skipped]]:
    """At most ``takes[source]`` items per class and source, chosen by content hash.

    The choice depends on the files only, not on ``seed``: changing the split seed changes
    the split and nothing upstream of it.
    """
    kept: list[Item] = []
    skipped: list[Skipped] = []
    groups: dict[tuple[str, str], list[Item]] = {}
    for item in items:
        groups.setdefault((source_of[item.key], item.label), []).append(item)
    for (source, label), group in groups.items():
        take = takes[source]
        ranked = sorted(group, key=lambda i: i.sha256)
        n = len(ranked) if take == "all" else int(take)
        kept.extend(ranked[:n])
        for item in ranked[n:]:
            reason = f"over the limit of {n} {label} images from source '{source}' (take)"
            skipped.append(Skipped(item.key, reason, "over_take"))
    return sorted(kept, key=lambda i: i.key), skipped


def layout(files: Sequence[File]) -> dict[str, str]:
    """key -> path below ``images/``: ``<class>/<rel>``, the source's own layout, as long as no two
    files share it; files that would collide go to ``<class>/<key>`` instead."""
    wanted = {f.key: f"{f.label}/{f.rel}" for f in files}
    taken = Counter(wanted.values())
    label_of = {f.key: f.label for f in files}
    return {key: target if taken[target] == 1 else f"{label_of[key]}/{key}" for key, target in wanted.items()}


def split_sizes(split: SplitParams) -> dict[str, float | str]:
    return {name: getattr(split, name) for name in SPLITS}


def build_report(
    files: Sequence[File],
    skipped: Sequence[Skipped],
    splits: dict[str, list[Sample]],
    classes: Sequence[str],
    chosen: str,
    why: str,
    opened: Sequence[Opened],
    split: SplitParams,
) -> dict:
    """The data report: per class found/kept/skipped by reason/per split, and every skipped file."""
    label_of = {f.key: f.label for f in files}
    found = Counter(f.label for f in files)
    kinds = Counter((label_of[s.path], s.kind) for s in skipped)
    per_split = {name: Counter(s.label for s in items) for name, items in splits.items()}
    per_class = {}
    for c in classes:
        kept = sum(per_split[name][c] for name in SPLITS)
        by_reason = {k: kinds[(c, k)] for k in SKIP_KINDS if kinds[(c, k)]}
        per_class[c] = {
            "found": found[c],
            "kept": kept,
            "skipped": sum(by_reason.values()),
            "skipped_by_reason": by_reason,
            **{name: per_split[name][c] for name in SPLITS},
        }
    return {
        "source_set": chosen,
        "chosen_by": why,
        "sources": describe(opened),
        "split": split_sizes(split),
        "totals": {
            "found": len(files),
            "kept": sum(len(v) for v in splits.values()),
            "skipped": len(skipped),
            **{name: len(splits[name]) for name in SPLITS},
        },
        "per_class": per_class,
        "skipped": [{"file": s.path, "class": label_of[s.path], "kind": s.kind, "reason": s.reason} for s in skipped],
    }


def summary_table(report: dict) -> str:
    """A plain-text table of the per-class counts."""
    head = ("class", "found", "kept", "skipped", *SPLITS)
    rows = [head]
    for c, r in report["per_class"].items():
        rows.append((c, *(str(r[k]) for k in ("found", "kept", "skipped", *SPLITS))))
    t = report["totals"]
    rows.append(("total", *(str(t[k]) for k in ("found", "kept", "skipped", *SPLITS))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows
    ]
    reasons: Counter[str] = Counter()
    for r in report["per_class"].values():
        reasons.update(r["skipped_by_reason"])
    if reasons:
        lines.append("skipped by reason: " + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items())))
    return "\n".join(lines)


def sample_grid(
    splits: dict[str, list[Sample]], classes: Sequence[str], per_split: int, load: Callable[[str], np.ndarray]
) -> Image.Image:
    """Rows: classes; columns: ``per_split`` pictures of each split (the first of the shuffled split)."""
    cell, pad, left, top = 112, 4, 56, 22
    cols = per_split * len(SPLITS)
    grid = Image.new("RGB", (left + cols * (cell + pad) + pad, top + len(classes) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for k, name in enumerate(SPLITS):
        draw.text((left + k * per_split * (cell + pad) + pad, 4), name, fill="black")
    for r, label in enumerate(classes):
        y = top + r * (cell + pad) + pad
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for k, name in enumerate(SPLITS):
            picks = [s for s in splits[name] if s.label == label][:per_split]
            for j, s in enumerate(picks):
                thumb = ImageOps.pad(Image.fromarray(load(s.path)), (cell, cell), color="white")
                grid.paste(thumb, (left + (k * per_split + j) * (cell + pad) + pad, y))
    return grid


def prepare(
    params: PrepareParams,
    sources_file: SourcesFile,
    classes: Sequence[str],
    seed: int,
    cwd: Path,
    env: dict[str, str],
) -> tuple[dict[str, list[Sample]], dict, dict[str, tuple[Path, str]], dict[str, float]]:
    """Everything but the writing.

    Returns the splits (of keys), the data report, key -> (file, path below ``images/``), timings in seconds.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    chosen, why = choose_set(params.use, sources_file.sets, classes, cwd, env)
    sources = sources_file.sets[chosen]
    cache = resolve_path(sources_file.downloads, cwd)
    opened = [open_source(s, cwd, cache) for s in sources]
    files = [File(o.params.name, label, key, rel, path) for o in opened for label, key, rel, path in list_files(o)]
    timings["fetch_and_list"] = time.perf_counter() - t0

    inspected = inspect_files(files, params.max_pixels)
    timings["validate"] = inspected.seconds["decode"]  # extension, header, full decode, RGB conversion
    timings["hash"] = inspected.seconds["hash"]  # sha256 of the bytes + dHash of the decoded picture

    t0 = time.perf_counter()
    duplicates = find_duplicates(sorted(inspected.items, key=lambda i: i.key), params.near_duplicate_bits)
    dropped = {d.key for d in duplicates}
    unique = [i for i in inspected.items if i.key not in dropped]
    takes = {s.name: s.take for s in sources}
    kept, over = take_per_class(unique, inspected.source_of, takes)
    skipped = sorted(
        [*inspected.skipped, *(Skipped(d.key, d.reason, d.kind) for d in duplicates), *over], key=lambda s: s.path
    )
    counts = Counter(i.label for i in kept)
    sizes = split_sizes(params.split)
    for c in classes:
        split_counts(counts[c], sizes, c)  # a clear error for a class with too few images
    splits = stratified_split([Sample(i.key, i.label) for i in kept], sizes, seed)
    placed = {s.path for items in splits.values() for s in items}
    unused = [
        Skipped(i.key, "not needed: prepare.split asks for fewer images of this class", "not_in_split")
        for i in kept
        if i.key not in placed
    ]
    skipped = sorted([*skipped, *unused], key=lambda s: s.path)
    timings["dedupe_and_split"] = time.perf_counter() - t0
    report = build_report(files, skipped, splits, classes, chosen, why, opened, params.split)
    targets = layout([f for f in files if f.key in placed])
    return splits, report, {key: (inspected.paths[key], target) for key, target in targets.items()}, timings
