"""Stage `ood_test`: apply the checkpoint to the OOD set; write its predictions CSV (no labels).

Class probabilities and every unknown detector's score per image, from ood_featurize's cache when
it is the checkpoint's own (``abcd.inference.scoring``). When the OOD branch is off (``--ood`` holds the
reason), ``--out`` holds the same reason and the checkpoint is not read.
"""

from __future__ import annotations

from collections.abc import Sequence

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_dir
from abcd.core.params import load_params
from abcd.data.images import Sample
from abcd.data.ood_manifest import OOD_PREDICTIONS, not_evaluated, read_ood_manifest, write_not_evaluated
from abcd.inference.scoring import load_model, write_split_predictions


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "model": "checkpoint",
            "ood": "OOD set written by abcd.stages.ood_data, or the reason it is not evaluated",
            "features": "ood_featurize's cache (used when it is the checkpoint's own)",
        },
        writes={"out": f"directory for the OOD predictions CSV ({OOD_PREDICTIONS})"},
    )
    params = load_params(args.params)
    reason = not_evaluated(args.ood)
    if reason is not None:
        write_not_evaluated(args.out, reason)
        print(f"ood_test: not evaluated: {reason}")
        return
    samples = [Sample(p, None) for p in read_ood_manifest(args.ood / "manifest.csv").paths]
    model = load_model(args.model, params)
    with atomic_dir(args.out) as tmp:
        write_split_predictions(model, "ood", samples, args.features, params.predict.batch_size, tmp / OOD_PREDICTIONS)
    print(f"ood_test: predictions for {len(samples)} OOD images -> {args.out / OOD_PREDICTIONS}")


if __name__ == "__main__":
    run(main, "ood_test")
