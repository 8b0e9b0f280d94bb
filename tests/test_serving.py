"""The inference service in-process, against a real (tiny) frozen TorchScript model."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from readiness import wait_http
from testclient import TestClient

from serving.app import create_app
from serving.backends.torchscript import TorchScriptBackend
from serving.config import ConfigurationError, Settings
from serving.manifest import load_manifest
from slipway.request_cases import (
    bad_request_cases,
    check_response,
    encode,
    good_request_cases,
    multipart,
    run_cases,
    run_cases_against,
    sample_image,
    write_tiny_model,
)

MODEL = "tiny-torch"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), name=MODEL)


def started_client(app) -> TestClient:
    client = TestClient(app)
    client.__enter__()
    assert app.state.service.backend.wait_started(60), "backend did not finish starting"
    return client


@pytest.fixture(scope="module")
def client(model_dir):
    app = create_app(Settings(model_dir=model_dir))
    c = started_client(app)
    yield c
    c.__exit__(None, None, None)


def predict_png(client, image: np.ndarray, model: str = MODEL):
    return client.post(
        f"/v1/models/{model}:predict", content=encode(image, "PNG"), headers={"content-type": "image/png"}
    )


def test_health_ready_and_model_info(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == [MODEL]
    info = client.get(f"/v1/models/{MODEL}").json()
    assert info["backend"] == "torchscript"
    assert info["state"] == "ready"
    assert info["labels"] == ["red", "green", "blue"]
    assert info["device"] == "cpu"


@pytest.mark.parametrize(
    ("width", "height", "region", "colour", "label"),
    [
        (200, 100, "top-left", (230, 20, 20), "red"),
        (97, 131, "bottom-right", (10, 20, 240), "blue"),
        (64, 64, "top-right", (20, 250, 30), "green"),
    ],
)
def test_predict_boxes_are_in_original_pixels(client, width, height, region, colour, label):
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    h2, w2 = height // 2, width // 2
    rows = slice(0, h2) if region.startswith("top") else slice(h2, height)
    cols = slice(0, w2) if region.endswith("left") else slice(w2, width)
    image[rows, cols] = colour
    response = predict_png(client, image)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL
    assert set(body["timing_ms"]) >= {"decode", "inference", "total"}
    [det] = body["detections"]
    assert det["label"] == label
    assert det["score"] > 0.9
    # The model sees a 64x64 resize and splits it in halves; scaled back, the box must cover the
    # coloured quadrant of the original image to within the rounding of the model's half size.
    x1 = 0 if region.endswith("left") else width / 2
    y1 = 0 if region.startswith("top") else height / 2
    expected = [x1, y1, x1 + width / 2, y1 + height / 2]
    assert det["box"] == pytest.approx(expected, abs=1e-3)


def test_grey_image_has_no_detections(client):
    response = predict_png(client, np.full((50, 70, 3), 128, dtype=np.uint8))
    assert response.status_code == 200
    assert response.json()["detections"] == []


def test_raw_jpeg_png_and_multipart_agree(client):
    image = sample_image(120, 80, seed=3)
    png = encode(image, "PNG")
    raw = client.post(f"/v1/models/{MODEL}:predict", content=png, headers={"content-type": "image/png"})
    body, headers = multipart(("image", "a.png", "image/png", png))
    form = client.post(f"/v1/models/{MODEL}:predict", content=body, headers=headers)
    assert raw.status_code == form.status_code == 200
    assert raw.json()["detections"] == form.json()["detections"]
    assert raw.json()["detections"], "the sample image has a red quadrant; expected one detection"


def test_rgba_and_greyscale_inputs_are_converted_to_rgb(client):
    from PIL import Image

    rgba = np.dstack([sample_image(40, 40), np.full((40, 40), 255, dtype=np.uint8)])
    for img in (Image.fromarray(rgba, "RGBA"), Image.fromarray(sample_image(40, 40)).convert("L")):
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG")
        response = client.post(
            f"/v1/models/{MODEL}:predict", content=buf.getvalue(), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("case", bad_request_cases(MODEL), ids=lambda c: c.name)
def test_bad_request_is_a_json_4xx(client, case):
    kwargs = {"headers": case.headers}
    if case.content is not None:
        kwargs["content"] = case.content
    response = client.request(case.method, case.path, **kwargs)
    result = check_response(case, response)
    assert result.ok, result.detail
    assert 400 <= response.status_code < 500


def test_all_cases_then_still_serving(client):
    results = run_cases(client, MODEL)
    failed = [r for r in results if not r.ok]
    assert not failed, failed
    assert {r.case for r in results} >= {c.name for c in good_request_cases(MODEL)} | {"healthz_after"}


def test_body_over_limit_is_413(model_dir):
    app = create_app(Settings(model_dir=model_dir, max_body_bytes=1000))
    client = started_client(app)
    try:
        big = encode(sample_image(200, 200), "PNG")
        assert len(big) > 1000
        response = client.post(
            f"/v1/models/{MODEL}:predict", content=big, headers={"content-type": "image/png"}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        # Without a Content-Length (chunked upload) the limit still holds while reading.
        def chunks():
            for i in range(0, len(big), 256):
                yield big[i : i + 256]

        response = client.post(
            f"/v1/models/{MODEL}:predict", content=chunks(), headers={"content-type": "image/png"}
        )
        assert response.status_code == 413
    finally:
        client.__exit__(None, None, None)


def test_pixel_limit_is_configurable(model_dir):
    app = create_app(Settings(model_dir=model_dir, max_image_pixels=32 * 32))
    client = started_client(app)
    try:
        assert predict_png(client, sample_image(32, 32)).status_code == 200
        response = predict_png(client, sample_image(33, 32))
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "image_too_large"
    finally:
        client.__exit__(None, None, None)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', series[len(name) + 1 : -1]))
        if found == labels:
            return float(value)
    return 0.0


def test_metrics_count_requests_and_latency(client):
    route = "/v1/models/{name}:predict"
    before = client.get("/metrics").text
    ok_before = _metric(before, "slipway_requests_total", method="POST", route=route, status="200")
    bad_before = _metric(before, "slipway_requests_total", method="POST", route=route, status="400")
    predict_png(client, sample_image())
    predict_png(client, sample_image())
    client.post(f"/v1/models/{MODEL}:predict", content=b"junk", headers={"content-type": "image/png"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert _metric(text, "slipway_requests_total", method="POST", route=route, status="200") == ok_before + 2
    assert _metric(text, "slipway_requests_total", method="POST", route=route, status="400") == bad_before + 1
    count = _metric(text, "slipway_request_duration_seconds_count", method="POST", route=route)
    inf_bucket = _metric(
        text, "slipway_request_duration_seconds_bucket", method="POST", route=route, le="+Inf"
    )
    assert count == inf_bucket >= 3
    assert _metric(text, "slipway_inference_duration_seconds_count", model=MODEL) >= 2
    assert _metric(text, "slipway_model_ready", model=MODEL, backend="torchscript") == 1
    assert _metric(text, "slipway_rejected_requests_total", code="not_an_image") >= 1


def test_missing_model_file_means_not_ready_but_alive(tmp_path, caplog):
    folder = write_tiny_model(tmp_path / "m", name=MODEL)
    (folder / "model.torchscript.pt").unlink()
    app = create_app(Settings(model_dir=folder))
    client = started_client(app)
    try:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["state"] == "error"
        # The reason says what kind of failure, never the server's paths or a traceback: those are
        # in the log.
        assert ready.json()["reason"] == "the model failed to load; see the service log"
        assert "model.torchscript.pt" in caplog.text
        response = predict_png(client, sample_image())
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert str(tmp_path) not in response.text and str(tmp_path) not in client.get("/v1/models").text
        assert (
            _metric(client.get("/metrics").text, "slipway_model_ready", model=MODEL, backend="torchscript")
            == 0
        )
    finally:
        client.__exit__(None, None, None)


class _GatedBackend(TorchScriptBackend):
    """Loads normally but holds its warm-up until released, to observe readiness in between."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.loaded = threading.Event()

    def warmup(self):
        self.loaded.set()
        assert self.gate.wait(30)
        super().warmup()


