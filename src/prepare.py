"""Stage `prepare`: validate the source photos, copy them in, split them into manifests.

python -m src.prepare --out data/prepared --report metrics/data.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from src.cli import run
from src.data import Sample, Skipped, scan_source, stratified_split, write_manifest
from src.fileio import atomic_dir, atomic_write_text
from src.params import load_params

SPLITS = ("train", "val", "test")


def summarize(
    found: Sequence[Sample], skipped: Sequence[Skipped], splits: dict[str, list[Sample]], classes: Sequence[str]
) -> dict:
    """Counts for the data report: kept/skipped overall, and per split and class."""
    return {
        "kept": len(found),
        "skipped": len(skipped),
        "per_class": {c: sum(s.label == c for s in found) for c in classes},
        "split": {
            name: {"total": len(items), **{c: n for c, n in sorted(Counter(s.label for s in items).items())}}
            for name, items in splits.items()
        },
    }


def resolve_source(source: str, cwd: Path) -> Path:
    """An absolute path for ``prepare.source``, which is relative to the repo root.

    DVC runs queued and ``--temp`` experiments in a copy of the repo under
    ``<repo>/.dvc/tmp/exps/``, where a path such as ``../shared/...`` would point
    inside ``.dvc``; there it is resolved against the repo the copy was made from.
    """
    path = Path(source).expanduser()
    if path.is_absolute():
        return path
    root = cwd.resolve()
    parts = root.parts
    if ".dvc" in parts:
        i = parts.index(".dvc")
        if parts[i + 1 : i + 3] == ("tmp", "exps"):
            root = Path(*parts[:i])
    return (root / path).resolve()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory")
    parser.add_argument("--report", type=Path, required=True, help="metrics JSON: kept/skipped/split counts")
    args = parser.parse_args(argv)
    params = load_params(args.params)

    source = resolve_source(params.prepare.source, Path.cwd())
    samples, skipped = scan_source(source, params.classes, params.prepare.max_pixels)
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    if not samples:
        raise SystemExit(f"prepare: no usable images under {source}")
    split = params.prepare.split
    splits = stratified_split(samples, {name: getattr(split, name) for name in SPLITS}, params.seed)

    report = summarize(samples, skipped, splits, params.classes)
    # Built beside the output and swapped in at the end: an interrupted run never leaves
    # a half-copied dataset that looks complete.
    with atomic_dir(args.out) as tmp:
        for name, items in splits.items():
            local = []
            for s in items:
                # Keep the path below the class folder: two sub-folders may reuse a file name.
                rel = Path(s.label) / Path(s.path).relative_to(source / s.label)
                (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(s.path, tmp / "images" / rel)
                local.append(Sample((args.out / "images" / rel).as_posix(), s.label))
            write_manifest(tmp / f"{name}.csv", local)
        with (tmp / "skipped.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("path", "reason"))
            writer.writerows((s.path, s.reason) for s in skipped)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    # The tracked metric stays small so that `dvc exp show` keeps its columns for results.
    totals = {name: counts["total"] for name, counts in report["split"].items()}
    counts = {"kept": report["kept"], "skipped": report["skipped"], **totals}
    atomic_write_text(args.report, json.dumps({"data": counts}, indent=2) + "\n")
    sizes = ", ".join(f"{name} {n}" for name, n in totals.items())
    print(f"prepare: kept {report['kept']} images, skipped {report['skipped']}; {sizes} -> {args.out}")


if __name__ == "__main__":
    run(main, "prepare")
