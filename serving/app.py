"""The FastAPI application: endpoints, error bodies and metrics around one backend.

The app never knows which framework runs the model: it holds a ``Backend`` and asks it to
start, to say whether it is ready, and to predict. Every protocol (the REST API here, the Open
Inference Protocol in serving/oip.py) runs an image through ``Service.infer``: admission, one hop
to a slot thread (decode, preprocess, the shared model, postprocess), stage timings. Every error
is answered as JSON::

    {"error": {"status": 415, "code": "unsupported_media_type", "message": "..."}}
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from serving import __version__, oip
from serving.backends import Backend, BackendUnavailable, create_backend
from serving.backends.base import READY, Detection
from serving.config import BATCHING_BACKENDS, Settings
from serving.images import SUPPORTED_CONTENT_TYPES, ImageRejected, Probe, probe_image
from serving.limits import Admission, ByteBudget, Overloaded, cgroup_memory_peak, decode_cost, lower_priority
from serving.manifest import load_manifest
from serving.metrics import CONTENT_TYPE, STAGES, Metrics
from serving.slot import run_slot

try:  # orjson is in every image's requirements; the standard library's encoder where it is missing
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
except ModuleNotFoundError:  # pragma: no cover
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

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
# Status recorded (and logged) for a request whose client went away before the answer.
CLIENT_CLOSED = 499
RETRY = {"Retry-After": "1"}


@dataclass(frozen=True)
class InferResult:
    """One image's detections (boxes in the original image's pixels) and where its time went.

    ``timings``: seconds per stage, in the order of ``serving.metrics.STAGES`` (queue, decode,
    preprocess, infer, postprocess; a backend that is not staged reports its whole call as infer).
    A protocol adds its own read and encode to what it reports (``server_timing``).
    """

    detections: list[Detection]
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def boxes(self) -> list[list[float]]:
        return [d["box"] for d in self.detections]

    @property
    def scores(self) -> list[float]:
        return [d["score"] for d in self.detections]

    @property
    def class_ids(self) -> list[int]:
        return [d["class_id"] for d in self.detections]

    @property
    def labels(self) -> list[str]:
        return [d["label"] for d in self.detections]


def server_timing(timings: dict[str, float]) -> str:
    """A ``Server-Timing`` header value from stage seconds: ``read;dur=0.041, decode;dur=1.2, ...`` (ms)."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    parts = sorted(timings.items(), key=lambda kv: order.get(kv[0], len(order)))
    return ", ".join(f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in parts)


