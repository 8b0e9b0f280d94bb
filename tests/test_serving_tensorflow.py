"""TensorFlow in the service, and the TF Serving stand-in running a real SavedModel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from readiness import wait_http

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]
tf = pytest.importorskip("tensorflow", reason="TensorFlow is the optional tensorflow extra (pip install .[tensorflow]); make test installs it")

from serving.backends import create_backend  # noqa: E402
from serving.backends._tf import detections_from_outputs  # noqa: E402
from serving.manifest import load_manifest  # noqa: E402
from slipway.request_cases import run_cases_against, sample_image  # noqa: E402
from slipway.tfserving_standin import make_server, saved_model_runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["red", "green", "blue"]


class QuadrantDetector(tf.Module):
    """The contract's serving signature on a toy problem: a quadrant whose dominant channel
    exceeds the mean of the other two by more than 100 is one detection, in original pixels."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        x = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        h, w = shape[1], shape[2]
        h2, w2 = h // 2, w // 2
        quads = tf.stack(
            [
                tf.reduce_mean(x[:, :h2, :w2], axis=[1, 2]),
                tf.reduce_mean(x[:, :h2, w2:], axis=[1, 2]),
                tf.reduce_mean(x[:, h2:, :w2], axis=[1, 2]),
                tf.reduce_mean(x[:, h2:, w2:], axis=[1, 2]),
            ],
            axis=1,
        )  # [N, 4, 3]
        top = tf.reduce_max(quads, axis=2)
        classes = tf.argmax(quads, axis=2)
        rest = (tf.reduce_sum(quads, axis=2) - top) / 2.0
        keep = (top - rest) > 100.0
        scores = tf.where(keep, top / 255.0, tf.zeros_like(top))
        hf, wf, h2f, w2f = (tf.cast(v, tf.float32) for v in (h, w, h2, w2))
        z = tf.constant(0.0)
        boxes = tf.stack(
            [
                tf.stack([z, z, w2f, h2f]),
                tf.stack([w2f, z, wf, h2f]),
                tf.stack([z, h2f, w2f, hf]),
                tf.stack([w2f, h2f, wf, hf]),
            ]
        )
        boxes = tf.tile(boxes[None], [tf.shape(images)[0], 1, 1])
        order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
        return {
            "boxes": tf.gather(boxes, order, batch_dims=1),
            "scores": tf.gather(scores, order, batch_dims=1),
            "classes": tf.cast(tf.gather(classes, order, batch_dims=1), tf.float32),
            "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
        }


def numpy_reference(image: np.ndarray) -> list[dict]:
    h, w = image.shape[:2]
    x = image.astype(np.float32)
    found = []
    for x1, y1, x2, y2 in [
        (0, 0, w // 2, h // 2),
        (w // 2, 0, w, h // 2),
        (0, h // 2, w // 2, h),
        (w // 2, h // 2, w, h),
    ]:
        mean = x[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
        c = int(mean.argmax())
        if mean[c] - np.delete(mean, c).mean() > 100:
            found.append(
                {
                    "box": [float(x1), float(y1), float(x2), float(y2)],
                    "score": float(mean[c] / 255.0),
                    "class_id": c,
                    "label": LABELS[c],
                }
            )
    return sorted(found, key=lambda d: -d["score"])


@pytest.fixture(scope="module")
def tf_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-tf")
    module = QuadrantDetector()
    tf.saved_model.save(module, str(folder / "saved_model"), signatures={"serving_default": module.serve})
    manifest = {
        "name": "tiny-tf",
        "version": "0.0.1",
        "framework": "tensorflow",
        "framework_version": tf.__version__,
        "input": {
            "height": 64,
            "width": 64,
            "channels": 3,
            "dtype": "uint8",
            "resize": "stretch",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "labels": LABELS,
        "output": {"format": "detections", "score_threshold": 0.3, "nms_iou": 0.5, "max_detections": 50},
        "files": {"saved_model": {"path": "saved_model"}},
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def images():
    out = []
    for i, (w, h) in enumerate([(64, 64), (150, 90), (33, 211)]):
        out.append(sample_image(w, h, seed=i))
    two = np.full((80, 120, 3), 128, np.uint8)
    two[:40, 60:] = (0, 250, 0)
    two[40:, 60:] = (0, 0, 200)
    out.append(two)
    out.append(np.full((10, 10, 3), 128, np.uint8))
    return out


def approx_equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["class_id"] == y["class_id"]
        and x["label"] == y["label"]
        and np.allclose(x["box"], y["box"], atol=1e-4)
        and abs(x["score"] - y["score"]) < 1e-5
        for x, y in zip(a, b, strict=True)
    )


def test_tensorflow_backend_runs_the_savedmodel(tf_export):
    backend = create_backend("tensorflow", tf_export, load_manifest(tf_export))
    backend.start()
    assert backend.state == "ready", backend.error
    assert backend.describe()["runtime"] == f"tensorflow {tf.__version__}"
    total = 0
    for image in images():
        got = backend.predict(image)
        assert approx_equal(got, numpy_reference(image)), (got, numpy_reference(image))
        total += len(got)
    assert total >= 4


def test_stub_with_the_savedmodel_matches_the_in_process_backend(tf_export):
    runner, metadata = saved_model_runner(tf_export / "saved_model")
    assert set(metadata["outputs"]) == {"boxes", "scores", "classes", "num_detections"}
    server = make_server("tiny-tf", runner, port=0)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = create_backend(
            "tfserving",
            tf_export,
            load_manifest(tf_export),
            tfserving_url=f"http://127.0.0.1:{server.server_address[1]}",
        )
        remote.start()
        assert remote.state == "ready", remote.error
        for image in images():
            outputs = {k: v for k, v in runner(image[None]).items()}
            got = remote.predict(Image.fromarray(image))
            assert approx_equal(got, detections_from_outputs(outputs, LABELS))
            assert approx_equal(got, numpy_reference(image))
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_service_processes_with_tfserving_backend_against_the_stub_process(tf_export, tmp_path):
    """``python -m slipway.tfserving_standin`` and ``python -m serving`` as separate processes, as in an image."""
    stub_port, service_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stub_log, service_log = tmp_path / "stub.log", tmp_path / "service.log"
    with open(stub_log, "wb") as stub_out, open(service_log, "wb") as service_out:
        stub = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway.tfserving_standin",
                "--model-dir",
                str(tf_export),
                "--port",
                str(stub_port),
            ],
            env=env,
            stdout=stub_out,
            stderr=subprocess.STDOUT,
        )
        service = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            env={
                **env,
                "MODEL_DIR": str(tf_export),
                "BACKEND": "tfserving",
                "HOST": "127.0.0.1",
                "PORT": str(service_port),
                "TFSERVING_URL": f"http://127.0.0.1:{stub_port}",
            },
            stdout=service_out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{stub_port}/v1/models/tiny-tf", timeout=120, proc=stub)
            wait_http(f"http://127.0.0.1:{service_port}/readyz", timeout=60, proc=service)
            results = run_cases_against(f"http://127.0.0.1:{service_port}", "tiny-tf")
            assert all(r.ok for r in results), [r for r in results if not r.ok]
        except AssertionError:
            print(
                "stub log:\n" + stub_log.read_text()[-3000:],
                "\nservice log:\n" + service_log.read_text()[-3000:],
            )
            raise
        finally:
            for proc in (service, stub):
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    # The tfserving backend, as the tfserving-client image runs it, loads neither framework.
    modules = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, serving.app, serving.backends.tfserving; print(sorted(sys.modules))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'torch'" not in modules and "'tensorflow'" not in modules
