"""HTTP service: the exported model (by default the int8 one) behind FastAPI on uvicorn, and a page to try it.

    abcd-serve [--host 127.0.0.1] [--port 8000] [--model models/model.int8.onnx] [--params params.yaml]  # make serve

``POST /predict``: multipart upload, one or more images in the field ``files``. Per file: the
class or ``unknown``, its probability, every class probability, the unknown score, or an
error for a file that is not a usable image (prepare's decode rules: pixel limit, no animated
files; CMYK, alpha and 16-bit converted to RGB). 200 when at least one file is an image,
415 when none is (or the request is not multipart), 400 when it has no file, 413 for a file
over ``serve.max_file_mb`` or more than ``serve.max_files`` files. ``GET /health``: model,
classes, backbone, checkpoint version. ``GET /``: the page (no CDN: it is one file served here).
The model is loaded once; no torch is imported.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from abcd.core.cli import run
from abcd.core.params import ServeParams
from abcd.data.images import ImageError
from abcd.inference.pipeline import Prediction, classify, decode_upload
from abcd.serving.onnx_model import OnnxClassifier, OnnxRuntime
from abcd.serving.predict import DEFAULT_ONNX
from abcd.serving.settings import serve_settings

FIELD = "files"
# Multipart framing around each file (boundary, headers): slack on top of the file-size limit.
PART_OVERHEAD = 64 * 1024


def _error(status: int, detail: str, results: list[dict] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "results": results or []}, status_code=status)


def _result(filename: str, classes: Sequence[str], found: Prediction | str) -> dict:
    """One file's JSON: its prediction, or (a string) why it could not be used."""
    if isinstance(found, str):
        return {
            "filename": filename,
            "prediction": None,
            "probability": None,
            "probabilities": None,
            "unknown_score": None,
            "error": found,
        }
    return {
        "filename": filename,
        "prediction": found.label,
        "probability": found.probability,
        "probabilities": dict(zip(classes, map(float, found.probs))),
        "unknown_score": found.score,
        "error": None,
    }


async def _read_files(form: FormData, limits: ServeParams) -> list[tuple[str, bytes]] | JSONResponse:
    """(filename, bytes) of each upload in the field, or the 400/413 response that refuses them."""
    uploads = [f for f in form.getlist(FIELD) if isinstance(f, UploadFile)]
    if not uploads:
        return _error(400, f"no file in the field '{FIELD}'")
    files = []
    for upload in uploads:
        data = await upload.read(limits.max_file_bytes + 1)
        if len(data) > limits.max_file_bytes:
            return _error(413, f"{upload.filename}: over {limits.max_file_mb:g} MB per file (serve.max_file_mb)")
        files.append((upload.filename or "", data))
    return files


class Classifier:
    """The model's runtime and the upload rules; one inference at a time (onnxruntime already uses every core)."""

    def __init__(self, runtime: OnnxRuntime, max_pixels: int | None, batch_size: int):
        self.runtime = runtime
        self.max_pixels, self.batch_size = max_pixels, batch_size
        self._lock = threading.Lock()

    def decode(self, data: bytes) -> np.ndarray | str:
        """The RGB image, or why it cannot be used."""
        if not data:
            return "empty file"
        try:
            return decode_upload(data, self.max_pixels)
        except ImageError as err:
            # Pillow names the stream it was given (an object address): noise for the client.
            return re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", err.reason)

    def classify(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        with self._lock:
            return classify(self.runtime, images, self.batch_size)


def create_app(
    model: OnnxClassifier,
    limits: ServeParams,
    *,
    max_pixels: int | None,
    batch_size: int = 12,
    method: str | None = None,
    threshold: float | None = None,
) -> FastAPI:
    """The app around a loaded model; ``method``/``threshold`` default to those recorded at export."""
    clf = Classifier(OnnxRuntime(model, model.detector(method, threshold)), max_pixels, batch_size)
    rule = clf.runtime.rule
    page = resources.files("abcd.serving").joinpath("static/index.html").read_text(encoding="utf-8")
    app = FastAPI(title="ants, bees, cats, dogs", version=model.meta["checkpoint"]["sha256"][:12])
    classes = model.classes

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model.path.name,
            "classes": classes,
            "backbone": model.meta["backbone"],
            "checkpoint": model.meta["checkpoint"],
            "method": rule.name,
            "threshold": rule.threshold,
            "limits": {"max_file_mb": limits.max_file_mb, "max_files": limits.max_files, "max_pixels": max_pixels},
        }

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(415, f"send multipart/form-data with one or more images in the field '{FIELD}'")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_files * (limits.max_file_bytes + PART_OVERHEAD):
            return _error(
                413,
                f"request of {int(length)} bytes: over {limits.max_files} files x {limits.max_file_mb:g} MB",
            )
        try:
            form = await request.form(max_files=limits.max_files)
        except HTTPException as err:  # Starlette: malformed multipart, or more files than max_files
            too_many = "Too many files" in str(err.detail)
            detail = f"more than {limits.max_files} files per request (serve.max_files)" if too_many else err.detail
            return _error(413 if too_many else 400, str(detail))
        try:
            files = await _read_files(form, limits)
        finally:
            await form.close()
        if isinstance(files, JSONResponse):
            return files
        decoded = [await run_in_threadpool(clf.decode, data) for _, data in files]
        images = [d for d in decoded if not isinstance(d, str)]
        found = iter(await run_in_threadpool(clf.classify, images) if images else [])
        results = [
            _result(name, classes, d if isinstance(d, str) else next(found)) for (name, _), d in zip(files, decoded)
        ]
        if not images:
            return _error(415, "no file is a usable image", results)
        doc = {"method": rule.name, "threshold": rule.threshold, "results": results}
        return JSONResponse(doc)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model", type=Path, default=Path(DEFAULT_ONNX), help="int8 (dvc repro quantize) or fp32 (models/model.onnx)"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        help="reads serve.*, prepare.max_pixels, predict.batch_size; default: ./params.yaml if it exists, "
        "else the model's stored batch size and the limits params.yaml ships with",
    )
    args = parser.parse_args(argv)
    model = OnnxClassifier(args.model)
    config = serve_settings(args.params, model.meta.get("predict"), str(args.model))
    print(f"serve: limits and batch size from {config.source}", file=sys.stderr)
    app = create_app(model, config.limits, max_pixels=config.max_pixels, batch_size=config.batch_size)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port)


def cli() -> None:
    run(main, "serve")


if __name__ == "__main__":
    cli()
