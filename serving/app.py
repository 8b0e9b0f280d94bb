"""The FastAPI application: endpoints, error bodies and metrics around one backend.

The app never knows which framework runs the model: it holds a ``Backend`` and asks it to
start, to say whether it is ready, and to predict. Every error is answered as JSON::

    {"error": {"status": 415, "code": "unsupported_media_type", "message": "..."}}
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import __version__
from serving.backends import Backend, BackendUnavailable, create_backend
from serving.config import Settings
from serving.images import SUPPORTED_CONTENT_TYPES, ImageRejected, decode_image, to_array
from serving.manifest import load_manifest
from serving.metrics import Metrics

log = logging.getLogger("serving")

PREDICT_ROUTE = "/v1/models/{name}:predict"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"status": status, "code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class Service:
    """What the endpoints share: settings, the manifest, the backend and the metrics."""

    def __init__(self, settings: Settings, backend: Backend | None = None):
        self.settings = settings
        if backend is None:
            manifest = load_manifest(settings.model_dir)
            backend = create_backend(
                settings.backend,
                settings.model_dir,
                manifest,
                threads=settings.threads,
                device=settings.device,
                tfserving_url=settings.tfserving_url,
                tfserving_timeout_s=settings.tfserving_timeout_s,
                onednn_fusion=settings.onednn_fusion,
            )
        self.backend = backend
        self.manifest = backend.manifest
        self.model_name: str = self.manifest["name"]
        self.metrics = Metrics()
        self.created = time.monotonic()

    @property
    def ready_after_s(self) -> float | None:
        """Seconds from app creation to the first time the backend was ready (loaded and warmed up)."""
        ready_at = self.backend.ready_at
        return None if ready_at is None else round(max(0.0, ready_at - self.created), 3)

    def start_in_background(self) -> threading.Thread:
        """Load off the event loop, so /healthz answers (and the container looks alive) while a big model loads."""
        thread = threading.Thread(target=self.backend.start, name="backend-start", daemon=True)
        thread.start()
        return thread

    def model_info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.model_name,
            "version": m.get("version"),
            "framework": m.get("framework"),
            "backend": self.backend.name,
            "state": self.backend.state,
            "error": self.backend.error,
            "input": m.get("input"),
            "labels": m.get("labels"),
            "output": m.get("output"),
            **self.backend.describe(),
        }


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", f"invalid Content-Length {declared!r}") from None
        if declared_size > limit:
            raise ApiError(
                413, "payload_too_large", f"the body is {declared_size} bytes; the limit is {limit}"
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_from_multipart(request: Request, body: bytes) -> bytes:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    # The body was already read under the size limit; parse it from memory.
    form_request = Request(request.scope, receive=replay)
    try:
        form = await form_request.form(max_files=4, max_fields=16)
    except Exception as exc:
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise ApiError(400, "invalid_multipart", f"the multipart body cannot be parsed: {detail}") from None
    try:
        field = form.get("image")
        if field is None:
            raise ApiError(400, "missing_image_field", "the multipart body has no field named 'image'")
        if not isinstance(field, UploadFile):
            raise ApiError(400, "missing_image_field", "the multipart field 'image' must be a file, not text")
        return await field.read()
    finally:
        await form.close()


def _decode(data: bytes, max_pixels: int, as_array: bool):
    image = decode_image(data, max_pixels=max_pixels)
    return to_array(image) if as_array else image


def create_app(settings: Settings | None = None, *, backend: Backend | None = None) -> FastAPI:
    """The service app; ``backend`` lets tests inject one, otherwise ``settings.backend`` picks it."""
    settings = settings or Settings.from_env()
    service = Service(settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if service.backend.state == "loading" and not service.backend.wait_started(0):
            service.start_in_background()
        yield

    app = FastAPI(
        title="Slipway inference service",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            # A bug must not leak a traceback or an HTML page to the client; log it and answer JSON.
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = error_response(500, "internal_error", "internal server error")
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        service.metrics.observe_request(
            request.method, template, response.status_code, time.perf_counter() - started
        )
        return response

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        if (
            request.scope.get("route") is not None
            and getattr(request.scope["route"], "path", "") == PREDICT_ROUTE
        ):
            service.metrics.observe_rejection(exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no endpoint at {request.url.path}"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", str(exc.errors()))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers. Says nothing about the model; see /readyz."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        ready, reason = service.backend.readiness()
        body = {
            "ready": ready,
            "model": service.model_name,
            "backend": service.backend.name,
            "state": service.backend.state,
        }
        if ready:
            body["ready_after_s"] = service.ready_after_s
            return body
        body["reason"] = reason
        return JSONResponse(body, status_code=503)

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"models": [service.model_info()]}

    @app.post(PREDICT_ROUTE)
    async def predict(name: str, request: Request):
        started = time.perf_counter()
        if name != service.model_name:
            raise ApiError(
                404, "model_not_found", f"no model named {name!r}; this service serves {service.model_name!r}"
            )
        content_type = request.headers.get("content-type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if not media_type:
            raise ApiError(
                415,
                "unsupported_media_type",
                "missing Content-Type: send image bytes with their image/* type, "
                "or multipart/form-data with a field 'image'",
            )
        if media_type != "multipart/form-data" and media_type not in SUPPORTED_CONTENT_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {media_type!r} is not accepted; expected one of "
                f"{', '.join(sorted(SUPPORTED_CONTENT_TYPES))} or multipart/form-data",
            )
        ready, reason = await run_in_threadpool(service.backend.readiness, probe=False)
        if not ready:
            # The full reason (maybe a long traceback) is for operators, on /readyz.
            short = (reason or "").strip().splitlines()[0][:200] if reason else "unknown"
            raise ApiError(
                503, "not_ready", f"the model is not ready ({short}); see /readyz", {"Retry-After": "1"}
            )
        # Multipart framing adds a little; allow for it so the image itself gets the full limit.
        limit = service.settings.max_body_bytes + (64 * 1024 if media_type == "multipart/form-data" else 0)
        body = await _read_body(request, limit)
        if media_type == "multipart/form-data":
            data = await _image_from_multipart(request, body)
        else:
            data = body
        try:
            image = await run_in_threadpool(
                _decode, data, service.settings.max_image_pixels, service.backend.input_kind == "array"
            )
        except ImageRejected as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        decoded = time.perf_counter()
        width, height = (int(image.shape[1]), int(image.shape[0])) if hasattr(image, "shape") else image.size
        try:
            detections = await run_in_threadpool(service.backend.predict, image)
        except BackendUnavailable as exc:
            raise ApiError(503, "backend_unavailable", str(exc), {"Retry-After": "1"}) from None
        except Exception:
            log.exception("predict failed for an image of %dx%d", width, height)
            raise ApiError(500, "inference_failed", "inference failed; see the service log") from None
        done = time.perf_counter()
        service.metrics.observe_inference(service.model_name, done - decoded)
        return {
            "model": service.model_name,
            "detections": detections,
            "image": {"width": width, "height": height},
            "timing_ms": {
                "decode": round((decoded - started) * 1000, 3),
                "inference": round((done - decoded) * 1000, 3),
                "total": round((done - started) * 1000, 3),
            },
        }

    @app.get("/v1/models/{name}")
    def get_model(name: str):
        if name.endswith(":predict"):
            raise ApiError(405, "method_not_allowed", "predict takes POST", {"Allow": "POST"})
        if name != service.model_name:
            raise ApiError(
                404, "model_not_found", f"no model named {name!r}; this service serves {service.model_name!r}"
            )
        return service.model_info()

    @app.get("/metrics")
    def metrics():
        ready = service.backend.state == "ready"
        text = service.metrics.render(model=service.model_name, backend=service.backend.name, ready=ready)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
