"""The backends other than TorchScript: ONNX Runtime, the C++ runtime, TF Serving over REST, TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from native_fixtures import ROOT, TEST_VERSION, last_json, run_python
from readiness import wait_until
from testclient import TestClient

from model_export.compare import compare_detections
from serving.app import create_app
from serving.backends import create_backend
from serving.config import Settings
from serving.manifest import load_manifest
from slipway.request_cases import encode, run_cases, sample_image, write_tiny_model
from slipway.tfserving_standin import SERVER, make_server

MODEL = "tiny-torch"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), name=MODEL, onnx=True)


def _images():
    rng = np.random.default_rng(7)
    images = [
        sample_image(w, h, seed=i) for i, (w, h) in enumerate([(64, 64), (150, 90), (33, 211), (640, 480)])
    ]
    images.append(rng.integers(0, 256, size=(120, 100, 3), dtype=np.uint8))
    blue = np.full((70, 50, 3), 120, dtype=np.uint8)
    blue[35:, 25:] = (0, 0, 250)
    images.append(blue)
    return images


def _started(name, model_dir, **options):
    backend = create_backend(name, model_dir, load_manifest(model_dir), **options)
    backend.start()
    return backend


def test_onnx_backend_matches_torchscript(model_dir):
    torchscript = _started("torchscript", model_dir)
    onnx = _started("onnx", model_dir)
    assert onnx.state == "ready", onnx.error
    assert onnx.describe()["runtime"].startswith("onnxruntime ")
    found = 0
    for image in _images():
        ref, got = torchscript.predict(image), onnx.predict(image)
        result = compare_detections(ref, got, iou=0.99, score=1e-4)
        assert result.ok, result.table()
        found += len(got)
    assert found >= 4, "the sample images hold coloured quadrants; the comparison must not be of empty lists"


def test_onnx_backend_reports_missing_file(tmp_path):
    folder = write_tiny_model(tmp_path / "m", name=MODEL)  # no model.onnx
    backend = _started("onnx", folder)
    assert backend.state == "error"
    assert "model.onnx" in backend.error


def _run_without_torch(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path or ""), str(ROOT)) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_cpp_backend_without_the_wheel_says_what_is_missing(model_dir):
    if importlib.util.find_spec("slipway_runtime") is not None:
        pytest.skip("slipway_runtime is installed here; the missing-wheel message cannot be observed")
    code = textwrap.dedent(f"""
        import sys
        from serving.backends import create_backend
        from serving.manifest import load_manifest
        b = create_backend("cpp", {str(model_dir)!r}, load_manifest({str(model_dir)!r}))
        b.start()
        assert "torch" not in sys.modules, "the cpp backend must not import torch"
        print(b.state, b.error)
    """)
    res = _run_without_torch(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("error ")
    assert "slipway-runtime" in res.stdout


def test_cpp_backend_serves_what_the_runtime_returns(model_dir, tmp_path):
    """With a stand-in ``slipway_runtime`` module: the wiring (path, arguments, conversion, labels)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "slipway_runtime.py").write_text(
        textwrap.dedent("""
        __version__ = "0.0.0-fake"
        class Detector:
            fusion_groups = 0
            fusion_error = ""
            def __init__(self, path, threads=1, onednn_fusion=True):
                import json, pathlib
                self.manifest = json.loads((pathlib.Path(path) / "model.json").read_text())
                self.threads = threads
            def predict(self, image):
                # The backend hands over the decoded PIL image (the real wheel reads its bytes).
                assert image.mode == "RGB", image
                w, h = image.size
                # The label is left out on purpose: the backend fills it in from model.json.
                return [{"box": [0, 0, w / 2, h / 2], "score": 0.875 + self.threads / 1000, "class_id": 2}]
    """)
    )
    code = textwrap.dedent(f"""
        import json, sys, warnings
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
        from serving.app import create_app
        from serving.config import Settings
        from slipway.request_cases import encode, sample_image
        app = create_app(Settings(model_dir={str(model_dir)!r}, backend="cpp", slots=1, threads=2))
        with TestClient(app) as c:
            app.state.service.backend.wait_started(30)
            r = c.post("/v1/models/{MODEL}:predict", content=encode(sample_image(90, 60)),
                       headers={{"content-type": "image/png"}})
            info = c.get("/v1/models/{MODEL}").json()
            print(json.dumps({{"status": r.status_code, "body": r.json(), "info": info,
                               "torch": "torch" in sys.modules}}))
    """)
    res = _run_without_torch(code, fake)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["status"] == 200, out
    # threads=2 (SLIPWAY_THREADS) reached the runtime: score 0.875 + 2/1000.
    assert out["body"]["detections"] == [
        {"box": [0.0, 0.0, 45.0, 30.0], "score": 0.877, "class_id": 2, "label": "blue"}
    ]
    assert out["info"]["runtime"] == "slipway_runtime 0.0.0-fake"
    assert out["torch"] is False