def echo(value: str, limit: int = 64) -> str:
    """A client's string in an error message: quoted, and cut to ``limit`` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class Service:
    """What the endpoints share: settings, the manifest, the backend and the metrics."""

    def __init__(self, settings: Settings, backend: Backend | None = None):
        self.settings = settings
        # Slots: parallel inferences (threads sharing the one loaded model, or with processes > 1,
        # worker processes with a model each); threads: intra-op threads of each inference.
        self.processes, self.slots, self.threads = settings.layout()
        if settings.batch_max > 1 and settings.backend not in BATCHING_BACKENDS and backend is None:
            raise ValueError(f"SLIPWAY_BATCH_MAX={settings.batch_max}: BACKEND={settings.backend} cannot batch")
        if backend is None and self.processes > 1:
            from serving.workers import ProcessBackend, WorkerSpec

            manifest = load_manifest(settings.model_dir)
            inp = manifest.get("input") or {}
            spec = WorkerSpec(
                backend=settings.backend, model_dir=settings.model_dir, manifest=manifest, threads=self.threads,
                device=settings.device, options={"onednn_fusion": settings.onednn_fusion},
                draft_to=(int(inp["width"]), int(inp["height"])) if inp.get("width") else None,
                max_pixels=settings.max_image_pixels,
            )
            backend = ProcessBackend(spec, workers=self.processes)
        elif backend is None:
            manifest = load_manifest(settings.model_dir)
            backend = create_backend(
                settings.backend,
                settings.model_dir,
                manifest,
                threads=self.threads,
                slots=self.slots,
                device=settings.device,
                tfserving_url=settings.tfserving_url,
                tfserving_timeout_s=settings.tfserving_timeout_s,
                onednn_fusion=settings.onednn_fusion,
            )
        self.backend = backend
        self.manifest = backend.manifest
        self.model_name: str = self.manifest["name"]
        self.metrics = Metrics(self._gauges)
        self.created = time.monotonic()
        self.limits = settings.limits()
        self.batcher = None
        if settings.batch_max > 1:
            from serving.batching import Batcher

            # Proved during warm-up: a model that cannot take the batch fails to start, saying why.
            backend.batch_max = settings.batch_max
            self.batcher = Batcher(backend, max_batch=settings.batch_max, delay_s=settings.batch_delay_ms / 1000,
                                   runners=self.slots, observe_batch=self.metrics.batch_size.observe)
        self.admission = Admission(
            budget=self.limits.decode_budget_bytes,
            max_inflight=self.limits.max_inflight,
            max_queue=self.limits.max_queue,
            timeout_s=self.limits.queue_timeout_s,
        )
        self.bodies = ByteBudget(self.limits.body_budget_bytes)
        # The slots: one thread per admitted request, which decodes, preprocesses, runs the model
        # and postprocesses in one call (the only hop off the event loop). Health probes of a
        # backend with an external server run on their own thread, so they answer while every slot
        # is busy.
        self.workers = ThreadPoolExecutor(self.limits.max_inflight, thread_name_prefix="slot",
                                          initializer=lower_priority)
        self.health = ThreadPoolExecutor(1, thread_name_prefix="health")
        inp = self.manifest.get("input") or {}
        # JPEGs are decoded at the smallest DCT scale that still covers the model's input size.
        self.draft_to = (int(inp["width"]), int(inp["height"])) if inp.get("width") else None

    def _gauges(self):
        ready = 1 if self.backend.state == READY else 0
        yield ("slipway_model_ready", "1 when the model is loaded, warmed up and its backend reachable.", ready,
               {"model": self.model_name, "backend": self.backend.name})
        yield ("slipway_inflight_requests", "Predict requests admitted (decoding or predicting).",
               self.admission.inflight, {})
        yield "slipway_queued_requests", "Predict requests waiting for admission.", self.admission.queued, {}
        yield ("slipway_decode_bytes", "Bytes of decoded pixels the admitted requests may hold.",
               self.admission.used, {})
        yield "slipway_body_bytes", "Bytes of request bodies being received or held.", self.bodies.used, {}
        yield ("slipway_inference_slots", "Parallel inference slots (threads on the one loaded model, or worker "
               "processes).", self.slots, {})
        yield "slipway_threads_per_slot", "Intra-op threads of each inference.", self.threads, {}
        if self.process_backend is not None:
            yield ("slipway_worker_processes", "Inference worker processes alive (one slot each).",
                   self.process_backend.alive, {})
            yield ("slipway_worker_restarts", "Worker processes replaced after they ended.",
                   self.process_backend.restarts, {})
        peak = cgroup_memory_peak()
        if peak is not None:
            yield "slipway_memory_peak_bytes", "Peak memory of the container's cgroup.", peak, {}

    @property
    def process_backend(self):
        """The backend when the slots are worker processes (serving/workers.py), else None."""
        from serving.workers import ProcessBackend

        return self.backend if isinstance(self.backend, ProcessBackend) else None

    def close(self) -> None:
        """Stop the batch runners and worker processes; let the slot threads end once their work is done."""
        if self.batcher is not None:
            self.batcher.close()
        if self.process_backend is not None:
            self.process_backend.close()
        self.workers.shutdown(wait=False)
        self.health.shutdown(wait=False)

    async def ensure_ready(self) -> None:
        """Nothing when the backend is ready (no thread hop); otherwise retry a start that waits for
        an external server, and raise ApiError 503 ``not_ready`` when it still is not."""
        if self.backend.state == READY:
            return
        loop = asyncio.get_running_loop()
        ready, _ = await loop.run_in_executor(self.health, lambda: self.backend.readiness(probe=False))
        if not ready:
            raise ApiError(503, "not_ready", f"{self.public_reason()}; see /readyz", RETRY)

    async def infer(self, image: bytes, *, deadline: float | None = None, held: int = 0) -> InferResult:
        """Detections for one encoded image (JPEG, PNG, BMP, WebP, GIF, TIFF): the one inference
        entry point of every protocol.

        Checks the header (size limits, JPEG draft scale) on the event loop, waits for admission
        (a slot and room in the decode budget; ``deadline``, a ``time.monotonic()`` instant, bounds
        the wait), then decodes, preprocesses, infers and postprocesses in one call on the slot's
        thread. ``held``: bytes of the body budget (``self.bodies``) the caller holds for this
        image; they are given back when the work is done, even when the caller gave up first.
        Records the stage histograms and the inference latency.

        Raises ``ApiError`` (status, code, message, headers): 400/413 for an image the service will
        not decode, 503 ``not_ready``, ``overloaded``, ``request_timeout`` or
        ``backend_unavailable`` (with ``Retry-After``), 500 ``inference_failed``.
        """
        try:
            await self.ensure_ready()
            # The header only (cheap, on the loop): dimensions checked, JPEG draft scale chosen.
            probe = probe_image(image, max_pixels=self.limits.max_image_pixels, draft_to=self.draft_to)
        except ImageRejected as exc:
            self.bodies.give(held)
            raise ApiError(exc.status, exc.code, exc.message) from None
        except BaseException:
            self.bodies.give(held)
            raise
        cost = decode_cost(*probe.decoded_size, probe.mode)
        waited = time.perf_counter()
        try:
            detections, timings = await self._run_admitted(probe, image, cost, held, deadline)
        except ApiError:
            raise
        except ImageRejected as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        except BackendUnavailable as exc:
            log.warning("backend unavailable: %s", exc)
            raise ApiError(503, "backend_unavailable", "the model's backend is unavailable; retry later",
                           RETRY) from None
        except Exception:
            log.exception("predict failed for an image of %dx%d", probe.width, probe.height)
            raise ApiError(500, "inference_failed", "inference failed; see the service log") from None
        queue_s = time.perf_counter() - waited - sum(timings.values())
        timings = {"queue": max(0.0, queue_s), **timings}
        self.metrics.observe_stages(timings)
        self.metrics.observe_inference(
            self.model_name, timings.get("preprocess", 0.0) + timings["infer"] + timings.get("postprocess", 0.0)
        )
        return InferResult(detections, probe.width, probe.height, timings)

    async def _run_admitted(self, probe: Probe, data: bytes, cost: int, held: int, deadline: float | None):
        """Run ``run_slot`` (or, with worker processes, send ``data`` to one) once admitted; the
        budgets are given back when the work is done, even when this request is abandoned first (a
        timeout cancels the wait, never the work)."""
        timeout = None if deadline is None else deadline - time.monotonic()
        try:
            if timeout is not None and timeout <= 0:
                raise ApiError(503, "request_timeout", "the request's deadline has passed; retry later", RETRY)
            await self.admission.acquire(cost, timeout)
        except Overloaded:
            self.bodies.give(held)
            probe.close()
            raise ApiError(503, "overloaded", "the service is at capacity; retry later", RETRY) from None
        except BaseException:
            self.bodies.give(held)
            probe.close()
            raise
        loop = asyncio.get_running_loop()
        processes = self.process_backend
        if processes is not None:
            probe.close()  # a worker decodes the image from the bytes
            future = processes.submit(data)
        else:
            future = loop.run_in_executor(self.workers, run_slot, self.backend, self.batcher, probe)

        def done(_):
            self.admission.release(cost)
            self.bodies.give(held)

        future.add_done_callback(done)
        return await asyncio.shield(future)

    @property
    def ready_after_s(self) -> float | None:
        """Seconds from app creation to the first time the backend was ready (loaded and warmed up)."""
        ready_at = self.backend.ready_at
        return None if ready_at is None else round(max(0.0, ready_at - self.created), 3)

    def start_in_background(self) -> threading.Thread:
        """Load off the event loop, so /healthz answers (and the container looks alive) while a big model loads."""

        def start() -> None:
            # The framework's own thread pools are created here (during warm-up) and inherit this.
            lower_priority()
            self.backend.start()

        thread = threading.Thread(target=start, name="backend-start", daemon=True)
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
            "input": m.get("input"),
            "labels": m.get("labels"),
            "output": m.get("output"),
            **public(self.backend.describe()),
            "parallelism": {"workers": self.processes, "slots": self.slots, "threads_per_slot": self.threads,
                            "batch_max": self.settings.batch_max,
                            "batch_delay_ms": self.settings.batch_delay_ms if self.batcher else None},
            "limits": self.limits.describe(),
        }

    def public_reason(self) -> str:
        """Why the model is not ready, in words that reveal nothing of the server (the log has the rest)."""
        state = self.backend.state
        if state == "error":
            return "the model failed to load; see the service log"
        if state == READY or self.backend.error:
            return "a service the model depends on is unavailable; see the service log"
        return "the model is loading"


def public(info: dict[str, Any]) -> dict[str, Any]:
    """A backend's description without credentials: user and password are cut from URLs."""
    from urllib.parse import urlsplit, urlunsplit

    out = {}
    for key, value in info.items():
        if isinstance(value, str) and "://" in value and "@" in value:
            parts = urlsplit(value)
            host = parts.hostname or ""
            netloc = host + (f":{parts.port}" if parts.port else "")
            value = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        out[key] = value
    return out


