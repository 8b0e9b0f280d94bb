"""The Open Inference Protocol (KServe v2, HTTP/REST) beside the service's own API.

Endpoints (``{name}`` is the model's name from ``model.json``; every model path also answers under
``/v2/models/{name}/versions/{version}`` when ``model.json`` has that version)::

    GET  /v2                           server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live               200 while the process answers
    GET  /v2/health/ready              200 once the model is ready, 503 otherwise
    GET  /v2/models/{name}             model metadata: one input, four outputs
    GET  /v2/models/{name}/ready       200 once the model is ready, 503 otherwise
    POST /v2/models/{name}/infer       one image in, its detections out

The model takes one input, ``image``: BYTES, shape ``[1]``, the encoded image file (JPEG, PNG, ...).
In a JSON body its one element is the file in base64 (JSON strings are text); with the binary
tensor data extension it is the raw file, as a BYTES element is sent (4-byte little-endian length,
then the bytes). It answers four outputs, one row per detection, in the original image's pixels:
``boxes`` FP32 ``[N, 4]`` (x1, y1, x2, y2), ``scores`` FP32 ``[N]``, ``classes`` INT64 ``[N]``,
``labels`` BYTES ``[N]``. Outputs are answered in JSON unless the request asks for binary data
(``binary_data`` on a requested output, or ``binary_data_output`` on the request).

An infer request passes the same limits as ``/v1/models/{name}:predict`` (body size, body budget
and timeout, image header check, admission): the image itself may be ``MAX_BODY_BYTES`` long; the
body may be longer by base64's third and 64 KiB of JSON. Errors are the protocol's
``{"error": "<message>"}`` with the same status codes as the service's own API.

This module imports neither numpy nor a framework: the pytorch-cpp-cpu image has neither.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import struct
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serving import __version__
from serving.backends import Backend
from serving.backends.base import READY

if TYPE_CHECKING:
    from serving.app import InferResult, Service

log = logging.getLogger("serving.oip")

SERVER_NAME = "slipway"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "image"
# Output name -> (datatype, shape with -1 for the number of detections).
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "boxes": ("FP32", [-1, 4]),
    "scores": ("FP32", [-1]),
    "classes": ("INT64", [-1]),
    "labels": ("BYTES", [-1]),
}
# JSON framing allowed on top of the image's base64 text.
JSON_OVERHEAD = 64 * 1024
RETRY = {"Retry-After": "1"}
# binascii's strict mode (Python 3.11+) checks and decodes in one pass.
STRICT_BASE64 = sys.version_info >= (3, 11)
# Bodies larger than this are parsed on a thread (a few milliseconds of work on the loop at most).
OFF_LOOP_BYTES = 256 * 1024
# What the protocol calls the platform, per backend.
PLATFORMS = {
    "torchscript": "pytorch_torchscript",
    "cpp": "pytorch_torchscript",
    "onnx": "onnxruntime_onnx",
    "tensorflow": "tensorflow_savedmodel",
    "tfserving": "tensorflow_savedmodel",
}


class OipError(Exception):
    """An answer ``{"error": message}`` with ``status``; ``code`` is what the metrics count."""

    def __init__(self, status: int, message: str, code: str = "bad_request", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status, headers=self.headers)


def _echo(value: Any, limit: int = 64) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass
class InferRequest:
    """A parsed infer request: the image, and which outputs to answer how."""

    image: bytes
    request_id: str | None
    outputs: list[tuple[str, bool]]  # (name, as binary data), in the order to answer them


def _header_length(request: Request, body_size: int) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        size = int(raw.strip())
    except ValueError:
        size = -1
    if size < 0 or size > body_size:
        raise OipError(400, f"invalid {HEADER_LENGTH} {_echo(raw, 20)}: expected the length of the JSON "
                            f"header, 0..{body_size} (the body's length)")
    return size


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item))
    return out


def _bool_parameter(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise OipError(400, f"{where}: parameter {key!r} must be true or false, not {_echo(value)}")
    return value


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise OipError(400, f"{where}: 'parameters' must be an object")
    return params


def parse_infer_request(body: bytes, header_length: int | None, max_image_bytes: int) -> InferRequest:
    """The image and the requested outputs of an infer body; OipError(400/413) for anything else."""
    head = body if header_length is None else body[:header_length]
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, ValueError) as exc:
        where = f"the first {header_length} bytes of the body ({HEADER_LENGTH})" if header_length is not None \
            else "the body"
        raise OipError(400, f"{where} must be a JSON inference request: {' '.join(str(exc).split())[:100]}") \
            from None
    if not isinstance(doc, dict):
        raise OipError(400, "the inference request must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OipError(400, "'id' must be a string")
    req_params = _parameters(doc, "the request")
    binary_default = bool(_bool_parameter(req_params, "binary_data_output", "the request"))

    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise OipError(400, f"'inputs' must be a list holding one input, {INPUT!r} (BYTES, shape [1])")
    if len(inputs) != 1:
        raise OipError(400, f"{len(inputs)} inputs given; this model takes one, {INPUT!r} (BYTES, shape [1])")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise OipError(400, "each input must be an object with 'name', 'shape', 'datatype' and 'data'")
    name = tensor.get("name")
    if name != INPUT:
        raise OipError(400, f"unknown input {_echo(name)}; this model takes one input, {INPUT!r} (BYTES, shape [1])")
    where = f"input {INPUT!r}"
    datatype = tensor.get("datatype")
    if datatype != "BYTES":
        raise OipError(400, f"{where}: datatype {_echo(datatype)}; expected 'BYTES' (the encoded image file)")
    shape = tensor.get("shape")
    if shape != [1]:
        raise OipError(400, f"{where}: shape {_echo(shape)}; expected [1] (one image per request)")
    params = _parameters(tensor, where)
    binary_size = params.get("binary_data_size")
    has_data = "data" in tensor
    if binary_size is not None:
        if has_data:
            raise OipError(400, f"{where}: has both 'data' and the 'binary_data_size' parameter; send one")
        if header_length is None:
            raise OipError(400, f"{where}: 'binary_data_size' without the {HEADER_LENGTH} header")
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise OipError(400, f"{where}: 'binary_data_size' must be a non-negative integer, not {_echo(binary_size)}")
        binary = memoryview(body)[header_length:]
        if binary_size != len(binary):
            raise OipError(400, f"{where}: 'binary_data_size' is {binary_size} but {len(binary)} bytes follow the "
                                f"JSON header ({HEADER_LENGTH})")
        image = _bytes_element(binary, where, max_image_bytes)
    else:
        if not has_data:
            raise OipError(400, f"{where}: no 'data' and no 'binary_data_size' parameter")
        if header_length is not None and header_length != len(body):
            raise OipError(400, f"{len(body) - header_length} bytes follow the JSON header but no input "
                                "declares 'binary_data_size'")
        elements = _flatten(tensor["data"])
        if len(elements) != 1:
            raise OipError(400, f"{where}: {len(elements)} elements in 'data' for shape [1]")
        text = elements[0]
        if not isinstance(text, str):
            raise OipError(400, f"{where}: the element of 'data' must be the image file in base64, a string")
        if len(text) > 4 * ((max_image_bytes + 2) // 3):
            raise OipError(413, f"{where}: the image is larger than the limit of {max_image_bytes} bytes",
                           "payload_too_large")
        image = _unbase64(text, where)

    outputs = _requested_outputs(doc, binary_default)
    return InferRequest(image=image, request_id=request_id, outputs=outputs)


def _b64(text: str) -> bytes:
    if STRICT_BASE64:
        return binascii.a2b_base64(text, strict_mode=True)
    return base64.b64decode(text, validate=True)


def _unbase64(text: str, where: str) -> bytes:
    """Standard padded base64; whitespace (the line breaks base64 tools wrap it with) is allowed,
    nothing else is."""
    try:
        return _b64(text)
    except (binascii.Error, ValueError):
        pass
    if any(c.isspace() for c in text):
        try:
            return _b64("".join(text.split()))
        except (binascii.Error, ValueError):
            pass
    raise OipError(400, f"{where}: the element of 'data' is not base64 (in JSON, the image file is sent "
                        "in base64; or send it as binary data)")


def _bytes_element(binary: memoryview, where: str, max_image_bytes: int) -> bytes:
    """The one element of a binary BYTES tensor: a 4-byte little-endian length, then the bytes."""
    if len(binary) < 4:
        raise OipError(400, f"{where}: {len(binary)} bytes of binary data; a BYTES element starts with its "
                            "4-byte little-endian length")
    (size,) = struct.unpack_from("<I", binary)
    if size != len(binary) - 4:
        raise OipError(400, f"{where}: the BYTES element says {size} bytes but {len(binary) - 4} follow its "
                            "length (shape [1] holds one element)")
    if size > max_image_bytes:
        raise OipError(413, f"{where}: the image is {size} bytes; the limit is {max_image_bytes}", "payload_too_large")
    return bytes(binary[4:])


def _requested_outputs(doc: dict[str, Any], binary_default: bool) -> list[tuple[str, bool]]:
    requested = doc.get("outputs")
    if requested is None:
        return [(name, binary_default) for name in OUTPUTS]
    if not isinstance(requested, list):
        raise OipError(400, "'outputs' must be a list of objects with a 'name'")
    out: list[tuple[str, bool]] = []
    seen = set()
    for item in requested:
        if not isinstance(item, dict):
            raise OipError(400, "'outputs' must be a list of objects with a 'name'")
        name = item.get("name")
        if name not in OUTPUTS:
            raise OipError(400, f"unknown output {_echo(name)}; this model's outputs are {', '.join(OUTPUTS)}")
        where = f"output {name!r}"
        params = _parameters(item, where)
        if params.get("classification"):
            raise OipError(400, f"{where}: the 'classification' parameter is not supported")
        binary = _bool_parameter(params, "binary_data", where)
        if name not in seen:
            seen.add(name)
            out.append((name, binary_default if binary is None else binary))
    return out


def _tensor(name: str, detections: list[dict[str, Any]]) -> tuple[list[int], list[Any], bytes]:
    """(shape, JSON data, binary data) of one output."""
    n = len(detections)
    if name == "boxes":
        values = [float(v) for d in detections for v in d["box"]]
        return [n, 4], values, struct.pack(f"<{len(values)}f", *values)
    if name == "scores":
        values = [float(d["score"]) for d in detections]
        return [n], values, struct.pack(f"<{n}f", *values)
    if name == "classes":
        ints = [int(d["class_id"]) for d in detections]
        return [n], ints, struct.pack(f"<{n}q", *ints)
    labels = [str(d["label"]) for d in detections]
    raw = b"".join(struct.pack("<I", len(e)) + e for e in (label.encode() for label in labels))
    return [n], labels, raw


def infer_response(service: Service, parsed: InferRequest, detections: list[dict[str, Any]]) -> Response:
    """The inference response: JSON, or a JSON header then the binary outputs in their order."""
    doc: dict[str, Any] = {"model_name": service.model_name}
    version = _version(service)
    if version is not None:
        doc["model_version"] = version
    if parsed.request_id is not None:
        doc["id"] = parsed.request_id
    outputs, chunks = [], []
    for name, binary in parsed.outputs:
        shape, data, raw = _tensor(name, detections)
        tensor: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name][0], "shape": shape}
        if binary:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    doc["outputs"] = outputs
    if not chunks:
        return JSONResponse(doc)
    header = json.dumps(doc, separators=(",", ":")).encode()
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


def _version(service: Service) -> str | None:
    version = service.manifest.get("version")
    return None if version is None else str(version)


async def _ready(service: Service) -> bool:
    """The model's readiness, as /readyz decides it (an external check runs on the health thread)."""
    if service.backend.state == READY and type(service.backend).check is Backend.check:
        return True
    loop = asyncio.get_running_loop()
    ready, reason = await loop.run_in_executor(service.health, service.backend.readiness)
    if not ready:
        log.warning("not ready: %s", reason)
    return ready


