"""Inference worker processes (serving/workers.py): the layout rule, the same answers as slots on
threads, image errors carried back, a worker that dies replaced, a model that cannot load refused.

Every test runs real processes (forked from the fork server) on a real TorchScript or ONNX model.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from testclient import TestClient

from serving.app import create_app
from serving.config import ConfigurationError, Settings
from serving.limits import default_parallelism
from serving.memory import _mappings
from serving.workers import SMALL_FRAME
from slipway.request_cases import encode, sample_image, write_tiny_model

MODEL = "tiny-workers"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), name=MODEL, onnx=True)


def _env(model_dir, **extra) -> dict[str, str]:
    return {"MODEL_DIR": str(model_dir), "BACKEND": "torchscript", "DEVICE": "cpu", **extra}


def _wait_ready(client, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200 or r.json().get("state") == "error":
            return r
        time.sleep(0.1)
    raise AssertionError(f"not ready after {timeout}s: {r.json()}")


def _predict(client, body: bytes, content_type: str = "image/png"):
    return client.post(f"/v1/models/{MODEL}:predict", content=body, headers={"content-type": content_type})


def _metric(client, name: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no metric {name}")


# --- the layout rule -----------------------------------------------------------------------------

@pytest.mark.parametrize(("cpus", "backend", "device", "batch", "expected"), [
    (2, "torchscript", "cpu", 1, (2, 2, 1)),
    (4, "onnx", "cpu", 1, (4, 4, 1)),
    (1, "torchscript", "cpu", 1, (1, 1, 1)),       # one CPU: nothing to gain from a second process
    (2, "torchscript", "gpu", 1, (1, 2, 2)),       # a GPU batches instead
    (2, "torchscript", "auto", 1, (1, 2, 2)),      # the device is not known to be the CPU
    (2, "torchscript", "cpu", 8, (1, 2, 2)),       # batching stacks images of one process
    (2, "cpp", "cpu", 1, (2, 2, 1)),               # the C++ runtime decodes in Python
    (2, "tensorflow", "cpu", 1, (1, 2, 2)),
])
def test_default_layout(cpus, backend, device, batch, expected):
    assert default_parallelism(cpus, backend, device, batch) == expected


def test_workers_are_capped_by_the_memory_their_models_take():
    mib, gib = 2**20, 2**30
    # 8 CPUs, 2 GiB, a 10 MiB model: 256 + 30 MiB per worker in half of 2 GiB -> 3 workers x 2 threads.
    assert default_parallelism(8, "torchscript", "cpu", model_bytes=10 * mib, memory_bytes=2 * gib) == (3, 3, 2)
    # A 1 GiB model in 4 GiB: not even two copies fit; one process, slots on threads.
    assert default_parallelism(8, "onnx", "cpu", model_bytes=gib, memory_bytes=4 * gib) == (1, 8, 2)
    # No limit known: one per CPU.
    assert default_parallelism(8, "onnx", "cpu", model_bytes=gib) == (8, 8, 1)


def test_the_service_reads_its_model_size_and_memory_limit(model_dir, monkeypatch):
    monkeypatch.setattr("serving.limits.available_cpus", lambda *a, **k: 8)
    size = (model_dir / "model.torchscript.pt").stat().st_size
    room = 2 * (256 * 2**20 + 3 * size)  # exactly two workers' worth in half of the limit
    settings = Settings.from_env(_env(model_dir, MEMORY_LIMIT_BYTES=str(room * 2)))
    assert settings.layout() == (2, 2, 4)
    settings = Settings.from_env(_env(model_dir, MEMORY_LIMIT_BYTES=str(room * 2 - 4096)))
    assert settings.layout() == (1, 8, 2)


def test_explicit_settings_override_the_default(model_dir, monkeypatch):
    monkeypatch.setattr("serving.limits.available_cpus", lambda *a, **k: 4)
    layout = lambda **env: Settings.from_env(_env(model_dir, MEMORY_LIMIT_BYTES=str(2**34), **env)).layout()  # noqa: E731
    assert layout() == (4, 4, 1)
    assert layout(SLIPWAY_WORKERS="1") == (1, 4, 2)
    assert layout(SLIPWAY_SLOTS="2") == (1, 2, 2)
    assert layout(SLIPWAY_THREADS="4") == (1, 1, 4)
    assert layout(SLIPWAY_WORKERS="2") == (2, 2, 2)
    assert layout(SLIPWAY_WORKERS="3", SLIPWAY_THREADS="1") == (3, 3, 1)


@pytest.mark.parametrize(("env", "message"), [
    ({"SLIPWAY_WORKERS": "0"}, "SLIPWAY_WORKERS=0"),
    ({"SLIPWAY_WORKERS": "two"}, "SLIPWAY_WORKERS='two'"),
    ({"SLIPWAY_WORKERS": "2", "SLIPWAY_BATCH_MAX": "4"}, "SLIPWAY_WORKERS=2 with SLIPWAY_BATCH_MAX=4"),
    ({"SLIPWAY_WORKERS": "2", "SLIPWAY_SLOTS": "3"}, "SLIPWAY_SLOTS=3 with SLIPWAY_WORKERS=2"),
    ({"SLIPWAY_WORKERS": "2", "BACKEND": "tfserving", "TFSERVING_URL": "http://127.0.0.1:1"}, "BACKEND=tfserving"),
])
def test_bad_worker_settings_are_refused_naming_the_variable(model_dir, env, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        Settings.from_env(_env(model_dir, **env))


# --- real worker processes -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_workers_answer_like_slots_on_threads(model_dir, backend):
    images = [encode(sample_image(96, 80, seed), "png") for seed in range(4)]
    # Over SMALL_FRAME: written to the worker in pieces as its socket takes them.
    images.append(encode(sample_image(900, 700, 9), "png"))
    assert len(images[-1]) > SMALL_FRAME
    answers = {}
    for workers in ("1", "2"):
        app = create_app(Settings.from_env(_env(model_dir, BACKEND=backend, SLIPWAY_WORKERS=workers)))
        with TestClient(app) as client:
            assert _wait_ready(client).status_code == 200
            info = client.get(f"/v1/models/{MODEL}").json()
            assert info["parallelism"]["workers"] == int(workers)
            results = [_predict(client, body) for body in images]
            assert all(r.status_code == 200 for r in results), [r.text for r in results]
            answers[workers] = [r.json()["detections"] for r in results]
            timing = results[0].headers["server-timing"]
            assert all(stage in timing for stage in ("decode", "preprocess", "infer", "postprocess"))
            if workers == "2":
                assert info["worker_processes"] == 2
                assert _metric(client, "slipway_worker_processes") == 2
                processes = list(app.state.service.process_backend._alive.values())
        if workers == "2":
            # Closing the app ends every worker.
            assert all(not w.process.is_alive() for w in processes)
    assert answers["1"] == answers["2"]
    assert any(answers["2"]), "the sample images should give detections"


def test_image_errors_come_back_from_a_worker(model_dir):
    app = create_app(Settings.from_env(_env(model_dir, SLIPWAY_WORKERS="2")))
    png = encode(sample_image(96, 80, 1), "png")
    with TestClient(app) as client:
        _wait_ready(client)
        # The header is fine (so the service admits it), the pixel data is cut: only the worker's
        # decode finds it, and its 400 must come back as such, not as a 500.
        r = _predict(client, png[: len(png) // 2])
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_image"
        assert _predict(client, png).status_code == 200


def _wait_restarts(backend, n: int) -> None:
    deadline = time.monotonic() + 60
    while backend.restarts < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.restarts == n


def test_a_worker_that_dies_is_replaced(model_dir):
    app = create_app(Settings.from_env(_env(model_dir, SLIPWAY_WORKERS="2")))
    body = encode(sample_image(96, 80, 2), "png")
    # Random pixels compress badly: a large PNG whose decode keeps a worker busy for a while.
    large = encode(np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8), "png")
    with TestClient(app) as client:
        _wait_ready(client)
        backend = app.state.service.process_backend

        # An idle worker found dead is replaced before it is given a request: nothing fails.
        victim = next(iter(backend._alive.values())).process
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        assert [_predict(client, body).status_code for _ in range(6)] == [200] * 6
        _wait_restarts(backend, 1)

        # A worker killed in the middle of an inference fails that request (500, never a hang)
        # and is replaced while the other one serves.
        busy_before = {w.index for w in backend._idle}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_predict, client, large)
            deadline = time.monotonic() + 10
            while len(backend._idle) == len(busy_before) and time.monotonic() < deadline:
                time.sleep(0.005)
            busy = [w for w in backend._alive.values() if w not in backend._idle]
            assert len(busy) == 1, "the large image should be on one worker"
            os.kill(busy[0].process.pid, signal.SIGKILL)
            answer = pending.result(30)
        assert answer.status_code == 500, answer.text
        assert answer.json()["error"]["code"] == "inference_failed"
        assert _predict(client, body).status_code == 200
        _wait_restarts(backend, 2)
        assert _metric(client, "slipway_worker_restarts") == 2
        assert _metric(client, "slipway_worker_processes") == 2
        assert all(_predict(client, body).status_code == 200 for _ in range(4))
        assert client.get("/readyz").status_code == 200
        # Every worker, the replacements forked from the running service too, holds one socket:
        # its own to the service (none of the service's connections).
        for worker in backend._alive.values():
            fds = Path(f"/proc/{worker.process.pid}/fd")
            sockets = [fd for fd in fds.iterdir() if os.readlink(fd).startswith("socket:")]
            assert len(sockets) == 1, (worker.index, [os.readlink(fd) for fd in sockets])


def test_a_model_the_workers_cannot_load_is_not_ready(model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.torchscript.pt").write_bytes(b"not a TorchScript archive")
    app = create_app(Settings.from_env(_env(broken, SLIPWAY_WORKERS="2")))
    with TestClient(app) as client:
        r = _wait_ready(client)
        assert r.status_code == 503
        assert r.json()["state"] == "error"
        r = _predict(client, encode(sample_image(96, 80, 3), "png"))
        assert r.status_code == 503, r.text


def test_the_service_drops_the_frameworks_import_only_pages_once_its_workers_are_ready(model_dir):
    app = create_app(Settings.from_env(_env(model_dir, SLIPWAY_WORKERS="2")))
    with TestClient(app) as client:
        assert _wait_ready(client).status_code == 200
        # What this process (the service) still maps of libtorch's unmodified pages: not the tens of
        # MiB its import touched (an earlier test in this process may have released them already).
        torch_dir = str(Path(torch.__file__).resolve().parent) + os.sep
        clean = sum(rss for _, _, perms, path, rss, anon in _mappings()
                    if path.startswith(torch_dir) and "w" not in perms and not anon)
        assert clean < 16 << 20, f"{clean >> 20} MiB of libtorch's pages still mapped"
        # The service still answers (its own and the workers' framework code intact).
        assert _predict(client, encode(sample_image(96, 80, 3), "png")).status_code == 200