async def _read_body(request: Request, limit: int, service: Service) -> tuple[bytes, int]:
    """The body, under the size limit, the body timeout and the memory budget for bodies (counted
    as the bytes arrive). Returns the body and the bytes it holds of the budget (the caller gives
    them back)."""
    declared = request.headers.get("content-length")
    held = 0
    if declared is not None:
        try:
            declared_size = int(declared)
            if declared_size < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, "bad_request", f"invalid Content-Length {echo(declared, 20)}") from None
        if declared_size > limit:
            raise ApiError(
                413, "payload_too_large", f"the body is {declared_size} bytes; the limit is {limit}"
            )
        # Refused at once if it cannot fit now; not reserved, so a client that declares a large
        # body and sends it slowly holds only what it has sent.
        if declared_size > service.bodies.capacity - service.bodies.used:
            raise ApiError(503, "overloaded", "the service is receiving too many images; retry later", RETRY)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(service.settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "payload_too_large", f"the body exceeds the limit of {limit} bytes")
                if size > held:
                    if not service.bodies.take(size - held):
                        raise ApiError(
                            503, "overloaded", "the service is receiving too many images; retry later", RETRY
                        )
                    held = size
                chunks.append(chunk)
    except TimeoutError:
        service.bodies.give(held)
        raise ApiError(
            408, "request_timeout", f"the body did not arrive within {service.settings.body_timeout_s:g}s",
            {"Connection": "close"},
        ) from None
    except ClientDisconnect:
        service.bodies.give(held)
        raise ApiError(CLIENT_CLOSED, "client_closed_request", f"the client closed the connection after {size} bytes") from None
    except BaseException:
        service.bodies.give(held)
        raise
    return b"".join(chunks), held