async def _infer_detections(service: Service, image: bytes, body_held: int) -> InferResult:
    """The detections of one image through ``Service.infer``, the entry point every protocol
    shares (admission, limits, one hop to a slot); its errors in the protocol's form.

    ``body_held``: the bytes of the body budget this request holds; ``infer`` gives them back."""
    from serving.app import ApiError

    try:
        return await service.infer(image, held=body_held)
    except ApiError as exc:
        raise OipError(exc.status, exc.message, exc.code, exc.headers) from None


async def _parse(service: Service, body: bytes, header_length: int | None, max_image: int) -> InferRequest:
    """``parse_infer_request`` under the body budget, off the event loop for a large body.

    Parsing holds more than the body: JSON's string and the decoded image (about twice the body),
    or the copy of a binary image (once); that much more is taken from the body budget while it
    runs (capped at what the budget has, so a body that fits alone is still served alone). A
    large body is parsed on a thread: base64 and JSON take a second for tens of megabytes, and
    the health endpoints must answer meanwhile."""
    binary = header_length is not None and header_length < len(body)
    extra = min(len(body) * (1 if binary else 2), max(0, service.bodies.capacity - len(body)))
    if not service.bodies.take(extra):
        raise OipError(503, "the service is receiving too many images; retry later", "overloaded", RETRY)
    if len(body) <= OFF_LOOP_BYTES:
        try:
            return parse_infer_request(body, header_length, max_image)
        finally:
            service.bodies.give(extra)
    # Given back when the thread is done, even if this request is abandoned first.
    future = asyncio.get_running_loop().run_in_executor(None, parse_infer_request, body, header_length, max_image)
    future.add_done_callback(lambda _: service.bodies.give(extra))
    return await asyncio.shield(future)


