"""Typed, validated view of ``params.yaml``.

Every stage reads the file once through :func:`load_params`. The schema is the
pydantic models below; defaults live in ``params.yaml`` only, so every key is
required and a missing, misspelled or out-of-range key fails at once with the
allowed values named (abcd.core.schema words the message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from abcd.core.registry import BACKBONES, CLASS_WEIGHTS, HEAD_INITS, OPTIMIZERS, SCHEDULERS, UNKNOWN_METHODS
from abcd.core.schema import Number, Pair, ParamsError, Schema, build, check, read_yaml

# The constraints that several keys share; each field's description is what its error says it must be.
Count = Annotated[int, Field(ge=1, description="an integer >= 1")]
Probability = Annotated[Number, Field(ge=0, le=1, description="a probability in [0, 1]")]
Unit = Annotated[Number, Field(ge=0, le=1, description="a value in [0, 1]")]
Auto = Literal["auto"]


class SplitParams(Schema):
    """Fractions of each class (three numbers in (0, 1) that sum to 1), or counts per class
    (whole numbers >= 1; ``test: rest`` gives the test split every image left over)."""

    train: Number
    val: Number
    test: Number | Literal["rest"]

    @model_validator(mode="after")
    def _fractions_or_counts(self) -> SplitParams:
        values = (self.train, self.val, self.test)
        if all(isinstance(v, float) and 0.0 < v < 1.0 for v in values):
            total = sum(values)
            check(abs(total - 1.0) < 1e-6, f"fractions that sum to 1 (they sum to {total:g})")
            return self
        counts = (self.train, self.val) + (() if self.test == "rest" else (self.test,))
        check(
            all(v >= 1 and float(v).is_integer() for v in counts),
            "fractions in (0, 1) that sum to 1, or counts per class (whole numbers >= 1; test may be 'rest')",
        )
        return self


class PrepareParams(Schema):
    # Which named set of the sources file (data/sources.yaml) to read: "auto" = the first set whose
    # local paths all exist. The environment variable ABCD_DATA overrides it (see README: Data).
    use: str
    split: SplitParams
    max_pixels: Count
    # dHash Hamming distance (of 64 bits) at or below which two pictures are one
    near_duplicate_bits: Annotated[int, Field(ge=0, le=63, description="an integer in [0, 63]")]
    grid_samples: Annotated[int, Field(ge=0, description="an integer >= 0")]  # per class and split in the grid


class ModelParams(Schema):
    backbone: Annotated[str, BACKBONES]
    dropout: Annotated[Number, Field(ge=0, lt=1, description="a probability in [0, 1)")]


class AugmentParams(Schema):
    scale: Annotated[Pair, Field(description="[min, max] with 0 < min <= max <= 1")]
    hflip: Probability
    brightness: Unit
    contrast: Unit
    saturation: Unit
    hue: Annotated[Number, Field(ge=0, le=0.5, description="a value in [0, 0.5]")]
    rotate: Annotated[Number, Field(ge=0, le=180, description="degrees in [0, 180]")]  # either way; 0 = off
    blur: Probability  # of a Gaussian blur
    noise: Probability  # of Gaussian pixel noise

    @field_validator("scale")
    @classmethod
    def _ordered(cls, scale: tuple[float, float]) -> tuple[float, float]:
        lo, hi = scale
        check(0.0 < lo <= hi <= 1.0, "[min, max] with 0 < min <= max <= 1")
        return scale


class FeaturizeParams(Schema):
    views: Count
    batch_size: Count


class TrainParams(Schema):
    epochs: Count
    batch_size: Count
    optimizer: Annotated[str, OPTIMIZERS]
    weight_decay: Annotated[Number, Field(ge=0, description="a number >= 0")]
    scheduler: Annotated[str, SCHEDULERS]
    warmup_epochs: Annotated[int, Field(ge=0, description="an integer in [0, train.epochs)")]
    trainable_blocks: Annotated[int, Field(ge=0, description="an integer >= 0 (0: frozen backbone)")]
    backbone_lr: Annotated[Number, Field(gt=0, description="a number > 0")]
    label_smoothing: Annotated[Number, Field(ge=0, lt=1, description="a value in [0, 1)")]
    class_weights: Annotated[str, CLASS_WEIGHTS]
    grad_clip: Annotated[Number, Field(ge=0, description="a max gradient norm >= 0 (0: off)")]
    patience: Annotated[int, Field(ge=0, description="an integer >= 0 (0: no early stopping)")]
    resume: bool
    deterministic: bool
    calibrate: bool
    init: Annotated[str, HEAD_INITS]
    probe_c: Annotated[
        list[Annotated[Number, Field(gt=0)]],
        Field(min_length=1, description="a non-empty list of numbers > 0 (inverse L2 strengths, e.g. [0.1, 1.0])"),
    ]

    @field_validator("warmup_epochs")
    @classmethod
    def _before_the_last_epoch(cls, warmup: int, info: ValidationInfo) -> int:
        check(warmup < info.data.get("epochs", warmup + 1), "an integer in [0, train.epochs)")
        return warmup


class RuntimeParams(Schema):
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "fp32", "bf16"]
    num_workers: Annotated[Annotated[int, Field(ge=0)] | Auto, Field(description="an integer >= 0 or 'auto'")]
    # Ranks that featurize and fine-tuning run as (src/abcd/features/distributed.py); auto: one per CUDA GPU, else 1.
    processes: Annotated[
        Annotated[int, Field(ge=1)] | Auto, Field(description="an integer >= 1 or 'auto' (one per GPU)")
    ]


class PredictParams(Schema):
    threshold: Probability
    batch_size: Count


class UnknownParams(Schema):
    method: Annotated[str, UNKNOWN_METHODS]
    false_reject: Annotated[Number, Field(ge=0, lt=0.5, description="a fraction in [0, 0.5), e.g. 0.02")]
    knn_k: Count

    def fit_kwargs(self) -> dict[str, Any]:
        """What fitting the detectors at train time reads (the method is chosen at predict time)."""
        return {"false_reject": self.false_reject, "knn_k": self.knn_k}


class OodParams(Schema):
    """The OOD branch (ood_data -> ood_featurize -> ood_test -> ood_evaluate): unknown detection measured
    on photos that are none of the classes. The classifier's stages never read it."""

    # auto: on iff a route to the Debian packages' photos exists; true: a missing route fails ood_data.
    evaluate: Annotated[bool | Auto, Field(description="true, false or 'auto'")]
    # Which route of the OOD sources file (data/ood_sources.yaml) to read, or auto: the first that has every file.
    use: str
    crops: bool  # besides each whole photo, its 4 quadrant crops


