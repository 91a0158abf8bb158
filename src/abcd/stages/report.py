"""Stage `report`: a Markdown summary of the workspace's run, for a pull-request comment.

Metrics with their bootstrap confidence intervals, per-class scores, the data report
and the plots as images (links relative to the report). It reads the full JSON reports of
both branches (``reports/data.json``, ``train.json``, ``test.json``; the OOD branch's ``ood_data.json``
and ``unknown.json``, which may say it was not evaluated), not the metrics files: those hold only the
numbers DVC compares.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_write_text
from abcd.core.params import load_params
from abcd.evaluation.report import PLOTS, _read, render


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "reports": "directory with data/train/test/ood_data/unknown.json (the full reports)",
            "plots": "plots directory",
        },
        writes={"out": "Markdown report"},
    )
    params = load_params(args.params)
    links = [
        (title, Path(os.path.relpath(args.plots / rel, args.out.parent)).as_posix())
        for title, rel in PLOTS
        if (args.plots / rel).is_file()
    ]
    text = render(
        _read(args.reports / "data.json"),
        _read(args.reports / "train.json"),
        _read(args.reports / "test.json"),
        params,
        links,
        _read(args.reports / "unknown.json"),
        _read(args.reports / "ood_data.json"),
    )
    atomic_write_text(args.out, text)
    print(f"report: {args.out}")


if __name__ == "__main__":
    run(main, "report")
