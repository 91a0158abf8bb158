"""Stage `ood_featurize`: the frozen backbone's pooled features of the OOD set's images (eval view).

The OOD branch's own cache, apart from featurize's: it depends on the backbone and the OOD set, not
on training, so a head-only experiment (lr, epochs) re-runs only ood_test, which applies the new head
and detectors to these features. When the OOD branch is off (``--ood`` holds the reason), ``--out``
holds the same reason and no backbone is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from abcd.core.cli import run, stage_args
from abcd.core.params import load_params
from abcd.data.ood_manifest import not_evaluated, write_not_evaluated
from abcd.features.distributed import run_stage
from abcd.features.extract import featurize_ood


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_args(
        __doc__,
        argv,
        reads={"ood": "OOD set (abcd.stages.ood_data), or the reason it is not evaluated"},
        writes={"out": "the OOD set's feature cache directory"},
    )
    params = load_params(args.params)
    reason = not_evaluated(args.ood)
    if reason is not None:
        write_not_evaluated(args.out, reason)
        print(f"ood_featurize: not evaluated: {reason}")
        return 0
    # runtime.processes > 1: this command becomes the launcher of that many ranks.
    return run_stage(
        "abcd.stages.ood_featurize", argv, params.runtime, partial(featurize_ood, args.ood, args.out, params)
    )


if __name__ == "__main__":
    run(main, "ood_featurize")
