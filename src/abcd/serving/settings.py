"""Where predict's settings come from: flags, else params.yaml, else the model file itself.

A model copied out of the repo works on its own: train stores predict's defaults in the
checkpoint (``extra["predict"]``) and export copies them into the ONNX metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abcd.core.errors import InvalidFileError
from abcd.core.params import RuntimeParams, load_params
from abcd.core.registry import UNKNOWN_METHODS
from abcd.core.schema import build


@dataclass(frozen=True)
class Settings:
    """What predict reads besides the model's weights, and where it came from."""

    method: str  # unknown.method
    rule_threshold: float  # predict.threshold (the original rule's)
    batch_size: int  # predict.batch_size
    runtime: RuntimeParams | None  # the torch runtime's device and precision (None: stored model has none)
    source: str


def settings(params_path: Path | None, stored: Mapping[str, Any] | None, model_source: str) -> Settings:
    """From ``params_path`` (must exist), else ./params.yaml if present, else the model's ``stored`` defaults."""
    if params_path is None and Path("params.yaml").is_file():
        params_path = Path("params.yaml")
    if params_path is not None:
        p = load_params(params_path)
        return Settings(p.unknown.method, p.predict.threshold, p.predict.batch_size, p.runtime, str(params_path))
    if not isinstance(stored, Mapping):
        raise InvalidFileError(
            f"{model_source}: this model stores no predict settings (made before they were saved); "
            "pass --params params.yaml, or retrain it (dvc repro train)"
        )
    runtime = None
    if stored.get("runtime") is not None:
        # runtime.processes is newer than some models, and predict runs one process whatever it says.
        runtime = build(RuntimeParams, {"processes": 1, **stored["runtime"]}, "runtime")
    return Settings(
        UNKNOWN_METHODS.check(stored["method"], "unknown.method"),
        float(stored["rule_threshold"]),
        int(stored["batch_size"]),
        runtime,
        f"{model_source} (no params.yaml here)",
    )
