"""Inference slots on one loaded model, dynamic batching, the per-stage breakdown (Server-Timing and
the stage histograms), and the one entry point ``Service.infer`` every protocol calls.

Concurrency is measured with backends that sleep (a sleep releases the GIL, as a framework's
forward does): two slow requests on two slots finish in about the time of one, on one slot in two.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.app import InferResult, create_app, server_timing
from serving.backends.base import Backend
from serving.backends.torchscript import TorchScriptBackend
from serving.config import ConfigurationError, Settings
from serving.limits import available_cpus, parallelism
from serving.manifest import load_manifest
from serving.metrics import STAGES
from slipway.request_cases import encode, sample_image, write_tiny_model

MODEL = "tiny-slots"
SLOW_S = 0.4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), name=MODEL)


class SleepyBackend(Backend):
    """One box per image after ``SLOW_S`` of sleep; counts the calls that overlap."""

    name = "sleepy"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.running = 0
        self.most = 0

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def _predict(self, image):
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            time.sleep(SLOW_S)
        finally:
            self.running -= 1
        h, w = image.shape[:2]
        return [{"box": [0.0, 0.0, w / 2, h / 2], "score": 0.9, "class_id": 0, "label": "red"}]


class BatchRecorder(TorchScriptBackend):
    """The tiny TorchScript model, recording the batch size of every forward pass after warm-up."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.batches: list[int] = []
        self.record = False

    def forward(self, batch):
        if self.record:
            self.batches.append(int(batch.shape[0]))
            time.sleep(0.05)
        return super().forward(batch)


def _service(app):
    service = app.state.service
    service.backend.start()
    assert service.backend.state == "ready", service.backend.error
    return service


async def _post_all(app, bodies: list[bytes], path: str = f"/v1/models/{MODEL}:predict") -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await asyncio.gather(
            *[client.post(path, content=body, headers={"content-type": "image/png"}) for body in bodies]
        )


def _timed(app, n: int) -> float:
    body = encode(sample_image(), "PNG")
    started = time.perf_counter()
    responses = asyncio.run(_post_all(app, [body] * n))
    elapsed = time.perf_counter() - started
    assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
    return elapsed


# --------------------------------------------------------------------------------------------
# Slots


def test_two_slots_run_two_slow_inferences_at_once(model_dir):
    manifest = load_manifest(model_dir)
    two = SleepyBackend(model_dir, manifest)
    app = create_app(Settings(model_dir=model_dir, slots=2, threads=1), backend=two)
    _service(app)
    elapsed = _timed(app, 2)
    assert two.most == 2
    # About one inference's time, not two (with room for a busy machine).
    assert elapsed < 1.6 * SLOW_S, elapsed

    one = SleepyBackend(model_dir, manifest)
    app = create_app(Settings(model_dir=model_dir, slots=1, threads=1), backend=one)
    _service(app)
    elapsed = _timed(app, 2)
    assert one.most == 1
    assert elapsed >= 2 * SLOW_S, elapsed


def test_slots_and_admission_are_one_mechanism(model_dir):
    app = create_app(Settings(model_dir=model_dir, slots=3, threads=1, max_queue=0),
                     backend=SleepyBackend(model_dir, load_manifest(model_dir)))
    service = _service(app)
    assert service.limits.max_inflight == 3 and service.workers._max_workers == 3
    # Three run, the fourth finds no slot and no queue: 503 overloaded, at once.
    responses = asyncio.run(_post_all(app, [encode(sample_image(), "PNG")] * 4))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 503]
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded" and refused.headers["retry-after"] == "1"


