"""Where predict's and serve's settings come from: flags, else params.yaml, else the model file itself.

A model copied out of the repo works on its own: train stores predict's defaults in the
checkpoint (``extra["predict"]``) and export copies them into the ONNX metadata. Serve's upload
limits are not in the model: without params.yaml they are the values params.yaml ships with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abcd.core.errors import InvalidFileError
from abcd.core.params import RuntimeParams, ServeParams, load_params
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


def params_file(params_path: Path | None) -> Path | None:
    """``params_path``, else ./params.yaml when there is one (as inside the repo), else None."""
    if params_path is None and Path("params.yaml").is_file():
        return Path("params.yaml")
    return params_path


def settings(params_path: Path | None, stored: Mapping[str, Any] | None, model_source: str) -> Settings:
    """From ``params_path`` (must exist), else ./params.yaml if present, else the model's ``stored`` defaults."""
    params_path = params_file(params_path)
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


# Serve's limits where no params file is around (a serve-only install beside a copied model.onnx):
# the model does not store them, so these are the values params.yaml ships with (a test checks).
SERVE_LIMITS = ServeParams(
    max_file_mb=20,
    max_files=32,
    max_request_mb=64,
    max_fields=16,
    pixels_in_flight=64_000_000,
    body_timeout_s=30,
    shutdown_timeout_s=10,
    batch_size=2,
    batch_wait_ms=5,
)
MAX_PIXELS = 40_000_000  # prepare.max_pixels


@dataclass(frozen=True)
class ServeSettings:
    """What the HTTP service reads besides the model: its limits and batching, the decode limit."""

    limits: ServeParams  # serve.*
    max_pixels: int  # prepare.max_pixels
    source: str


def serve_settings(params_path: Path | None) -> ServeSettings:
    """From ``params_path`` (must exist), else ./params.yaml if present, else :data:`SERVE_LIMITS` and
    :data:`MAX_PIXELS`."""
    params_path = params_file(params_path)
    if params_path is not None:
        p = load_params(params_path)
        return ServeSettings(p.serve, p.prepare.max_pixels, str(params_path))
    return ServeSettings(SERVE_LIMITS, MAX_PIXELS, "the values params.yaml ships with (no params.yaml here)")
