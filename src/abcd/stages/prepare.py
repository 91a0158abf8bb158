"""Stage `prepare`: fetch the sources, validate every file, drop duplicates, split, copy in.

Which named set of the sources file (``--sources``, data/sources.yaml) is read: ``$ABCD_DATA`` if
set, else ``prepare.use`` (``auto``: the first set whose local paths exist). See docs/data.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_dir, atomic_file, atomic_write_text
from abcd.core.params import load_params
from abcd.data.images import (
    Sample,
    load_rgb,
    write_manifest,
)
from abcd.data.prepare import (
    SPLITS,
    prepare,
    sample_grid,
    summary_table,
)
from abcd.data.sources import (
    ENV_USE,
    load_sources,
)


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={"sources": "sources file: named sets of places photos come from (data/sources.yaml)"},
        writes={
            "out": "prepared dataset directory",
            "report": "data report JSON: totals, per class counts, every skipped file and why",
            "grid": "PNG grid of sample pictures per class and split",
        },
        optional=("grid",),
    )
    params = load_params(args.params)
    sources = load_sources(args.sources)
    start = time.perf_counter()

    splits, report, files, timings = prepare(
        params.prepare, sources, params.classes, params.seed, Path.cwd(), dict(os.environ)
    )
    for s in report["skipped"]:
        print(f"skipped {s['file']}: {s['reason']}", file=sys.stderr)

    t0 = time.perf_counter()
    # Built beside the output and swapped in at the end: an interrupted run never leaves
    # a half-copied dataset that looks complete.
    with atomic_dir(args.out) as tmp:
        for name, items in splits.items():
            local = []
            for s in items:
                source, rel = files[s.path]
                (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, tmp / "images" / rel)
                local.append(Sample((args.out / "images" / rel).as_posix(), s.label))
            write_manifest(tmp / f"{name}.csv", local)
    timings["copy"] = time.perf_counter() - t0

    atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
    if args.grid is not None:
        t0 = time.perf_counter()
        grid = sample_grid(splits, params.classes, params.prepare.grid_samples, lambda key: load_rgb(files[key][0]))
        with atomic_file(args.grid) as tmp:
            grid.save(tmp, format="PNG")
        timings["grid"] = time.perf_counter() - t0
    totals = report["totals"]

    print(f"prepare: source set '{report['source_set']}' ({report['chosen_by']}; override with ${ENV_USE})")
    print(summary_table(report))
    timings["total"] = time.perf_counter() - start
    print("prepare: timings " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    sizes = ", ".join(f"{name} {totals[name]}" for name in SPLITS)
    print(f"prepare: kept {totals['kept']} images, skipped {totals['skipped']}; {sizes} -> {args.out}")


if __name__ == "__main__":
    run(main, "prepare")
