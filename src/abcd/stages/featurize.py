"""Stage `featurize`: run the frozen backbone once and cache pooled features.

Training images get ``featurize.views`` augmented views each (training samples one
view per epoch) and their eval view (``eval_features``, which the linear probe behind
``train.init: probe`` is fitted on); validation and test images get the
deterministic eval view. Each image is decoded once: its views are drawn from that one
decode. The backbone's weights are saved beside the features (``backbone.pt``) for
train's checkpoint. Any head-only change (lr, epochs, optimizer) then re-runs only
`train` onwards, and the test stage applies the trained head to the cached test
features instead of re-running the backbone (see src/abcd/features/cache.py). The OOD
set's features are ood_featurize's, a stage of the OOD branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from abcd.core.cli import run, stage_args
from abcd.core.params import load_params
from abcd.features.distributed import run_stage
from abcd.features.extract import featurize


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_args(
        __doc__,
        argv,
        reads={"data": "prepared dataset (manifests, images)"},
        writes={"out": "feature cache directory"},
    )
    params = load_params(args.params)
    # runtime.processes > 1: this command becomes the launcher of that many ranks.
    return run_stage("abcd.stages.featurize", argv, params.runtime, partial(featurize, args.data, args.out, params))


if __name__ == "__main__":
    run(main, "featurize")