def build_router(service: Service) -> APIRouter:
    router = APIRouter()

    def model_or_404(name: str, version: str | None = None) -> None:
        if name != service.model_name:
            raise OipError(404, f"no model named {_echo(name)}; this service serves {service.model_name!r}",
                           "model_not_found")
        if version is not None and version != _version(service):
            have = _version(service)
            raise OipError(404, f"model {name!r} has no version {_echo(version)}"
                                + (f"; it has {have!r}" if have is not None else "; it has no version"),
                           "model_not_found")

    @router.get("/v2")
    async def server_metadata():
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @router.get("/v2/health/live")
    async def server_live():
        return {"live": True}

    @router.get("/v2/health/ready")
    async def server_ready():
        ready = await _ready(service)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def metadata(name: str, version: str | None = None):
        try:
            model_or_404(name, version)
        except OipError as exc:
            return exc.response()
        have = _version(service)
        return {
            "name": service.model_name,
            "versions": [have] if have is not None else [],
            "platform": PLATFORMS.get(service.backend.name, service.backend.name),
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": n, "datatype": dt, "shape": shape} for n, (dt, shape) in OUTPUTS.items()],
        }

    async def model_ready(name: str, version: str | None = None):
        try:
            model_or_404(name, version)
        except OipError as exc:
            return exc.response()
        ready = await _ready(service)
        return JSONResponse({"name": service.model_name, "ready": ready}, status_code=200 if ready else 503)

    async def infer(request: Request, name: str, version: str | None = None):
        try:
            return await _infer(request, name, version)
        except OipError as exc:
            service.metrics.observe_rejection(exc.code)
            return exc.response()

    async def _infer(request: Request, name: str, version: str | None) -> Response:
        from serving.app import ApiError, _read_body, server_timing

        started = time.perf_counter()

        model_or_404(name, version)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise OipError(415, f"Content-Encoding {_echo(encoding, 20)} is not accepted; send the body "
                                "uncompressed", "unsupported_media_type")
        if service.backend.state != READY:
            loop = asyncio.get_running_loop()
            ready, _ = await loop.run_in_executor(service.health, lambda: service.backend.readiness(probe=False))
            if not ready:
                raise OipError(503, f"{service.public_reason()}; see /v2/health/ready", "not_ready", RETRY)
        max_image = service.settings.max_body_bytes
        limit = 4 * ((max_image + 2) // 3) + JSON_OVERHEAD
        try:
            body, held = await _read_body(request, limit, service)
        except ApiError as exc:
            raise OipError(exc.status, exc.message, exc.code, exc.headers) from None
        try:
            parsed = await _parse(service, body, _header_length(request, len(body)), max_image)
        except BaseException:
            service.bodies.give(held)
            raise
        del body
        read_s = time.perf_counter() - started
        result = await _infer_detections(service, parsed.image, held)
        if await request.is_disconnected():
            from serving.app import CLIENT_CLOSED

            raise OipError(CLIENT_CLOSED, "the client closed the connection", "client_closed_request")
        encoding = time.perf_counter()
        response = infer_response(service, parsed, result.detections)
        ours = {"read": read_s, "encode": time.perf_counter() - encoding}
        service.metrics.observe_stages(ours)
        response.headers["server-timing"] = server_timing({**ours, **result.timings})
        return response

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_api_route(prefix, metadata, methods=["GET"])
        router.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        router.add_api_route(prefix + "/infer", infer, methods=["POST"])

    @router.api_route("/v2/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(rest: str, request: Request):
        if rest.endswith("/infer") and request.method != "POST":
            return JSONResponse({"error": "infer takes POST"}, status_code=405, headers={"Allow": "POST"})
        return JSONResponse({"error": f"no endpoint at {_echo(request.url.path)}"}, status_code=404)

    return router


def install(app: FastAPI, service: Service) -> None:
    """Mount the v2 endpoints on the service's app."""
    app.include_router(build_router(service))
