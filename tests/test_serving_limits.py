"""The service under hostile load, without Docker: admission, timeouts, client aborts, metric labels.

The timeouts and the 499 path need a real HTTP server (``python -m serving`` on loopback, with the
tiny TorchScript model); the admission queue and the label set are tested in process.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from readiness import wait_http, wait_until
from testclient import TestClient

from serving.app import create_app
from serving.config import Settings
from serving.limits import Admission, Limits, Overloaded, cgroup_memory_limit, decode_cost
from slipway.request_cases import encode, sample_image, write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny-torch"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), name=MODEL)


# --------------------------------------------------------------------------------------------
# Limits derived from the memory limit


def test_cgroup_limits_are_read_from_v2_and_v1(tmp_path):
    (tmp_path / "memory.max").write_text("2147483648\n")
    assert cgroup_memory_limit(tmp_path) == 2 * 1024**3
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1: none
    assert cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert cgroup_memory_limit(tmp_path) == 1024**3


def test_budgets_follow_the_memory_limit_and_slots():
    two = Limits.derive(slots=2, max_body_bytes=32 << 20, max_image_pixels=40_000_000, memory_limit_bytes=2 << 30)
    assert two.decode_budget_bytes == int((2 << 30) * 0.4)
    assert two.max_inflight == 2 and two.max_queue == 8
    # Batching: one request in flight per place in each slot's batch.
    batched = Limits.derive(slots=2, batch_max=8, max_body_bytes=1000, max_image_pixels=100)
    assert batched.max_inflight == 16 and batched.max_queue == 64
    # The largest image still fits the whole decode budget, even one that needs a conversion.
    assert decode_cost(1, two.max_image_pixels, "P") <= two.decode_budget_bytes
    small = Limits.derive(slots=1, max_body_bytes=32 << 20, max_image_pixels=40_000_000, memory_limit_bytes=512 << 20)
    assert small.max_image_pixels < two.max_image_pixels and small.body_budget_bytes >= 2 * (32 << 20)
    fixed = Limits.derive(slots=2, max_body_bytes=1000, max_image_pixels=100, memory_limit_bytes=2 << 30,
                          max_inflight=1, max_queue=0, queue_timeout_s=0.5, decode_budget_bytes=10_000)
    assert (fixed.max_inflight, fixed.max_queue, fixed.queue_timeout_s, fixed.decode_budget_bytes) == (1, 0, 0.5, 10_000)


def test_settings_read_the_limits_from_the_environment():
    s = Settings.from_env({"MODEL_DIR": "/m", "MAX_INFLIGHT": "3", "MAX_QUEUE": "0", "QUEUE_TIMEOUT_S": "2.5",
                           "MEMORY_LIMIT_BYTES": str(1 << 30), "HEADER_TIMEOUT_S": "4", "BODY_TIMEOUT_S": "6",
                           "REQUEST_TIMEOUT_S": "20", "MAX_CONNECTIONS": "64"})
    limits = s.limits()
    assert (limits.max_inflight, limits.max_queue, limits.queue_timeout_s) == (3, 0, 2.5)
    assert limits.memory_limit_bytes == 1 << 30
    assert (s.header_timeout_s, s.body_timeout_s, s.request_timeout_s, s.max_connections) == (4, 6, 20, 64)
    with pytest.raises(ValueError, match="BODY_TIMEOUT_S='soon'"):
        Settings.from_env({"MODEL_DIR": "/m", "BODY_TIMEOUT_S": "soon"})


def test_admission_queues_in_order_and_refuses_beyond_the_queue():
    async def scenario():
        adm = Admission(budget=100, max_inflight=2, max_queue=2, timeout_s=5)
        await adm.acquire(60)
        await adm.acquire(30)  # two in flight
        order: list[str] = []

        async def waiter(name: str, cost: int):
            await adm.acquire(cost)
            order.append(name)

        a = asyncio.create_task(waiter("a", 50))
        b = asyncio.create_task(waiter("b", 10))
        await asyncio.sleep(0)
        assert adm.queued == 2
        with pytest.raises(Overloaded):  # the queue is full
            await adm.acquire(1)
        adm.release(60)  # room for a (50 + 30 <= 100); b waits behind it even though it is smaller
        for _ in range(10):
            await asyncio.sleep(0)
        assert order == ["a"] and adm.inflight == 2
        adm.release(30)
        await asyncio.gather(a, b)
        assert order == ["a", "b"] and adm.used == 60

        slow = Admission(budget=10, max_inflight=1, max_queue=4, timeout_s=0.05)
        await slow.acquire(10)
        with pytest.raises(Overloaded):  # the wait ran out
            await slow.acquire(5)
        assert slow.queued == 0
        # A request larger than the whole budget runs alone rather than never.
        slow.release(10)
        await slow.acquire(10_000)
        assert slow.used == 10

    asyncio.run(scenario())


def test_a_full_service_answers_503_with_retry_after(model_dir):
    app = create_app(Settings(model_dir=model_dir, max_inflight=1, max_queue=0))
    with TestClient(app) as client:
        assert app.state.service.backend.wait_started(60)
        service = app.state.service
        # Someone else holds the only slot.
        asyncio.run(service.admission.acquire(1))
        r = client.post(f"/v1/models/{MODEL}:predict", content=encode(sample_image(), "PNG"),
                        headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        service.admission.release(1)
        r = client.post(f"/v1/models/{MODEL}:predict", content=encode(sample_image(), "PNG"),
                        headers={"content-type": "image/png"})
        assert r.status_code == 200
        # Nothing is left held once the answers are out.
        assert service.admission.inflight == 0 and service.bodies.used == 0


def test_large_jpegs_are_decoded_at_a_reduced_scale_with_boxes_in_original_pixels(model_dir):
    import numpy as np

    app = create_app(Settings(model_dir=model_dir))
    big = np.repeat(np.repeat(sample_image(), 20, axis=0), 20, axis=1)  # 1920x1280, the same scene
    with TestClient(app) as client:
        assert app.state.service.backend.wait_started(60)
        small = client.post(f"/v1/models/{MODEL}:predict", content=encode(sample_image(), "PNG"),
                            headers={"content-type": "image/png"}).json()
        r = client.post(f"/v1/models/{MODEL}:predict", content=encode(big, "JPEG"),
                        headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["image"] == {"width": big.shape[1], "height": big.shape[0]}
        # Same detections as the small original, scaled by 20, in the original's pixels.
        assert [d["label"] for d in body["detections"]] == [d["label"] for d in small["detections"]]
        for d, s in zip(body["detections"], small["detections"], strict=True):
            assert d["box"] == pytest.approx([v * 20 for v in s["box"]], abs=24)


def test_a_request_past_the_total_timeout_is_503(model_dir):
    from serving.backends.torchscript import TorchScriptBackend

    class Slow(TorchScriptBackend):
        def _predict(self, image):
            time.sleep(1.5)
            return super()._predict(image)

    settings = Settings(model_dir=model_dir, request_timeout_s=0.5)
    from serving.manifest import load_manifest

    backend = Slow(model_dir, load_manifest(model_dir), threads=1)
    backend.warmup = lambda: None  # type: ignore[method-assign]
    app = create_app(settings, backend=backend)
    with TestClient(app) as client:
        assert backend.wait_started(60)
        r = client.post(f"/v1/models/{MODEL}:predict", content=encode(sample_image(), "PNG"),
                        headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "request_timeout"
        # The work finishes on its own and gives its budget back.
        service = app.state.service
        wait_until(lambda: service.admission.inflight == 0, timeout=5, what="the abandoned work")
        assert service.admission.inflight == 0 and service.bodies.used == 0


def test_metric_labels_come_from_a_fixed_set(model_dir):
    app = create_app(Settings(model_dir=model_dir))
    with TestClient(app) as client:
        assert app.state.service.backend.wait_started(60)
        client.get("/healthz")
        before = client.get("/metrics").text
        for i in range(300):
            client.request(f"X{i}METHOD", f"/made/up/path/{i}")
            client.get(f"/v1/models/{'n' * (i + 1)}")
        after = client.get("/metrics").text
    series = [line for line in after.splitlines() if line.startswith("slipway_requests_total{")]
    methods = set(re.findall(r'method="([^"]*)"', after))
    routes = set(re.findall(r'route="([^"]*)"', after))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert routes <= {"/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/{name}",
                      "/v1/models/{name}:predict", "unmatched"}
    assert len(series) <= 10, series
    # 600 odd requests add a handful of lines, not hundreds.
    assert len(after.splitlines()) - len(before.splitlines()) < 60


def test_backend_descriptions_lose_their_credentials():
    from serving.app import public

    info = public({"tfserving_url": "https://user:secret@tfs.example.com:8501/v1", "device": "remote"})
    assert info == {"tfserving_url": "https://tfs.example.com:8501/v1", "device": "remote"}


def test_error_bodies_echo_names_briefly(model_dir):
    app = create_app(Settings(model_dir=model_dir))
    with TestClient(app) as client:
        assert app.state.service.backend.wait_started(60)
        r = client.get("/v1/models/" + "a" * 5000)
        assert r.status_code == 404 and len(r.text) < 400
        r = client.post("/v1/models/" + "b" * 5000 + ":predict", content=b"x", headers={"content-type": "image/png"})
        assert r.status_code == 404 and len(r.text) < 400
        r = client.get("/" + "c" * 5000)
        assert r.status_code == 404 and len(r.text) < 400


# --------------------------------------------------------------------------------------------
# A real server: header and body timeouts, client aborts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model_dir: Path, log_path: Path, **env: str):
    """``python -m serving`` on a free loopback port, ready; returns (process, url, port)."""
    port = _free_port()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_DIR": str(model_dir), "HOST": "127.0.0.1",
                "PORT": str(port), "THREADS": "1", **env}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "serving"], env=full_env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout=60, proc=proc, log=log_path)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return proc, url, port


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("log") / "service.log"
    proc, url, port = _start_server(model_dir, log_path, HEADER_TIMEOUT_S="1", BODY_TIMEOUT_S="1.5")
    try:
        yield url, port, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it sent first."""
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, data
            data += chunk
    except TimeoutError:
        return False, data
    except ConnectionResetError:
        return True, data


