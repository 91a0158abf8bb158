"""Stage `ood_data`: assemble the out-of-distribution photo set from installed packages (``abcd.oodset``).

Evaluation only: nothing fits on these photos. See ``abcd.oodset.assemble`` for the halves and crops.
"""

from __future__ import annotations

from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.params import load_params
from abcd.oodset.assemble import build_ood_set
from abcd.oodset.photos import PHOTOS


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(__doc__, argv, writes={"out": "OOD set directory (images, manifest.csv, SOURCES.md)"})
    n = build_ood_set(args.out, load_params(args.params).unknown.ood_crops)
    print(f"ood_data: {n} images from {len(PHOTOS)} distinct photos -> {args.out}")


if __name__ == "__main__":
    run(main, "ood_data")