def test_ready_only_after_warmup(model_dir):
    backend = _GatedBackend(model_dir, load_manifest(model_dir))
    app = create_app(Settings(model_dir=model_dir), backend=backend)
    with TestClient(app) as client:
        assert backend.loaded.wait(30)
        # Loaded but not warmed up: alive, not ready, predict refused with 503.
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["state"] == "loading"
        assert predict_png(client, sample_image()).status_code == 503
        backend.gate.set()
        assert backend.wait_started(30)
        assert client.get("/readyz").status_code == 200
        assert predict_png(client, sample_image()).status_code == 200


class _BrokenBackend(TorchScriptBackend):
    def _predict(self, image):
        if image.shape[0] == 13:
            raise RuntimeError("secret internal detail")
        return super()._predict(image)


def test_inference_failure_is_json_500_without_internals(model_dir):
    app = create_app(
        Settings(model_dir=model_dir), backend=_BrokenBackend(model_dir, load_manifest(model_dir))
    )
    client = started_client(app)
    try:
        response = predict_png(client, sample_image(20, 13))
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "inference_failed"
        assert "secret" not in response.text
        assert predict_png(client, sample_image(20, 14)).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_settings_from_env_collects_every_problem():
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"BACKEND": "caffe", "PORT": "http", "THREADS": "0", "DEVICE": "tpu"})
    message = str(info.value)
    for needle in ("MODEL_DIR", "BACKEND='caffe'", "PORT='http'", "THREADS=0", "DEVICE='tpu'"):
        assert needle in message


