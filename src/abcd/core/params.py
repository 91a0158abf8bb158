"""Typed, validated view of ``params.yaml``.

Every stage reads the file once through :func:`load_params`. The schema is the
dataclasses below; defaults live in ``params.yaml`` only, so every key is
required and a missing, misspelled or out-of-range key fails at once with the
allowed values named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from abcd.core.registry import BACKBONES, CLASS_WEIGHTS, HEAD_INITS, OPTIMIZERS, SCHEDULERS, UNKNOWN_METHODS
from abcd.core.schema import ParamsError, build, check, plain


@dataclass(frozen=True)
class SplitParams:
    """Fractions of each class (three numbers in (0, 1) that sum to 1), or counts per class
    (whole numbers >= 1; ``test: rest`` gives the test split every image left over)."""

    train: float
    val: float
    test: float | Literal["rest"]

    def __post_init__(self) -> None:
        values = (self.train, self.val, self.test)
        if all(isinstance(v, float) and 0.0 < v < 1.0 for v in values):
            total = sum(values)
            check(abs(total - 1.0) < 1e-6, "prepare.split", f"fractions that sum to 1 (they sum to {total:g})")
            return
        counts = (self.train, self.val) + (() if self.test == "rest" else (self.test,))
        check(
            all(v >= 1 and float(v).is_integer() for v in counts) and (self.test == "rest" or self.test >= 1),
            "prepare.split",
            "fractions in (0, 1) that sum to 1, or counts per class (whole numbers >= 1; test may be 'rest')",
        )


@dataclass(frozen=True)
class PrepareParams:
    # Which named set of the sources file (data/sources.yaml) to read: "auto" = the first set whose
    # local paths all exist. The environment variable ABCD_DATA overrides it (see README: Data).
    use: str
    split: SplitParams
    max_pixels: int
    near_duplicate_bits: int  # dHash Hamming distance (of 64 bits) at or below which two pictures are one
    grid_samples: int  # pictures per class and split in plots/data/samples.png

    def __post_init__(self) -> None:
        check(self.max_pixels >= 1, "prepare.max_pixels", "an integer >= 1")
        check(0 <= self.near_duplicate_bits < 64, "prepare.near_duplicate_bits", "an integer in [0, 63]")
        check(self.grid_samples >= 0, "prepare.grid_samples", "an integer >= 0")


@dataclass(frozen=True)
class ModelParams:
    backbone: Annotated[str, BACKBONES]
    dropout: float

    def __post_init__(self) -> None:
        check(0.0 <= self.dropout < 1.0, "model.dropout", "a probability in [0, 1)")


@dataclass(frozen=True)
class AugmentParams:
    scale: tuple[float, float]
    hflip: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    rotate: float  # max degrees either way; 0 = off
    blur: float  # probability of a Gaussian blur
    noise: float  # probability of Gaussian pixel noise

    def __post_init__(self) -> None:
        lo, hi = self.scale
        check(0.0 < lo <= hi <= 1.0, "augment.scale", "[min, max] with 0 < min <= max <= 1")
        check(0.0 <= self.hflip <= 1.0, "augment.hflip", "a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            check(0.0 <= getattr(self, name) <= 1.0, f"augment.{name}", "a value in [0, 1]")
        check(0.0 <= self.hue <= 0.5, "augment.hue", "a value in [0, 0.5]")
        check(0.0 <= self.rotate <= 180.0, "augment.rotate", "degrees in [0, 180]")
        for name in ("blur", "noise"):
            check(0.0 <= getattr(self, name) <= 1.0, f"augment.{name}", "a probability in [0, 1]")


@dataclass(frozen=True)
class FeaturizeParams:
    views: int
    batch_size: int

    def __post_init__(self) -> None:
        check(self.views >= 1, "featurize.views", "an integer >= 1")
        check(self.batch_size >= 1, "featurize.batch_size", "an integer >= 1")


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    optimizer: Annotated[str, OPTIMIZERS]
    weight_decay: float
    scheduler: Annotated[str, SCHEDULERS]
    warmup_epochs: int
    trainable_blocks: int
    backbone_lr: float
    label_smoothing: float
    class_weights: Annotated[str, CLASS_WEIGHTS]
    grad_clip: float
    patience: int
    resume: bool
    deterministic: bool
    calibrate: bool
    init: Annotated[str, HEAD_INITS]
    probe_c: list[float]

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "train.epochs", "an integer >= 1")
        check(self.batch_size >= 1, "train.batch_size", "an integer >= 1")
        check(self.weight_decay >= 0, "train.weight_decay", "a number >= 0")
        check(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs", "an integer in [0, train.epochs)")
        check(self.trainable_blocks >= 0, "train.trainable_blocks", "an integer >= 0 (0: frozen backbone)")
        check(self.backbone_lr > 0, "train.backbone_lr", "a number > 0")
        check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", "a value in [0, 1)")
        check(self.grad_clip >= 0, "train.grad_clip", "a max gradient norm >= 0 (0: off)")
        check(self.patience >= 0, "train.patience", "an integer >= 0 (0: no early stopping)")
        check(
            bool(self.probe_c) and all(c > 0 for c in self.probe_c),
            "train.probe_c",
            "a non-empty list of numbers > 0 (inverse L2 strengths, e.g. [0.1, 1.0])",
        )


@dataclass(frozen=True)
class RuntimeParams:
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "fp32", "bf16"]
    num_workers: int | Literal["auto"]
    # Ranks that featurize and fine-tuning run as (src/abcd/features/distributed.py); auto: one per CUDA GPU, else 1.
    processes: int | Literal["auto"]

    def __post_init__(self) -> None:
        if isinstance(self.num_workers, int):
            check(self.num_workers >= 0, "runtime.num_workers", "an integer >= 0 or 'auto'")
        if isinstance(self.processes, int):
            check(self.processes >= 1, "runtime.processes", "an integer >= 1 or 'auto' (one per GPU)")


@dataclass(frozen=True)
class PredictParams:
    threshold: float
    batch_size: int

    def __post_init__(self) -> None:
        check(0.0 <= self.threshold <= 1.0, "predict.threshold", "a probability in [0, 1]")
        check(self.batch_size >= 1, "predict.batch_size", "an integer >= 1")


@dataclass(frozen=True)
class UnknownParams:
    method: Annotated[str, UNKNOWN_METHODS]
    false_reject: float
    knn_k: int
    ood_crops: bool

    def __post_init__(self) -> None:
        check(0.0 <= self.false_reject < 0.5, "unknown.false_reject", "a fraction in [0, 0.5), e.g. 0.02")
        check(self.knn_k >= 1, "unknown.knn_k", "an integer >= 1")

    def fit_kwargs(self) -> dict[str, Any]:
        """What fitting the detectors at train time reads (the method is chosen at predict time)."""
        return {"false_reject": self.false_reject, "knn_k": self.knn_k}


@dataclass(frozen=True)
class EvaluateParams:
    ece_bins: int
    bootstrap: int
    ci: float
    worst_mistakes: int

    def __post_init__(self) -> None:
        check(self.ece_bins >= 1, "evaluate.ece_bins", "an integer >= 1")
        check(self.bootstrap >= 1, "evaluate.bootstrap", "an integer >= 1")
        check(0.0 < self.ci < 1.0, "evaluate.ci", "a level in (0, 1), e.g. 0.95")
        check(self.worst_mistakes >= 0, "evaluate.worst_mistakes", "an integer >= 0")


@dataclass(frozen=True)
class ServeParams:
    """Limits, timeouts and batching of the HTTP service (src/abcd/serving/app.py, docs/deploy.md)."""

    max_file_mb: float
    max_files: int
    max_request_mb: float
    max_fields: int
    pixels_in_flight: int
    body_timeout_s: float
    shutdown_timeout_s: int
    batch_size: int
    batch_wait_ms: float

    def __post_init__(self) -> None:
        check(self.max_file_mb > 0, "serve.max_file_mb", "a size in MB > 0, e.g. 20")
        check(self.max_files >= 1, "serve.max_files", "an integer >= 1, e.g. 32")
        check(self.max_request_mb >= self.max_file_mb, "serve.max_request_mb", "a size in MB >= serve.max_file_mb")
        check(self.max_fields >= 0, "serve.max_fields", "an integer >= 0, e.g. 16")
        check(self.pixels_in_flight >= 1, "serve.pixels_in_flight", "an integer >= 1, e.g. 64000000")
        check(self.body_timeout_s > 0, "serve.body_timeout_s", "seconds > 0, e.g. 30")
        check(self.shutdown_timeout_s >= 0, "serve.shutdown_timeout_s", "whole seconds >= 0, e.g. 10")
        check(self.batch_size >= 1, "serve.batch_size", "an integer >= 1, e.g. 2")
        check(self.batch_wait_ms >= 0, "serve.batch_wait_ms", "milliseconds >= 0, e.g. 5")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1_000_000)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1_000_000)


@dataclass(frozen=True)
class Params:
    seed: int
    classes: list[str]
    # The head's lr: top-level, not in train, so that `dvc exp run -S lr=...` works as written.
    lr: float
    prepare: PrepareParams
    model: ModelParams
    augment: AugmentParams
    featurize: FeaturizeParams
    train: TrainParams
    runtime: RuntimeParams
    evaluate: EvaluateParams
    predict: PredictParams
    unknown: UnknownParams
    serve: ServeParams

    def __post_init__(self) -> None:
        check(len(self.classes) >= 2, "classes", "a list of at least two class names")
        check(self.lr > 0, "lr", "a number > 0")
        check(len(set(self.classes)) == len(self.classes), "classes", "distinct class names")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (tuples as lists), safe for JSON and ``weights_only`` checkpoints."""
        return plain(dataclasses.asdict(self))


def parse_params(data: Any) -> Params:
    """Validate a parsed params mapping into :class:`Params`."""
    train = data.get("train") if isinstance(data, dict) else None
    if isinstance(train, dict) and "lr" in train:
        # The key moved out of train so that `-S lr=` works: say where, rather than "did you mean backbone_lr".
        raise ParamsError(f"params: 'train.lr' is the top-level 'lr' (dvc exp run -S lr={train['lr']})")
    prepare = data.get("prepare") if isinstance(data, dict) else None
    if isinstance(prepare, dict) and ("sources" in prepare or "downloads" in prepare):
        raise ParamsError(
            "params: 'prepare.sources' moved to the sources file data/sources.yaml (as 'sets', beside "
            "'downloads'); params.yaml keeps 'prepare.use' to pick a set"
        )
    return build(Params, data, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"params: {path} is not valid YAML: {err}") from err
    try:
        return parse_params(data)
    except ParamsError as err:
        raise ParamsError(f"{err} (in {path})") from None