def test_torchscript_slots_give_the_same_detections_as_one(model_dir):
    """The real TorchScript module called from several slots at once: same answers as one by one."""
    images = [sample_image(96, 64, seed=i) for i in range(8)]
    for i, image in enumerate(images):  # a different dominant quadrant per image
        image[:] = 128
        q = i % 4
        h, w = image.shape[0] // 2, image.shape[1] // 2
        image[(q // 2) * h:(q // 2 + 1) * h, (q % 2) * w:(q % 2 + 1) * w] = [(230, 20, 20), (20, 230, 20),
                                                                            (20, 20, 230), (230, 20, 20)][q]
    bodies = [encode(image, "PNG") for image in images]
    serial = create_app(Settings(model_dir=model_dir, slots=1, threads=1))
    _service(serial)
    expected = [r.json()["detections"] for r in asyncio.run(_post_all(serial, bodies))]
    parallel = create_app(Settings(model_dir=model_dir, slots=4, threads=1, max_queue=32))
    _service(parallel)
    got = [r.json()["detections"] for r in asyncio.run(_post_all(parallel, bodies * 3))]
    assert got == expected * 3
    assert len({str(d) for d in expected}) == 4


def test_parallelism_fills_the_cpus():
    assert parallelism(4, None, None) == (4, 2)
    assert parallelism(1, None, None) == (1, 1)
    assert parallelism(4, None, 2) == (2, 2)
    assert parallelism(4, 1, None) == (1, 4)
    assert parallelism(2, 3, 3) == (3, 3)
    assert parallelism(1, None, 4) == (1, 4)


def test_available_cpus_follow_the_cgroup_quota(tmp_path):
    mine = available_cpus(tmp_path)  # no cgroup files here: the affinity alone
    assert mine >= 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # --cpus 1.5
    assert available_cpus(tmp_path) == min(mine, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == mine


def test_settings_read_slots_threads_and_batching():
    s = Settings.from_env({"MODEL_DIR": "/m", "SLIPWAY_SLOTS": "3", "SLIPWAY_THREADS": "2",
                           "SLIPWAY_BATCH_MAX": "8", "SLIPWAY_BATCH_DELAY_MS": "4"})
    assert (s.slots, s.threads, s.batch_max, s.batch_delay_ms) == (3, 2, 8, 4.0)
    assert s.parallelism() == (3, 2) and s.limits().max_inflight == 24
    # The older name of the threads knob still works; the SLIPWAY_ one wins.
    assert Settings.from_env({"MODEL_DIR": "/m", "THREADS": "4"}).threads == 4
    assert Settings.from_env({"MODEL_DIR": "/m", "THREADS": "4", "SLIPWAY_THREADS": "1"}).threads == 1
    with pytest.raises(ConfigurationError) as err:
        Settings.from_env({"MODEL_DIR": "/m", "SLIPWAY_SLOTS": "0", "SLIPWAY_BATCH_DELAY_MS": "soon"})
    assert "SLIPWAY_SLOTS=0" in str(err.value) and "SLIPWAY_BATCH_DELAY_MS='soon'" in str(err.value)
    for backend in ("cpp", "tensorflow"):
        with pytest.raises(ConfigurationError, match=f"SLIPWAY_BATCH_MAX=4: BACKEND={backend} runs one image"):
            Settings.from_env({"MODEL_DIR": "/m", "BACKEND": backend, "SLIPWAY_BATCH_MAX": "4"})


# --------------------------------------------------------------------------------------------
# Dynamic batching


def test_batching_stacks_concurrent_requests_into_one_forward(model_dir):
    images = [sample_image(96, 64, seed=i) for i in range(4)]
    bodies = [encode(image, "PNG") for image in images]
    plain = create_app(Settings(model_dir=model_dir, slots=1, threads=1))
    _service(plain)
    expected = [r.json()["detections"] for r in asyncio.run(_post_all(plain, bodies))]

    backend = BatchRecorder(model_dir, load_manifest(model_dir), threads=1)
    app = create_app(Settings(model_dir=model_dir, slots=1, threads=1, batch_max=4, batch_delay_ms=300),
                     backend=backend)
    service = _service(app)
    assert service.limits.max_inflight == 4
    backend.record = True
    responses = asyncio.run(_post_all(app, bodies))
    assert [r.json()["detections"] for r in responses] == expected
    # Four requests, one forward pass (two when the machine is slow to hand them over).
    assert sum(backend.batches) == 4 and len(backend.batches) <= 2, backend.batches
    # A lone request waits the bounded delay at most, then runs alone.
    backend.batches.clear()
    started = time.perf_counter()
    (alone,) = asyncio.run(_post_all(app, bodies[:1]))
    assert alone.status_code == 200 and backend.batches == [1]
    assert time.perf_counter() - started < 2.0
    text = asyncio.run(_get(app, "/metrics"))
    sizes = _samples(text, "slipway_batch_size")
    assert sizes[("slipway_batch_size_sum", ())] >= 5


def test_the_batcher_answers_every_request_under_load(model_dir):
    """Many slot threads, two runners, a short delay: every request answered with its own row."""
    import threading

    from serving.batching import Batcher

    backend = TorchScriptBackend(model_dir, load_manifest(model_dir), threads=1)
    backend.batch_max = 4
    backend.start()
    batcher = Batcher(backend, max_batch=4, delay_s=0.002, runners=2)
    images = [sample_image(96, 64, seed=i) for i in range(4)]
    expected = [backend.predict(image) for image in images]
    wrong: list[int] = []

    def client(k: int) -> None:
        for i in range(60):
            batcher.expect()
            if batcher.predict(images[(k + i) % 4], {}) != expected[(k + i) % 4]:
                wrong.append(k)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a request was never answered"
    assert not wrong
    batcher.close()


def test_a_model_that_cannot_batch_fails_to_start_saying_why(model_dir, caplog):
    class FixedBatch(TorchScriptBackend):
        def forward(self, batch):
            if batch.shape[0] != 1:
                raise RuntimeError("shape mismatch: the model takes a batch of 1")
            return super().forward(batch)

    app = create_app(Settings(model_dir=model_dir, slots=1, threads=1, batch_max=4),
                     backend=FixedBatch(model_dir, load_manifest(model_dir), threads=1))
    backend = app.state.service.backend
    backend.start()
    assert backend.state == "error"
    assert "SLIPWAY_BATCH_MAX=4" in backend.error and "batch of 4" in backend.error
    assert "SLIPWAY_BATCH_MAX=4" in caplog.text


def test_onnx_slots_and_batches_with_a_dynamic_batch_dimension(tmp_path):
    pytest.importorskip("onnxruntime")
    folder = write_tiny_model(tmp_path / "m", name=MODEL, onnx=True)
    bodies = [encode(sample_image(96, 64, seed=i), "PNG") for i in range(3)]
    plain = create_app(Settings(model_dir=folder, backend="onnx", slots=1, threads=1))
    _service(plain)
    expected = [r.json()["detections"] for r in asyncio.run(_post_all(plain, bodies))]
    app = create_app(Settings(model_dir=folder, backend="onnx", slots=2, threads=1, batch_max=3, batch_delay_ms=200))
    _service(app)
    assert [r.json()["detections"] for r in asyncio.run(_post_all(app, bodies))] == expected
    # One session, two slots, no batching: the same answers.
    slots = create_app(Settings(model_dir=folder, backend="onnx", slots=2, threads=1))
    _service(slots)
    assert [r.json()["detections"] for r in asyncio.run(_post_all(slots, bodies * 2))] == expected * 2


# --------------------------------------------------------------------------------------------
# Where the time goes: Server-Timing and the stage histograms


async def _get(app, path: str) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return (await client.get(path)).text


def _samples(text: str, family: str) -> dict[tuple[str, tuple], float]:
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return {}


def test_server_timing_and_stage_histograms(model_dir):
    app = create_app(Settings(model_dir=model_dir, slots=2, threads=1))
    _service(app)
    (r,) = asyncio.run(_post_all(app, [encode(sample_image(), "PNG")]))
    assert r.status_code == 200
    header = r.headers["server-timing"]
    stages = [part.split(";")[0] for part in header.split(", ")]
    assert stages == list(STAGES), header
    durations = [float(part.split("dur=")[1]) for part in header.split(", ")]
    assert all(d >= 0 for d in durations) and durations[STAGES.index("infer")] > 0
    assert r.headers["content-type"] == "application/json"

    text = asyncio.run(_get(app, "/metrics"))
    stage = _samples(text, "slipway_stage_seconds")
    for name in STAGES:
        assert stage[("slipway_stage_seconds_count", (("stage", name),))] == 1, name
        assert stage[("slipway_stage_seconds_bucket", (("le", "+Inf"), ("stage", name)))] == 1
    # The names the service had before prometheus_client keep their meaning.
    requests = _samples(text, "slipway_requests")
    key = ("slipway_requests_total", (("method", "POST"), ("route", "/v1/models/{name}:predict"), ("status", "200")))
    assert requests[key] == 1
    ready = _samples(text, "slipway_model_ready")
    assert ready[("slipway_model_ready", (("backend", "torchscript"), ("model", MODEL)))] == 1
    assert _samples(text, "slipway_inference_slots")[("slipway_inference_slots", ())] == 2
    assert "_created" not in text


def test_server_timing_lists_stages_in_order():
    value = server_timing({"encode": 0.0002, "read": 0.001, "infer": 0.0123456})
    assert value == "read;dur=1.000, infer;dur=12.346, encode;dur=0.200"


# --------------------------------------------------------------------------------------------
# The entry point of every protocol


def test_service_infer_answers_an_infer_result(model_dir):
    app = create_app(Settings(model_dir=model_dir, slots=1, threads=1))
    service = _service(app)

    async def run():
        return await service.infer(encode(sample_image(96, 64), "PNG"))

    result = asyncio.run(run())
    assert isinstance(result, InferResult)
    assert (result.width, result.height) == (96, 64)
    assert result.labels == ["red"] and result.class_ids == [0]
    assert np.allclose(result.boxes, [[0, 0, 48, 32]], atol=1) and result.scores[0] > 0.5
    assert set(result.timings) == {"queue", "decode", "preprocess", "infer", "postprocess"}
    assert service.admission.inflight == 0


def test_service_infer_raises_api_errors(model_dir):
    from serving.app import ApiError

    app = create_app(Settings(model_dir=model_dir, slots=1, threads=1))
    service = _service(app)

    async def run(data: bytes, **kw):
        return await service.infer(data, **kw)

    with pytest.raises(ApiError) as err:
        asyncio.run(run(b"not an image"))
    assert (err.value.status, err.value.code) == (400, "not_an_image")
    with pytest.raises(ApiError) as err:
        asyncio.run(run(encode(sample_image(), "PNG"), deadline=time.monotonic() - 1))
    assert (err.value.status, err.value.code) == (503, "request_timeout")
    assert service.admission.inflight == 0 and service.bodies.used == 0


def test_jpeg_is_decoded_straight_to_the_model_input_scale(tmp_path):
    folder = write_tiny_model(tmp_path / "m", name=MODEL, height=64, width=64)
    app = create_app(Settings(model_dir=Path(folder), slots=1, threads=1))
    service = _service(app)
    from serving.images import probe_image

    big = encode(sample_image(1024, 768), "JPEG", quality=90)
    probe = probe_image(big, max_pixels=10**8, draft_to=service.draft_to)
    # 1/8 of 1024x768 still covers 64x64: decoded at 128x96, not at full size.
    assert probe.decoded_size == (128, 96)
    probe.close()


def test_onnx_with_a_fixed_batch_refuses_to_batch(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folder = write_tiny_model(tmp_path / "m", name=MODEL, onnx=True)
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # exported with a batch of 1
    onnx.save(model, str(folder / "model.onnx"))
    app = create_app(Settings(model_dir=folder, backend="onnx", slots=1, threads=1, batch_max=2))
    backend = app.state.service.backend
    backend.start()
    assert backend.state == "error"
    assert "SLIPWAY_BATCH_MAX=2" in backend.error and "fixed batch dimension of 1" in backend.error
