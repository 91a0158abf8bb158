"""HTTP service: the exported model (by default the int8 one) behind FastAPI on uvicorn, and a page to try it.

    abcd-serve [--host 127.0.0.1] [--port 8000] [--model models/model.int8.onnx] [--params params.yaml] [--workers N]
    uvicorn --factory abcd.serving.app:create_app_from_env   # settings from ABCD_SERVE_* (docs/deploy.md)

(``make serve`` runs the first.)

``POST /predict``: multipart upload, one or more images in the field ``files``. Per file: the
class or ``unknown``, its probability, every class probability, the unknown score, or an
error for a file that is not a usable image (prepare's decode rules: pixel and aspect limits,
no animated files; CMYK, alpha and 16-bit converted to RGB). 200 when at least one file is an
image, 415 when none is (or the request is not multipart), 400 when it has no file, 413 past a
limit of ``serve`` in params (file, files, request body, form fields), 408 when the client stops
sending its body. ``GET /health``: liveness, with the model, classes, backbone, checkpoint
version, limits and forward passes so far; ``GET /ready``: 200 once a warm-up pass has run, else
503. ``GET /``: the page (no CDN: it is one file served here). ``/docs`` only with ``--docs`` (its
assets come from a CDN). The model is loaded once per worker; no torch is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from abcd.core.cli import run
from abcd.core.params import ServeParams
from abcd.inference.pipeline import Prediction
from abcd.serving.batching import Inference
from abcd.serving.limits import MAX_FIELD_BYTES, BodyLimits
from abcd.serving.logs import ACCESS_LOGS, AccessLog, default_handlers, log_config
from abcd.serving.onnx_model import OnnxClassifier, OnnxRuntime
from abcd.serving.predict import DEFAULT_ONNX
from abcd.serving.settings import params_file, serve_settings

FIELD = "files"
# What uvicorn's workers read, since it builds each worker's app by calling the factory with no arguments.
ENV = {k: f"ABCD_SERVE_{k.upper()}" for k in ("model", "params", "threads", "access_log", "docs")}


def _error(status: int, detail: str, results: list[dict] | None = None, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "results": results or []}, status_code=status, headers=headers or None)


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


def _form_error(err: HTTPException, limits: ServeParams) -> JSONResponse:
    """Starlette's 400 for a form it would not parse, as 413 for a limit crossed or a 400 that says why."""
    detail = str(err.detail)
    if "Too many files" in detail:
        return _error(413, f"more than {limits.max_files} files per request (serve.max_files)")
    if "Too many fields" in detail:
        return _error(413, f"more than {limits.max_fields} non-file form fields per request (serve.max_fields)")
    if "exceeded maximum size" in detail:
        return _error(413, f"a non-file form field over {MAX_FIELD_BYTES // 1024} KB")
    causes, cause = [], err.__context__
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if any("Maximum header size exceeded" in c for c in causes):
        detail = "a part's headers are over 4 KB (python-multipart's limit): file names up to about 4,000 characters"
    return _error(400, detail)


class Service:
    """What the routes share: the model's rule and classes, the limits, the inference path, readiness."""

    def __init__(self, model: OnnxClassifier, runtime: OnnxRuntime, limits: ServeParams, inference: Inference):
        self.model, self.rule, self.classes = model, runtime.rule, model.classes
        self.limits, self.inference = limits, inference
        self.page = resources.files("abcd.serving").joinpath("static/index.html").read_text(encoding="utf-8")
        self.ready = threading.Event()

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        async def warm_up() -> None:
            await asyncio.to_thread(self.inference.warm_up)
            self.ready.set()

        warming = asyncio.create_task(warm_up())  # in the background: /health answers meanwhile
        try:
            yield
        finally:
            await warming
            await asyncio.to_thread(self.inference.close)


def _service(request: Request) -> Service:
    return request.app.state.service


# HEAD beside each GET, out of the OpenAPI schema (one operation per path there).
routes = APIRouter()


