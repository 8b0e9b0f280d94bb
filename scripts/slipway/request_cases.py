"""The request cases Slipway's smoke stage sends to a served model, shared with the in-process tests.

Part of Slipway, not of the service: nothing here is copied into an image.

``bad_request_cases()`` lists requests a client may get wrong; ``run_cases()`` sends them to a
running service (an ``httpx.Client`` with a base URL, or FastAPI's TestClient) and reports, case by
case, whether the answer was the expected 4xx with a JSON error body, and that the service still
answers a good request afterwards. ``write_tiny_model()`` writes a small, fully scriptable
detector export (model.json + frozen TorchScript) for tests that must not wait for a real export.

Only the standard library, numpy, Pillow and httpx at import time: torch is imported by
``write_tiny_model`` alone.
"""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TINY_LABELS = ["red", "green", "blue"]


# --- images -----------------------------------------------------------------------------------
def sample_image(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with texture (so JPEG files are not trivially small) and a red top-left quadrant."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 165, size=(height, width, 3), dtype=np.uint8)
    image[: height // 2, : width // 2] = (230, 20, 20)
    return image


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims ``width x height`` (a decompression-bomb probe)."""
    data = bytearray(encode(np.zeros((1, 1, 3), dtype=np.uint8), "PNG"))
    # IHDR is the first chunk: 8-byte signature, 4-byte length, b"IHDR", then width and height.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    ihdr = bytes(data[12:29])  # type + 13 bytes of data
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_claiming_size(width: int, height: int) -> bytes:
    """A small JPEG whose start-of-frame marker claims ``width x height``."""
    data = bytearray(encode(np.zeros((8, 8, 3), dtype=np.uint8), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    if sof < 0:
        raise ValueError("Pillow wrote a JPEG without a baseline SOF0 marker")
    # SOF0: marker(2) length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def multipart(*parts: tuple[str, str | None, str | None, bytes], boundary: str = "slipway-test-boundary"):
    """(body, headers) of a multipart/form-data request; a part is (field, filename, content type, bytes).

    Built by hand so a case can send exactly what a careless client would (a text field named
    'image', a file field under another name) without a client library rewriting it.
    """
    lines = []
    for name, filename, content_type, payload in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        lines.append(head.encode() + b"\r\n" + payload + b"\r\n")
    body = b"".join(lines) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


# --- cases --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    expect_status: int
    expect_codes: tuple[str, ...] = ()
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseResult:
    case: str
    ok: bool
    status: int | None
    detail: str


def bad_request_cases(model: str, *, max_image_pixels: int = 40_000_000) -> list[Case]:
    """Requests that must each get a 4xx with a JSON error body, never a 500 or a crash.

    ``max_image_pixels`` is the service's MAX_IMAGE_PIXELS (its default unless the service was
    started with another), used to probe just above the service's own limit.
    """
    predict = f"/v1/models/{model}:predict"
    png = encode(sample_image(), "PNG")
    jpeg = encode(sample_image(), "JPEG", quality=90)
    side = math.isqrt(max_image_pixels) + 1
    return [
        Case(
            "not_an_image",
            "POST",
            predict,
            400,
            ("not_an_image",),
            b"this is plain text, not an image " * 8,
            {"content-type": "image/png"},
        ),
        Case("zero_byte_body", "POST", predict, 400, ("empty_body",), b"", {"content-type": "image/jpeg"}),
        Case(
            "truncated_png",
            "POST",
            predict,
            400,
            ("invalid_image",),
            png[: len(png) // 2],
            {"content-type": "image/png"},
        ),
        Case(
            "truncated_jpeg",
            "POST",
            predict,
            400,
            ("invalid_image",),
            jpeg[: len(jpeg) // 2],
            {"content-type": "image/jpeg"},
        ),
        Case(
            "png_header_only",
            "POST",
            predict,
            400,
            ("invalid_image", "not_an_image"),
            png[:40],
            {"content-type": "image/png"},
        ),
        Case(
            "png_20000x20000",
            "POST",
            predict,
            413,
            ("image_too_large",),
            png_claiming_size(20000, 20000),
            {"content-type": "image/png"},
        ),
        Case(
            "jpeg_20000x20000",
            "POST",
            predict,
            413,
            ("image_too_large",),
            jpeg_claiming_size(20000, 20000),
            {"content-type": "image/jpeg"},
        ),
        Case(
            "png_just_over_service_limit",
            "POST",
            predict,
            413,
            ("image_too_large",),
            png_claiming_size(side, side),
            {"content-type": "image/png"},
        ),
        Case(
            "wrong_content_type_text",
            "POST",
            predict,
            415,
            ("unsupported_media_type",),
            png,
            {"content-type": "text/plain"},
        ),
        Case(
            "wrong_content_type_json",
            "POST",
            predict,
            415,
            ("unsupported_media_type",),
            b'{"image": "x"}',
            {"content-type": "application/json"},
        ),
        Case("missing_content_type", "POST", predict, 415, ("unsupported_media_type",), png),
        Case(
            "unknown_model",
            "POST",
            "/v1/models/no-such-model:predict",
            404,
            ("model_not_found",),
            png,
            {"content-type": "image/png"},
        ),
        Case("unknown_model_info", "GET", "/v1/models/no-such-model", 404, ("model_not_found",)),
        Case("predict_with_get", "GET", predict, 405, ("method_not_allowed",)),
        Case("unknown_endpoint", "GET", "/v1/nothing-here", 404, ("not_found",)),
        Case(
            "multipart_without_image_field",
            "POST",
            predict,
            400,
            ("missing_image_field",),
            *multipart(("picture", "a.png", "image/png", png)),
        ),
        Case(
            "multipart_image_as_text_field",
            "POST",
            predict,
            400,
            ("missing_image_field",),
            *multipart(("image", None, None, b"not a file")),
        ),
        Case(
            "multipart_not_an_image",
            "POST",
            predict,
            400,
            ("not_an_image",),
            *multipart(("image", "a.png", "image/png", b"GIF? no, nothing at all")),
        ),
        Case(
            "multipart_truncated_jpeg",
            "POST",
            predict,
            400,
            ("invalid_image",),
            *multipart(("image", "a.jpg", "image/jpeg", jpeg[: len(jpeg) // 2])),
        ),
        Case(
            "multipart_empty_file",
            "POST",
            predict,
            400,
            ("empty_body",),
            *multipart(("image", "a.png", "image/png", b"")),
        ),
        Case(
            "multipart_garbled",
            "POST",
            predict,
            400,
            ("invalid_multipart", "missing_image_field"),
            b"--nope\r\nthis is not multipart\r\n",
            {"content-type": "multipart/form-data; boundary=xyz"},
        ),
        Case(
            "multipart_no_boundary",
            "POST",
            predict,
            400,
            ("invalid_multipart", "missing_image_field"),
            b"whatever",
            {"content-type": "multipart/form-data"},
        ),
    ]


def good_request_cases(model: str) -> list[Case]:
    """Valid requests: raw PNG, raw JPEG and multipart, each must answer 200 with detections."""
    predict = f"/v1/models/{model}:predict"
    image = sample_image()
    return [
        Case(
            "raw_png",
            "POST",
            predict,
            200,
            content=encode(image, "PNG"),
            headers={"content-type": "image/png"},
        ),
        Case(
            "raw_jpeg",
            "POST",
            predict,
            200,
            content=encode(image, "JPEG", quality=95),
            headers={"content-type": "image/jpeg"},
        ),
        Case(
            "multipart_png",
            "POST",
            predict,
            200,
            (),
            *multipart(("image", "x.png", "image/png", encode(image, "PNG"))),
        ),
    ]


def _send(client: Any, case: Case):
    kwargs: dict[str, Any] = {"headers": case.headers}
    if case.content is not None:
        kwargs["content"] = case.content
    return client.request(case.method, case.path, **kwargs)


def check_response(case: Case, response: Any) -> CaseResult:
    status = response.status_code
    if status != case.expect_status:
        return CaseResult(
            case.name, False, status, f"expected {case.expect_status}, got {status}: {response.text[:300]}"
        )
    if not response.headers.get("content-type", "").startswith("application/json"):
        return CaseResult(case.name, False, status, f"not JSON: {response.headers.get('content-type')}")
    try:
        body = response.json()
    except ValueError:
        return CaseResult(case.name, False, status, "body is not valid JSON")
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or not error.get("message"):
            return CaseResult(case.name, False, status, f"no error object with a message: {body}")
        if case.expect_codes and error.get("code") not in case.expect_codes:
            return CaseResult(
                case.name, False, status, f"error code {error.get('code')!r} not in {case.expect_codes}"
            )
        return CaseResult(case.name, True, status, f"{error.get('code')}: {error['message'][:120]}")
    if not isinstance(body.get("detections"), list):
        return CaseResult(case.name, False, status, f"no detections list: {body}")
    return CaseResult(case.name, True, status, f"{len(body['detections'])} detection(s)")


def run_cases(client: Any, model: str, *, max_image_pixels: int = 40_000_000) -> list[CaseResult]:
    """Every bad case, then the good ones and /healthz: a bad request must not have broken the service."""
    results = []
    for case in bad_request_cases(model, max_image_pixels=max_image_pixels) + good_request_cases(model):
        try:
            response = _send(client, case)
        except Exception as exc:  # a dropped connection is exactly what this is here to catch
            results.append(CaseResult(case.name, False, None, f"request failed: {type(exc).__name__}: {exc}"))
            continue
        results.append(check_response(case, response))
    try:
        health = client.get("/healthz")
        results.append(
            CaseResult("healthz_after", health.status_code == 200, health.status_code, health.text[:200])
        )
    except Exception as exc:
        results.append(CaseResult("healthz_after", False, None, f"request failed: {exc}"))
    return results


def run_cases_against(base_url: str, model: str, *, timeout: float = 30.0, **kwargs: Any) -> list[CaseResult]:
    import httpx

    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        return run_cases(client, model, **kwargs)


# --- a tiny model -----------------------------------------------------------------------------
def write_tiny_model(
    folder: Path, *, name: str = "tiny-torch", height: int = 64, width: int = 64, onnx: bool = False
) -> Path:
    """Write a model export folder with ``model.json`` and a frozen TorchScript detector.

    The detector proposes the four quadrants of its input; each quadrant's class is its dominant
    colour channel and its score grows with how much that channel dominates, so a red top-left
    quadrant yields one confident "red" box over that quadrant and a grey image yields nothing.
    With ``onnx`` it also writes ``model.onnx`` (needs the ``onnx`` package).
    """
    import torch

    class QuadrantDetector(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            n, _, h_int, w_int = x.shape
            h2_int = h_int // 2
            w2_int = w_int // 2
            h, w, h2, w2 = float(h_int), float(w_int), float(h2_int), float(w2_int)
            quads = torch.stack(
                [
                    x[:, :, :h2_int, :w2_int].mean(dim=(2, 3)),
                    x[:, :, :h2_int, w2_int:].mean(dim=(2, 3)),
                    x[:, :, h2_int:, :w2_int].mean(dim=(2, 3)),
                    x[:, :, h2_int:, w2_int:].mean(dim=(2, 3)),
                ],
                dim=1,
            )  # [N, 4, 3]
            top, classes = quads.max(dim=2)
            dominance = top - (quads.sum(dim=2) - top) / 2.0
            scores = torch.sigmoid(3.0 * dominance - 4.0)
            boxes = torch.tensor(
                [[0.0, 0.0, w2, h2], [w2, 0.0, w, h2], [0.0, h2, w2, h], [w2, h2, w, h]], dtype=torch.float32
            )
            return boxes.unsqueeze(0).expand(n, 4, 4).contiguous(), scores, classes.to(torch.int64)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = torch.jit.freeze(torch.jit.script(QuadrantDetector().eval()))
    path = folder / "model.torchscript.pt"
    torch.jit.save(module, str(path))
    files = {"torchscript": {"path": path.name, "size": path.stat().st_size}}
    if onnx:
        onnx_path = folder / "model.onnx"
        names = ["boxes", "scores", "classes"]
        # The eager module, traced: this detector has no data-dependent control flow, and the input
        # size is fixed by preprocessing, so the tracer's "shape becomes a constant" warning is moot.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                QuadrantDetector().eval(),
                (torch.zeros(1, 3, height, width),),
                str(onnx_path),
                dynamo=False,
                input_names=["images"],
                output_names=names,
                dynamic_axes={n: {0: "batch"} for n in ["images", *names]},
            )
        files["onnx"] = {"path": onnx_path.name, "size": onnx_path.stat().st_size}
    manifest = {
        "name": name,
        "version": "0.0.1",
        "framework": "pytorch",
        "framework_version": torch.__version__.split("+")[0],
        "input": {
            "height": height,
            "width": width,
            "channels": 3,
            "dtype": "uint8",
            "resize": "stretch",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "labels": list(TINY_LABELS),
        "output": {"format": "candidates", "score_threshold": 0.3, "nms_iou": 0.5, "max_detections": 50},
        "files": files,
    }
    (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
