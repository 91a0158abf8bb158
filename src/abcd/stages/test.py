"""Stage `test`: apply the checkpoint to the test split; write its predictions CSV and the detectors' thresholds.

Class probabilities and every unknown detector's score per image (``abcd.inference.scoring``:
featurize's cached features when they are the checkpoint's own). The thresholds (fitted on val)
and the temperature go to ``--detectors``, so that `ood_evaluate` needs no torch. No metrics here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from abcd.core.cli import run, stage_args
from abcd.core.fileio import atomic_write_text
from abcd.core.params import load_params
from abcd.data.images import read_manifest
from abcd.inference.scoring import load_model, write_split_predictions


def detectors_summary(extra: Mapping[str, Any]) -> dict[str, Any]:
    """What judging the scores needs: temperature, target false-reject rate, thresholds."""
    fitted = extra.get("unknown", {})
    return {
        "temperature": float(extra.get("temperature", 1.0)),
        "false_reject": extra.get("unknown_false_reject"),
        "thresholds": {name: float(v["threshold"]) for name, v in fitted.items()},
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        argv,
        reads={
            "model": "checkpoint",
            "data": "prepared dataset (test manifest, images)",
            "features": "featurize's cache (used when it is the checkpoint's own)",
        },
        writes={"out": "test predictions CSV", "detectors": "JSON: temperature and detector thresholds"},
    )
    params = load_params(args.params)
    model = load_model(args.model, params)
    samples = read_manifest(args.data / "test.csv", params.classes)
    write_split_predictions(model, "test", samples, args.features, params.predict.batch_size, args.out)
    atomic_write_text(args.detectors, json.dumps(detectors_summary(model.loaded.extra), indent=2) + "\n")
    print(f"test: predictions for {len(samples)} test images -> {args.out}")


if __name__ == "__main__":
    run(main, "test")