@pytest.mark.slow
def test_slow_headers_are_cut_off(server):
    _, port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as silent, \
            socket.create_connection(("127.0.0.1", port)) as trickle:
        trickle.sendall(b"POST /v1/models/tiny-torch:predict HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed, _ = _closed_within(trickle, 5)
        assert closed and time.monotonic() - started < 3
        closed, _ = _closed_within(silent, 3)
        assert closed


@pytest.mark.slow
def test_a_slow_body_gets_408(server):
    url, port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/models/tiny-torch:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\x89PNG" + b"\0" * 1000)
        started = time.monotonic()
        _, data = _closed_within(sock, 6)
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert time.monotonic() - started < 4
    assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200


@pytest.mark.slow
def test_a_client_abort_is_a_499_in_one_log_line(server):
    url, port, log_path = server
    before = log_path.read_text()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/models/tiny-torch:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000\r\n\r\n" + b"\x89PNG" + b"\0" * 1000)
            time.sleep(0.2)
    def counted() -> str | None:
        text = httpx.get(f"{url}/metrics", timeout=2).text
        return text if 'status="499"} 3' in text else None

    metrics = wait_until(counted, timeout=5, what="three 499s in /metrics")
    assert 'slipway_requests_total{method="POST",route="/v1/models/{name}:predict",status="499"} 3' in metrics
    assert 'status="500"' not in metrics
    new = log_path.read_text()[len(before):]
    lines = [line for line in new.splitlines() if line.strip() and "/healthz" not in line and "/metrics" not in line]
    assert "Traceback" not in new
    # One line per abort (uvicorn's access log adds none for a request that got no answer).
    assert len([line for line in lines if "client closed the connection" in line]) == 3, new
    assert len(lines) <= 3, new


@pytest.mark.slow
def test_beyond_max_connections_is_a_json_503_with_retry_after(model_dir, tmp_path):
    proc, url, port = _start_server(model_dir, tmp_path / "service.log", MAX_CONNECTIONS="3")
    try:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)
        r = httpx.get(f"{url}/healthz", timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_client_gone_during_inference_is_a_499(model_dir):
    import threading

    import uvicorn

    from serving.backends.torchscript import TorchScriptBackend
    from serving.manifest import load_manifest
    from serving.protocol import protocol_class

    class Slow(TorchScriptBackend):
        def _predict(self, image):
            time.sleep(1.0)
            return super()._predict(image)

    backend = Slow(model_dir, load_manifest(model_dir), threads=1)
    backend.warmup = lambda: None  # type: ignore[method-assign]
    app = create_app(Settings(model_dir=model_dir), backend=backend)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=protocol_class(5.0)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", timeout=30)
        body = encode(sample_image(), "PNG")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/models/tiny-torch:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.3)  # the body is in, the model is busy: the client leaves
        deadline = time.monotonic() + 5
        metrics = ""
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{url}/metrics", timeout=2).text
            if 'status="499"' in metrics:
                break
            time.sleep(0.1)
        assert 'slipway_requests_total{method="POST",route="/v1/models/{name}:predict",status="499"} 1' in metrics
        assert 'route="/v1/models/{name}:predict",status="200"' not in metrics
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("protocol", ["GuardedH11Protocol", "GuardedHttpToolsProtocol"])
def test_both_http_protocols_cut_off_slow_headers(protocol):
    """The header timer is one mechanism for uvicorn's httptools protocol and its h11 fallback: a
    silent connection, a trickled request line, and a second request on a kept-alive connection
    whose headers stall are all closed."""
    import threading

    import uvicorn

    from serving import protocol as protocols

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = type("Guarded", (getattr(protocols, protocol),), {"header_timeout_s": 1.0})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=guarded,
                                           lifespan="off", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=30)
        with socket.create_connection(("127.0.0.1", port)) as silent, \
                socket.create_connection(("127.0.0.1", port)) as trickle, \
                socket.create_connection(("127.0.0.1", port)) as kept:
            trickle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            kept.settimeout(5)
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET / HTTP/1.1\r\n")  # the next request's headers never end
            started = time.monotonic()
            for sock in (trickle, silent, kept):
                closed, _ = _closed_within(sock, 4)
                assert closed, protocol
            assert time.monotonic() - started < 4
    finally:
        server.should_exit = True
        thread.join(10)