def test_settings_tfserving_needs_url():
    with pytest.raises(ConfigurationError, match="TFSERVING_URL"):
        Settings.from_env({"MODEL_DIR": "/m", "BACKEND": "tfserving"})
    settings = Settings.from_env(
        {"MODEL_DIR": "/m", "BACKEND": "tfserving", "TFSERVING_URL": "http://h:8501/"}
    )
    assert settings.tfserving_url == "http://h:8501"
    # THREADS unset: chosen with the slots from the CPUs (serving.limits.parallelism).
    assert (settings.port, settings.threads, settings.slots, settings.host) == (8080, None, None, "0.0.0.0")


# --- the process, as an image runs it ----------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_serving_refuses_a_bad_environment():
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DIR", "BACKEND")}
    env.update({"PYTHONPATH": str(ROOT), "BACKEND": "nope"})
    res = subprocess.run(
        [sys.executable, "-m", "serving"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "MODEL_DIR is not set" in res.stderr and "BACKEND='nope'" in res.stderr


def test_python_m_serving_refuses_a_folder_without_manifest(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_DIR": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-m", "serving"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "model.json" in res.stderr and "not found" in res.stderr


@pytest.mark.slow
def test_python_m_serving_starts_serves_and_passes_its_healthcheck(model_dir, tmp_path):

    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MODEL_DIR": str(model_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "THREADS": "1",
    }
    healthcheck = [sys.executable, "-m", "serving.healthcheck"]
    # Nothing listens yet: the healthcheck must fail, not hang or pass.
    assert subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode == 1
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log_file:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=proc, log=log_path)
            ready_after = time.monotonic() - started
            print(f"python -m serving: start to ready in {ready_after:.2f}s")
            assert subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode == 0
            results = run_cases_against(f"http://127.0.0.1:{port}", MODEL)
            assert all(r.ok for r in results), [r for r in results if not r.ok]
        finally:
            proc.terminate()
            # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why.
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log_path.read_text()