class EvaluateParams(Schema):
    ece_bins: Count
    bootstrap: Count
    ci: Annotated[Number, Field(gt=0, lt=1, description="a level in (0, 1), e.g. 0.95")]
    worst_mistakes: Annotated[int, Field(ge=0, description="an integer >= 0")]


class QuantizeParams(Schema):
    """The int8 model (stage quantize, src/abcd/serving/quantize.py)."""

    calibration_images: Count  # training images that set the activation ranges
    # Backbone modules left in fp32 (timm's module paths, e.g. conv_stem, blocks.0); the stage fails on a name
    # the exported backbone does not have.
    keep_fp32: list[str]


class ServeParams(Schema):
    """Limits, timeouts and batching of the HTTP service (src/abcd/serving/app.py, docs/deploy.md)."""

    max_file_mb: Annotated[Number, Field(gt=0, description="a size in MB > 0, e.g. 20")]
    max_files: Annotated[int, Field(ge=1, description="an integer >= 1, e.g. 32")]
    max_request_mb: Annotated[Number, Field(gt=0, description="a size in MB >= serve.max_file_mb")]
    max_fields: Annotated[int, Field(ge=0, description="an integer >= 0, e.g. 16")]
    pixels_in_flight: Annotated[int, Field(ge=1, description="an integer >= 1, e.g. 64000000")]
    body_timeout_s: Annotated[Number, Field(gt=0, description="seconds > 0, e.g. 30")]
    shutdown_timeout_s: Annotated[int, Field(ge=0, description="whole seconds >= 0, e.g. 10")]
    batch_size: Count
    batch_wait_ms: Annotated[Number, Field(ge=0, description="milliseconds >= 0, e.g. 5")]

    @field_validator("max_request_mb")
    @classmethod
    def _at_least_one_file(cls, mb: float, info: ValidationInfo) -> float:
        check(mb >= info.data.get("max_file_mb", mb), "a size in MB >= serve.max_file_mb")
        return mb

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1_000_000)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1_000_000)


class Params(Schema):
    seed: int
    classes: Annotated[list[str], Field(min_length=2, description="a list of at least two class names")]
    # The head's lr: top-level, not in train, so that `dvc exp run -S lr=...` works as written.
    lr: Annotated[Number, Field(gt=0, description="a number > 0")]
    prepare: PrepareParams
    model: ModelParams
    augment: AugmentParams
    featurize: FeaturizeParams
    train: TrainParams
    runtime: RuntimeParams
    evaluate: EvaluateParams
    predict: PredictParams
    unknown: UnknownParams
    ood: OodParams
    quantize: QuantizeParams
    serve: ServeParams

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        check(len(set(classes)) == len(classes), "distinct class names")
        return classes

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (tuples as lists), safe for JSON and ``weights_only`` checkpoints."""
        return self.model_dump(mode="json")


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
    unknown = data.get("unknown") if isinstance(data, dict) else None
    if isinstance(unknown, dict) and "ood_crops" in unknown:
        raise ParamsError("params: 'unknown.ood_crops' moved to 'ood.crops' (the OOD branch's own section)")
    return build(Params, data, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    data = read_yaml(path, "params", error=ParamsError)
    try:
        return parse_params(data)
    except ParamsError as err:
        raise ParamsError(f"{err} (in {path})") from None