@routes.get("/", response_class=HTMLResponse)
@routes.head("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> str:
    return _service(request).page


@routes.get("/health")
@routes.head("/health", include_in_schema=False)
async def health(request: Request) -> dict[str, Any]:
    service = _service(request)
    meta, limits, batcher = service.model.meta, service.limits, service.inference.batcher
    return {
        "status": "ok",
        "model": service.model.path.name,
        "classes": service.classes,
        "backbone": meta["backbone"],
        "checkpoint": meta["checkpoint"],
        "method": service.rule.name,
        "threshold": service.rule.threshold,
        "limits": {
            "max_file_mb": limits.max_file_mb,
            "max_files": limits.max_files,
            "max_request_mb": limits.max_request_mb,
            "max_pixels": service.inference.max_pixels,
        },
        "forward_passes": {"passes": batcher.passes, "images": batcher.images},
    }


@routes.get("/ready")
@routes.head("/ready", include_in_schema=False)
async def readiness(request: Request) -> JSONResponse:
    if _service(request).ready.is_set():
        return JSONResponse({"ready": True})
    return _error(503, "warming up", **{"Retry-After": "1"})


@routes.post("/predict")
async def predict(request: Request) -> JSONResponse:
    service = _service(request)
    limits = service.limits
    kind, _ = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data":
        return _error(415, f"send multipart/form-data with one or more images in the field '{FIELD}'")
    try:
        form = await request.form(
            max_files=limits.max_files, max_fields=limits.max_fields, max_part_size=MAX_FIELD_BYTES
        )
    except HTTPException as err:  # Starlette: malformed multipart, or a limit crossed
        return _form_error(err, limits)
    try:
        uploads = [f for f in form.getlist(FIELD) if isinstance(f, UploadFile)]
        request.state.files = len(uploads)
        if not uploads:
            return _error(400, f"no file in the field '{FIELD}'")
        for upload in uploads:
            if (upload.size or 0) > limits.max_file_bytes:
                return _error(413, f"{upload.filename}: over {limits.max_file_mb:g} MB per file (serve.max_file_mb)")
        found = await service.inference.classify([upload.file for upload in uploads])
    finally:
        await form.close()
    results = [_result(upload.filename or "", service.classes, f) for upload, f in zip(uploads, found)]
    if all(isinstance(f, str) for f in found):
        return _error(415, "no file is a usable image", results)
    return JSONResponse({"method": service.rule.name, "threshold": service.rule.threshold, "results": results})


def create_app(
    model: OnnxClassifier,
    limits: ServeParams,
    *,
    max_pixels: int | None,
    method: str | None = None,
    threshold: float | None = None,
    decode_threads: int | None = None,
    access_log: bool = False,
    docs: bool = False,
) -> FastAPI:
    """The app around a loaded model; ``method``/``threshold`` default to those recorded at export;
    ``decode_threads`` to a quarter of the cores (decoding is a tenth of the forward pass's work, and
    each thread beside onnxruntime's takes a core from it); ``access_log``: one JSON line per request."""
    runtime = OnnxRuntime(model, model.detector(method, threshold))
    inference = Inference(
        runtime,
        max_pixels=max_pixels,
        pixels_in_flight=limits.pixels_in_flight,
        batch_size=limits.batch_size,
        wait_s=limits.batch_wait_ms / 1000,
        threads=decode_threads or max(1, (os.cpu_count() or 1) // 4),
        input_size=model.preprocessing.input_size,
    )
    service = Service(model, runtime, limits, inference)
    app = FastAPI(
        title="ants, bees, cats, dogs",
        version=model.meta["checkpoint"]["sha256"][:12],
        lifespan=service.lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = service
    app.include_router(routes)
    app.add_middleware(BodyLimits, max_bytes=limits.max_request_bytes, timeout_s=limits.body_timeout_s)
    if access_log:
        app.add_middleware(AccessLog)  # outermost: it times the whole request, the limits' answers too
    return app


def create_app_from_env() -> FastAPI:
    """The app as ``abcd-serve`` builds it, from ``ABCD_SERVE_*`` (model, params, threads, access_log, docs).

    No params file named and none in the working directory: the limits params.yaml ships with
    (a serve-only install beside a copied model.onnx)."""
    default_handlers()
    threads = int(os.environ.get(ENV["threads"]) or 0)  # onnxruntime's; 0: one per core
    model = OnnxClassifier(Path(os.environ.get(ENV["model"], "models/model.onnx")), threads, spin=False)
    params = os.environ.get(ENV["params"])
    config = serve_settings(Path(params) if params else None)
    return create_app(
        model,
        config.limits,
        max_pixels=config.max_pixels,
        decode_threads=max(1, (threads or os.cpu_count() or 1) // 4),
        access_log=os.environ.get(ENV["access_log"]) == "json",
        docs=os.environ.get(ENV["docs"]) == "1",
    )


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
        help="reads serve.*, prepare.max_pixels; default: ./params.yaml if it exists, else the limits params.yaml "
        "ships with",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes, each with the model and cores/N threads")
    parser.add_argument("--limit-concurrency", type=int, default=256, help="connections per worker; more get 503")
    parser.add_argument("--access-log", choices=ACCESS_LOGS, default="text", help="json: with latency and files")
    parser.add_argument("--docs", action="store_true", help="serve /docs and /redoc (their assets load from a CDN)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    params = params_file(args.params)
    # Checked here, so a missing or broken model or params file is reported before uvicorn starts; each
    # worker then loads its own copy.
    OnnxClassifier(args.model, threads=1)
    config = serve_settings(params)
    print(f"serve: limits from {config.source}", file=sys.stderr)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    os.environ.update(
        {
            ENV["model"]: str(args.model.resolve()),
            ENV["params"]: str(params.resolve()) if params else "",
            ENV["threads"]: str(threads),
            ENV["access_log"]: args.access_log,
            ENV["docs"]: "1" if args.docs else "0",
        }
    )
    app: Any = create_app_from_env() if args.workers == 1 else "abcd.serving.app:create_app_from_env"
    import uvicorn

    uvicorn.run(
        app,
        factory=args.workers > 1,
        host=args.host,
        port=args.port,
        workers=args.workers,
        limit_concurrency=args.limit_concurrency,
        timeout_graceful_shutdown=config.limits.shutdown_timeout_s,
        access_log=args.access_log == "text",
        log_config=log_config(args.access_log),
    )


def cli() -> None:
    run(main, "serve")


if __name__ == "__main__":
    cli()
