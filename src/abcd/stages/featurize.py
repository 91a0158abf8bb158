"""Stage `featurize`: run the frozen backbone once and cache pooled features.

Training images get ``featurize.views`` augmented views each (training samples one
view per epoch) and their eval view (``eval_features``, which the linear probe behind
``train.init: probe`` is fitted on); validation, test and OOD images get the
deterministic eval view. Each image is decoded once: its views are drawn from that one
decode. The backbone's weights are saved beside the features (``backbone.pt``) for
train's checkpoint. Any head-only change (lr, epochs, optimizer) then re-runs only
`train` onwards, and the test stage applies the trained head to the cached test and OOD
features instead of re-running the backbone (see src/abcd/features/cache.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.params import load_params
from abcd.features.distributed import joined, launch, should_launch
from abcd.features.extract import featurize


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_args(
        __doc__,
        argv,
        reads={"data": "prepared dataset (manifests, images)", "ood": "OOD set (abcd.stages.ood_data), scored by test"},
        writes={"out": "feature cache directory"},
    )
    params = load_params(args.params)
    processes = should_launch(params.runtime.processes)
    if processes:  # runtime.processes > 1: this command becomes the launcher of that many ranks
        return launch("abcd.stages.featurize", argv, processes)
    with joined(params.runtime) as (world, runtime):
        featurize(args.data, args.ood, args.out, params, world, runtime)
    return 0


if __name__ == "__main__":
    run(main, "featurize")