@pytest.mark.slow
def test_cpp_backend_matches_torchscript_with_the_real_wheel(model_dir, sc_python):
    """The real self-contained wheel (built by the ``native_wheels`` fixture, which fails rather than
    skips when it cannot build), in ``sc_python``: a venv without torch, as in the pytorch-cpp-cpu image."""
    images = _images()
    reference = _started("torchscript", model_dir)
    ref = [reference.predict(im) for im in images]
    archive = model_dir.parent / "images.npz"
    np.savez(archive, *images)  # no pickles: the venv's numpy may differ from this one
    code = f"""
        import importlib.util, json, sys
        import numpy as np
        from serving.backends import create_backend
        from serving.manifest import load_manifest
        assert importlib.util.find_spec("torch") is None, "the venv of the self-contained wheel holds torch"
        b = create_backend("cpp", {str(model_dir)!r}, load_manifest({str(model_dir)!r}))
        b.start()
        assert b.state == "ready", b.error
        import slipway_runtime
        assert slipway_runtime.KIND == "self-contained", slipway_runtime.KIND
        assert "torch" not in sys.modules, "the cpp backend must not import torch"
        with np.load({str(archive)!r}) as archive:
            images = [archive[f"arr_{{i}}"] for i in range({len(images)})]
        from PIL import Image  # the service hands this backend the decoded PIL image
        print(json.dumps({{"runtime": b.describe()["runtime"], "fused": b.describe()["onednn_fusion"],
                           "partitions": b.describe()["fused_partitions"],
                           "detections": [b.predict(Image.fromarray(im)) for im in images]}}))
    """
    out = last_json(run_python(sc_python, code, pythonpath=ROOT, cwd=ROOT, timeout=300))
    assert out["runtime"] == f"slipway_runtime {TEST_VERSION}"
    # Fusion is on and was proven at load (this small test model may offer nothing to fuse).
    assert out["fused"] is True and out["partitions"] >= 0
    got = out["detections"]
    found = 0
    for r, g in zip(ref, got, strict=True):
        result = compare_detections(r, g, iou=0.99, score=1e-4)
        assert result.ok, result.table()
        found += len(g)
    assert found >= 4, "the sample images hold coloured quadrants; the comparison must not be of empty lists"