async def _image_from_multipart(request: Request, body: bytes) -> bytes:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    # The body was already read under the size limit; parse it from memory.
    form_request = Request(request.scope, receive=replay)
    try:
        form = await form_request.form(max_files=4, max_fields=16)
    except Exception as exc:
        detail = " ".join(str(getattr(exc, "detail", None) or exc or type(exc).__name__).split())[:120]
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


class Guard:
    """Outermost ASGI layer: the total request timeout, the metrics of every request, client
    aborts recorded as 499 in one log line, and a JSON 500 (never a traceback) for a bug."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": None, "disconnected": False}

        async def guarded_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            if state["disconnected"]:
                return  # nobody to answer
            try:
                await send(message)
            except OSError:
                state["disconnected"] = True

        try:
            async with asyncio.timeout(self.service.settings.request_timeout_s):
                await self.app(scope, guarded_receive, guarded_send)
        except TimeoutError:
            if state["status"] is None:
                await self._answer(guarded_send, 503, "request_timeout",
                                   f"no answer within {self.service.settings.request_timeout_s:g}s; retry later",
                                   RETRY)
        except ClientDisconnect:
            state["disconnected"] = True
        except Exception:
            if state["disconnected"]:
                pass
            else:
                log.exception("unhandled error on %s %s", scope.get("method"), _route(scope))
                if state["status"] is None:
                    await self._answer(guarded_send, 500, "internal_error", "internal server error")
        status = state["status"] or 500
        if state["disconnected"] and (state["status"] is None or state["status"] == CLIENT_CLOSED):
            status = CLIENT_CLOSED
        if status == CLIENT_CLOSED:
            log.info("client closed the connection before the answer: %s %s after %.3fs",
                     scope.get("method"), _route(scope), time.perf_counter() - started)
        self.service.metrics.observe_request(scope.get("method", ""), _route(scope), status,
                                             time.perf_counter() - started)

    @staticmethod
    async def _answer(send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _route(scope) -> str:
    return getattr(scope.get("route"), "path", None) or "unmatched"


def create_app(settings: Settings | None = None, *, backend: Backend | None = None) -> FastAPI:
    """The service app; ``backend`` lets tests inject one, otherwise ``settings.backend`` picks it."""
    settings = settings or Settings.from_env()
    service = Service(settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if service.backend.state == "loading" and not service.backend.wait_started(0):
            service.start_in_background()
        yield
        service.close()

    app = FastAPI(
        title="Slipway inference service",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        if (
            request.scope.get("route") is not None
            and getattr(request.scope["route"], "path", "") == PREDICT_ROUTE
        ):
            service.metrics.observe_rejection(exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def on_disconnect(request: Request, exc: ClientDisconnect):
        return error_response(CLIENT_CLOSED, "client_closed_request", "the client closed the connection")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no endpoint at {echo(request.url.path)}"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return error_response(422, "invalid_request", f"invalid request: {', '.join(fields)[:200]}")

    # Health, readiness and metrics are coroutines: they run on the event loop, never behind
    # the predict workers, so they answer while every worker is busy.
    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers. Says nothing about the model; see /readyz."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if service.backend.state == READY and type(service.backend).check is Backend.check:
            ready = True
        else:
            loop = asyncio.get_running_loop()
            ready, reason = await loop.run_in_executor(service.health, service.backend.readiness)
            if not ready:
                log.warning("not ready: %s", reason)
        body = {
            "ready": ready,
            "model": service.model_name,
            "backend": service.backend.name,
            "state": service.backend.state,
        }
        if ready:
            body["ready_after_s"] = service.ready_after_s
            return body
        body["reason"] = service.public_reason()
        return JSONResponse(body, status_code=503)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"models": [service.model_info()]}

    @app.post(PREDICT_ROUTE)
    async def predict(name: str, request: Request):
        started = time.perf_counter()
        if name != service.model_name:
            raise ApiError(
                404, "model_not_found", f"no model named {echo(name)}; this service serves {service.model_name!r}"
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
                f"Content-Type {echo(media_type, 40)} is not accepted; expected one of "
                f"{', '.join(sorted(SUPPORTED_CONTENT_TYPES))} or multipart/form-data",
            )
        await service.ensure_ready()
        # Multipart framing adds a little; allow for it so the image itself gets the full limit.
        limit = service.settings.max_body_bytes + (64 * 1024 if media_type == "multipart/form-data" else 0)
        body, held = await _read_body(request, limit, service)
        try:
            data = await _image_from_multipart(request, body) if media_type == "multipart/form-data" else body
        except BaseException:
            service.bodies.give(held)
            raise
        del body
        read_s = time.perf_counter() - started
        result = await service.infer(data, held=held)
        del data
        if await request.is_disconnected():
            # Gone while its image was decoded or predicted: recorded as an abort, not an answer.
            raise ApiError(CLIENT_CLOSED, "client_closed_request", "the client closed the connection")
        t = result.timings
        encoding = time.perf_counter()
        payload = dumps({
            "model": service.model_name,
            "detections": result.detections,
            "image": {"width": result.width, "height": result.height},
            "timing_ms": {
                "decode": round((read_s + t["decode"]) * 1000, 3),
                "inference": round((t.get("preprocess", 0.0) + t["infer"] + t.get("postprocess", 0.0)) * 1000, 3),
                "total": round((encoding - started) * 1000, 3),
            },
        })
        ours = {"read": read_s, "encode": time.perf_counter() - encoding}
        service.metrics.observe_stages(ours)
        headers = {"server-timing": server_timing({**ours, **t})}
        return Response(payload, media_type="application/json", headers=headers)

    @app.get("/v1/models/{name}")
    def get_model(name: str):
        if name.endswith(":predict"):
            raise ApiError(405, "method_not_allowed", "predict takes POST", {"Allow": "POST"})
        if name != service.model_name:
            raise ApiError(
                404, "model_not_found", f"no model named {echo(name)}; this service serves {service.model_name!r}"
            )
        return service.model_info()

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    # The Open Inference Protocol (KServe v2), beside the service's own API (serving/oip.py).
    oip.install(app, service)

    # Outermost, so it sees every answer (and every abort) with the route Starlette matched.
    app.add_middleware(Guard, service=service)
    return app
