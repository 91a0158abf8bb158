"""Stage `ood_data`: assemble the out-of-distribution photo set (``abcd.oodset``), or say why not.

The Debian packages' photos are read through a route of the OOD sources file (``--sources``,
data/ood_sources.yaml): ``$ABCD_OOD`` if set, else ``ood.use`` (``auto``: the first route with every
file). Every route gives the same ``--out``; the data report (``--report``) says which was read. With
``ood.evaluate`` false, or auto and no route, ``--out`` holds only the reason and the OOD branch's later
stages pass it on. Evaluation only: nothing fits on these photos. See ``abcd.oodset.assemble``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_write_text
from abcd.core.params import load_params
from abcd.data.ood_manifest import write_not_evaluated
from abcd.oodset.assemble import build_ood_set
from abcd.oodset.photos import DEB, PHOTOS
from abcd.oodset.routes import ENV_USE, choose_route, load_ood_sources


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={"sources": "OOD sources file: the routes to the Debian packages' photos (data/ood_sources.yaml)"},
        writes={
            "out": "OOD set directory (images, manifest.csv, SOURCES.md), or the reason it is not evaluated",
            "report": "data report JSON: the route read (or why none), what each route lacks, the counts",
        },
    )
    params = load_params(args.params).ood
    sources = load_ood_sources(args.sources)
    choice = choose_route(params.evaluate, params.use, sources, PHOTOS, Path.cwd(), dict(os.environ))
    report = choice.report()
    if choice.root is None:
        write_not_evaluated(args.out, choice.why)
        print(f"ood_data: not evaluated: {choice.why}")
    else:
        n = build_ood_set(args.out, params.crops, choice.root)
        deb = sum(p.source == DEB for p in PHOTOS)
        report.update(photos=len(PHOTOS), deb_photos=deb, pip_photos=len(PHOTOS) - deb, images=n)
        print(
            f"ood_data: {n} images from {len(PHOTOS)} distinct photos -> {args.out}; the {deb} Debian ones "
            f"through route '{choice.name}' ({sources.routes[choice.name]}; {choice.why}; override with ${ENV_USE})"
        )
    atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    run(main, "ood_data")
