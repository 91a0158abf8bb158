"""Classify images; images unlike any class are reported as ``unknown``.

    python -m abcd.serving.predict photo.jpg more/*.png some/dir [--format table|csv|json] [--annotate out/]
        [--runtime torch|onnx]

Inputs are files, directories (searched recursively for images) or glob patterns
(quote them to let this command expand ``**``). Per image: predicted class or
``unknown``, its calibrated probability, every class probability, the unknown score
(higher = less like the training images) and an error for files that could not be
read; the run goes on past them and exits 1 if any failed, 0 otherwise.

``unknown.method`` in params (or --method) picks the detector stored in the checkpoint:
``max_softmax`` is the original rule (max probability below ``predict.threshold``); the
others (``fusion``, the default, ``knn``, ...) use the threshold fitted on validation data.

Settings come from flags first, then from params.yaml (``--params``, or ./params.yaml when
it exists, as inside the repo), else from the model file, which stores the values it was
trained with: a copied ``model.pt`` (or ``model.onnx``) works anywhere on its own.

``--runtime onnx`` runs the exported model (``models/model.int8.onnx``, stage ``quantize``, or
``--model models/model.onnx``, stage ``export``) on onnxruntime and never imports torch: the default when that
file exists, was exported from
``models/model.pt`` (its sha256 is in the export) and no --checkpoint is given; ``torch`` builds the
checkpoint's model.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from abcd.core.cli import run
from abcd.core.errors import UserError
from abcd.core.registry import UNKNOWN_METHODS
from abcd.data.images import IMAGE_EXTENSIONS, ImageError, load_rgb
from abcd.inference.pipeline import UNKNOWN, ModelRuntime, Rule, batches, classify, decode_file
from abcd.serving.settings import Settings, settings

# torch and the modules that import it are imported where the torch runtime runs: with
# --runtime onnx this command must not import torch at all (its import alone is seconds).
if TYPE_CHECKING:
    from abcd.models.checkpoint import LoadedModel
    from abcd.serving.onnx_model import OnnxClassifier

FORMATS = ("table", "csv", "json")
RUNTIMES = ("torch", "onnx")
DEFAULT_CHECKPOINT = "models/model.pt"
# The int8 model (stage quantize): it passes the gates against the fp32 export and runs faster on this CPU
# (docs/deploy.md: The int8 model); --model models/model.onnx runs the fp32 one.
DEFAULT_ONNX = "models/model.int8.onnx"


@dataclass
class Result:
    path: str
    label: str = ""  # a class name, UNKNOWN, or "" when the file could not be read
    probability: float | None = None  # the top class's calibrated probability
    probs: dict[str, float] = field(default_factory=dict)
    unknown_score: float | None = None
    error: str = ""


def expand_inputs(items: Sequence[str]) -> tuple[list[str], list[Result]]:
    """Image paths from files, directories (recursive) and globs, in order, without duplicates.

    A missing file or a directory or glob with no image in it becomes an error result.
    """
    paths: dict[str, None] = {}
    errors: list[Result] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            what = "directory"
        elif glob.has_magic(item) and not path.exists():
            matched = sorted(glob.glob(item, recursive=True))
            found = [p for p in matched if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTENSIONS]
            what = "pattern"
        else:
            paths.setdefault(item)  # a plain path, even if unreadable: its error is reported per file
            continue
        if not found:
            errors.append(Result(item, error=f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this {what}"))
        for p in found:
            paths.setdefault(p)
    return list(paths), errors


def classify_files(runtime: ModelRuntime, paths: Sequence[str], batch_size: int) -> list[Result]:
    """One result per path, in order; images are decoded and run one batch at a time."""
    results: list[Result] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=None if len(paths) > batch_size else True)
    for chunk in batches(paths, batch_size):
        images, ok = [], []
        for path in chunk:
            try:
                images.append(decode_file(path))
                ok.append(Result(path))
            except ImageError as err:
                results.append(Result(path, error=err.reason))
        for r, found in zip(ok, classify(runtime, images, batch_size)):
            r.label, r.probability, r.unknown_score = found.label, found.probability, found.score
            r.probs = {c: float(v) for c, v in zip(runtime.classes, found.probs)}
        results.extend(ok)
        bar.update(len(chunk))
    bar.close()
    order = {p: i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r.path])


# --- output ----------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def format_table(results: Sequence[Result], classes: Sequence[str]) -> str:
    header = ["path", "prediction", "prob", *classes, "unknown_score", "error"]
    rows = [
        [
            r.path,
            r.label,
            _fmt(r.probability),
            *(_fmt(r.probs.get(c)) for c in classes),
            _fmt(r.unknown_score, 4),
            r.error,
        ]
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines) + "\n"


def format_csv(results: Sequence[Result], classes: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "prediction", "probability", *(f"prob_{c}" for c in classes), "unknown_score", "error"])
    for r in results:
        probs = [_fmt(r.probs.get(c), 6) for c in classes]
        writer.writerow([r.path, r.label, _fmt(r.probability, 6), *probs, _fmt(r.unknown_score, 6), r.error])
    return buf.getvalue()


def format_json(results: Sequence[Result], classes: Sequence[str], rule: Rule) -> str:
    doc = {
        "classes": list(classes),
        "method": rule.name,
        "threshold": rule.threshold,
        "temperature": rule.temperature,
        "results": [
            {
                "path": r.path,
                "prediction": r.label or None,
                "probability": r.probability,
                "probabilities": r.probs or None,
                "unknown_score": r.unknown_score,
                "error": r.error or None,
            }
            for r in results
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def annotate(result: Result, out_dir: Path, taken: set[str]) -> Path:
    """Write a copy of the image with its label and probability drawn in the top-left corner."""
    image = Image.fromarray(load_rgb(result.path))
    draw = ImageDraw.Draw(image)
    size = max(12, image.width // 25)
    font = ImageFont.load_default(size=size)
    top = max(result.probs, key=result.probs.__getitem__)
    text = f"{top} {result.probability:.2f}"
    if result.label == UNKNOWN:
        text = f"unknown (best guess {text})"
    box = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill="black")
    draw.text((4, 4), text, fill="white" if result.label != UNKNOWN else "orange", font=font)
    src = Path(result.path)
    name, n = f"{src.stem}.{result.label}{src.suffix.lower()}", 1
    while name in taken:  # same file name from different folders
        n += 1
        name = f"{src.stem}-{n}.{result.label}{src.suffix.lower()}"
    taken.add(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    image.save(out_dir / name)
    return out_dir / name


def torch_runtime(loaded: LoadedModel, config: Settings, method: str, threshold: float) -> ModelRuntime:
    """The checkpoint's model on the device ``config`` names, deciding with its detector ``method``."""
    from abcd.core.params import RuntimeParams
    from abcd.features.runtime import resolve_runtime
    from abcd.inference.torch_model import TorchRuntime
    from abcd.ood.detectors import detector_from_extra

    detector = detector_from_extra(loaded.extra, method, threshold)
    device = resolve_runtime(
        config.runtime or RuntimeParams(device="auto", precision="auto", num_workers="auto", processes=1)
    )
    return TorchRuntime(loaded, device, detector)