# --- TF Serving over REST -----------------------------------------------------------------------
def quadrant_savedmodel_outputs(batch: np.ndarray) -> dict[str, np.ndarray]:
    """What a SavedModel with the contract's serving signature returns, computed with numpy:
    per quadrant whose dominant channel clearly dominates, one box in original-image pixels."""
    n, h, w, _ = batch.shape
    m = 4
    boxes = np.zeros((n, m, 4), np.float32)
    scores = np.zeros((n, m), np.float32)
    classes = np.zeros((n, m), np.float32)
    num = np.zeros((n,), np.int32)
    quads = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
    for i in range(n):
        found = []
        for x1, y1, x2, y2 in quads:
            mean = batch[i, y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
            c = int(mean.argmax())
            if mean[c] - np.delete(mean, c).mean() > 100:
                found.append(((x1, y1, x2, y2), mean[c] / 255.0, c))
        found.sort(key=lambda f: -f[1])
        for j, (box, score, c) in enumerate(found):
            boxes[i, j], scores[i, j], classes[i, j] = box, score, c
        num[i] = len(found)
    return {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": num}


class Stub:
    """The TF Serving stand-in on a fixed port, stoppable and restartable (to play 'server down')."""

    def __init__(self, name: str):
        self.name = name
        self.server = make_server(name, quadrant_savedmodel_outputs, port=0)
        self.port = self.server.server_address[1]
        self.thread = None
        self.start()

    def start(self):
        if self.server is None:
            self.server = make_server(self.name, quadrant_savedmodel_outputs, port=self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def tf_model_dir(tmp_path):
    folder = tmp_path / "tfmodel"
    folder.mkdir()
    manifest = {
        "name": "tiny-tf",
        "version": "0.0.1",
        "framework": "tensorflow",
        "input": {
            "height": 64,
            "width": 64,
            "channels": 3,
            "dtype": "uint8",
            "resize": "stretch",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "labels": ["red", "green", "blue"],
        "output": {"format": "detections", "score_threshold": 0.3, "nms_iou": 0.5, "max_detections": 50},
        "files": {"saved_model": {"path": "saved_model"}},
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_tfserving_backend_through_the_stub(tf_model_dir):
    stub = Stub("tiny-tf")
    try:
        status = __import__("httpx").get(f"{stub.url}/v1/models/tiny-tf").json()
        assert status["server"] == SERVER and "not TensorFlow Serving" in SERVER
        app = create_app(Settings(model_dir=tf_model_dir, backend="tfserving", tfserving_url=stub.url))
        with TestClient(app) as client:
            assert app.state.service.backend.wait_started(30)
            assert client.get("/readyz").status_code == 200
            image = np.full((90, 140, 3), 128, np.uint8)
            image[45:, :70] = (10, 240, 10)
            r = client.post(
                "/v1/models/tiny-tf:predict", content=encode(image), headers={"content-type": "image/png"}
            )
            assert r.status_code == 200, r.text
            expected = quadrant_savedmodel_outputs(image[None])
            assert r.json()["detections"] == [
                {
                    "box": [float(v) for v in expected["boxes"][0, 0]],
                    "score": float(expected["scores"][0, 0]),
                    "class_id": 1,
                    "label": "green",
                }
            ]
            info = client.get("/v1/models/tiny-tf").json()
            assert info["tfserving_url"] == stub.url and info["backend"] == "tfserving"
            failed = [res for res in run_cases(client, "tiny-tf") if not res.ok]
            assert not failed, failed
    finally:
        stub.stop()


def test_tfserving_down_is_503_then_recovers(tf_model_dir, caplog):
    stub = Stub("tiny-tf")
    stub.stop()  # the port is known, nothing listens on it
    app = create_app(
        Settings(model_dir=tf_model_dir, backend="tfserving", tfserving_url=stub.url, tfserving_timeout_s=2)
    )
    app.state.service.backend.retry_interval_s = 0.0
    png = encode(sample_image())
    headers = {"content-type": "image/png"}
    with TestClient(app) as client:
        assert app.state.service.backend.wait_started(30)
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        # What is wrong is in the log; the answer names no URL.
        assert "unreachable" in caplog.text and "unreachable" not in ready.text
        assert stub.url not in ready.text and ready.json()["reason"].startswith("a service the model depends on")
        r = client.post("/v1/models/tiny-tf:predict", content=png, headers=headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"

        stub.start()
        try:
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=10, what="/readyz")
            assert client.get("/readyz").json()["ready_after_s"] > 0
            assert client.post("/v1/models/tiny-tf:predict", content=png, headers=headers).status_code == 200
        finally:
            stub.stop()

        # Down again after it was ready: both predict and /readyz say so.
        r = client.post("/v1/models/tiny-tf:predict", content=png, headers=headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert client.get("/readyz").status_code == 503


def test_tfserving_wrong_model_name_on_server(tf_model_dir, caplog):
    stub = Stub("some-other-model")
    try:
        app = create_app(Settings(model_dir=tf_model_dir, backend="tfserving", tfserving_url=stub.url))
        with TestClient(app) as client:
            assert app.state.service.backend.wait_started(30)
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert "404" in caplog.text and "tiny-tf" in caplog.text and "404" not in ready.text
    finally:
        stub.stop()


def test_instances_json_is_the_image_as_nested_lists():
    from PIL import Image

    from serving.backends.tfserving import instances_json

    image = np.random.default_rng(1).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    assert json.loads(instances_json(Image.fromarray(image))) == {"instances": [image.tolist()]}


def test_tfserving_service_runs_without_numpy(tf_model_dir):
    """The tfserving-client image has no numpy: the whole request path must work without it."""
    stub = Stub("tiny-tf")
    try:
        code = textwrap.dedent(f"""
            import io, json, sys, warnings
            sys.modules["numpy"] = None  # any import of numpy now fails
            warnings.simplefilter("ignore")
            from PIL import Image
            from fastapi.testclient import TestClient
            from serving.app import create_app
            from serving.config import Settings
            image = Image.new("RGB", (40, 30), (128, 128, 128))
            image.paste((250, 0, 0), (0, 0, 20, 15))
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            app = create_app(Settings(model_dir={str(tf_model_dir)!r}, backend="tfserving",
                                      tfserving_url={stub.url!r}))
            with TestClient(app) as c:
                app.state.service.backend.wait_started(30)
                r = c.post("/v1/models/tiny-tf:predict", content=buf.getvalue(), headers={{"content-type": "image/png"}})
                print(json.dumps({{"status": r.status_code, "body": r.json()}}))
        """)
        res = _run_without_torch(code)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["status"] == 200, out
        assert [d["label"] for d in out["body"]["detections"]] == ["red"]
        assert out["body"]["detections"][0]["box"] == [0.0, 0.0, 20.0, 15.0]
    finally:
        stub.stop()


def test_stub_answers_like_tf_serving_for_bad_requests():
    import httpx

    stub = Stub("tiny-tf")
    try:
        assert httpx.get(f"{stub.url}/v1/models/nope").status_code == 404
        bad = httpx.post(f"{stub.url}/v1/models/tiny-tf:predict", content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
        ragged = {"instances": [np.zeros((2, 2, 3), int).tolist(), np.zeros((3, 2, 3), int).tolist()]}
        assert httpx.post(f"{stub.url}/v1/models/tiny-tf:predict", json=ragged).status_code == 400
        columnar = httpx.post(
            f"{stub.url}/v1/models/tiny-tf/versions/1:predict",
            json={"inputs": [np.zeros((4, 4, 3), int).tolist()]},
        )
        assert columnar.status_code == 200 and set(columnar.json()["outputs"]) == {
            "boxes",
            "scores",
            "classes",
            "num_detections",
        }
    finally:
        stub.stop()


# --- TensorFlow in the service --------------------------------------------------------------------
def test_tensorflow_backend_without_tensorflow_is_an_error_state(tf_model_dir):
    """In a subprocess where ``import tensorflow`` fails (a finder ahead of all others refuses it), so
    the check runs whether or not TensorFlow is installed here."""
    code = textwrap.dedent(f"""
        import json, sys

        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, NoTensorFlow())
        assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
        from serving.backends import create_backend
        from serving.manifest import load_manifest
        b = create_backend("tensorflow", {str(tf_model_dir)!r}, load_manifest({str(tf_model_dir)!r}))
        b.start()
        print(json.dumps({{"state": b.state, "error": b.error, "ready": b.readiness(),
                           "tf_loaded": "tensorflow" in sys.modules}}))
    """)
    res = _run_without_torch(code)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["state"] == "error", out
    assert out["error"] == "ModuleNotFoundError: No module named 'tensorflow'", out
    assert out["ready"] == [False, out["error"]], out
    assert out["tf_loaded"] is False