def onnx_model_to_use(requested: str | None, checkpoint: Path | None, onnx: Path) -> OnnxClassifier | None:
    """The exported model when asked for, or by default when it exists and was exported from the
    default checkpoint; None: use torch."""
    if requested == "torch" or (requested is None and (checkpoint is not None or not onnx.is_file())):
        return None
    from abcd.serving.onnx_model import OnnxClassifier

    model = OnnxClassifier(onnx)
    default = Path(DEFAULT_CHECKPOINT)
    if requested is None and default.is_file() and not model.exported_from(default):
        print(f"predict: {onnx} was exported from another {default} (dvc repro export); using torch", file=sys.stderr)
        return None
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files, directories or glob patterns")
    parser.add_argument("--checkpoint", type=Path, default=None, help=f"default: {DEFAULT_CHECKPOINT}")
    # --model: the name abcd-serve gives the same file.
    parser.add_argument(
        "--onnx", "--model", type=Path, default=Path(DEFAULT_ONNX), help="exported model, for --runtime onnx"
    )
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default=None, help="default: onnx if the export of the checkpoint exists"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        help="default: ./params.yaml if it exists, else the values stored in the model",
    )
    parser.add_argument(
        "--method", choices=UNKNOWN_METHODS.names(), default=None, help="default: unknown.method (params/model)"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="max_softmax only; default: predict.threshold (params/model)"
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument("--annotate", type=Path, default=None, metavar="DIR", help="write labelled copies here")
    args = parser.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")

    onnx_model = onnx_model_to_use(args.runtime, args.checkpoint, args.onnx)
    if onnx_model is not None:
        config = settings(args.params, onnx_model.meta.get("predict"), str(args.onnx))
    else:
        if importlib.util.find_spec("torch") is None:
            raise UserError(
                "the checkpoint's runtime needs torch, which is not installed (the serve install): "
                "run the exported model instead, --runtime onnx --model path/to/model.onnx"
            )
        from abcd.models.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.checkpoint or Path(DEFAULT_CHECKPOINT), lazy=True)  # built once settings hold
        config = settings(args.params, loaded.extra.get("predict"), loaded.source)
    method = args.method or config.method
    if args.threshold is not None and method != "max_softmax":
        parser.error(f"--threshold applies to --method max_softmax; {method} uses the threshold fitted on val")
    threshold = config.rule_threshold if args.threshold is None else args.threshold

    if onnx_model is not None:
        from abcd.serving.onnx_model import OnnxRuntime

        runtime = OnnxRuntime(onnx_model, onnx_model.detector(method, threshold))
    else:
        runtime = torch_runtime(loaded, config, method, threshold)
    paths, missing = expand_inputs(args.inputs)
    results = missing + classify_files(runtime, paths, config.batch_size)
    classes = runtime.classes

    formatters = {
        "table": lambda: format_table(results, classes),
        "csv": lambda: format_csv(results, classes),
        "json": lambda: format_json(results, classes, runtime.rule),
    }
    sys.stdout.write(formatters[args.format]())
    if args.annotate is not None:
        taken: set[str] = set()
        for r in results:
            if not r.error:
                annotate(r, args.annotate, taken)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"predict: {r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def cli() -> None:
    run(main, "predict")


if __name__ == "__main__":
    cli()
