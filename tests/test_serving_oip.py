"""The Open Inference Protocol (KServe v2) endpoints, against the real tiny TorchScript model.

In process (FastAPI's TestClient) for every endpoint and error; then over HTTP with a client we
did not write, ``tritonclient.http`` from PyPI, against ``python -m serving`` on loopback. The same
client against a built image is in tests/test_serving_hostile.py (it reuses that file's images).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from readiness import wait_http
from testclient import TestClient

from serving.app import create_app
from serving.backends.torchscript import TorchScriptBackend
from serving.config import Settings
from serving.manifest import load_manifest
from slipway.request_cases import encode, sample_image, write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny-torch"
VERSION = "0.0.1"  # write_tiny_model's
INFER = f"/v2/models/{MODEL}/infer"
OUTPUTS = ["boxes", "scores", "classes", "labels"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), name=MODEL)


@pytest.fixture(scope="module")
def client(model_dir):
    app = create_app(Settings(model_dir=model_dir))
    with TestClient(app) as c:
        assert app.state.service.backend.wait_started(60), "backend did not finish starting"
        yield c


def png(seed: int = 3) -> bytes:
    """120x80, a red top-left quadrant: one 'red' detection from the tiny model."""
    return encode(sample_image(120, 80, seed=seed), "PNG")


def json_request(image: bytes, **extra) -> dict:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}], **extra}


def binary_request(image: bytes, *, header_extra: dict | None = None) -> tuple[bytes, dict[str, str]]:
    """A body of the binary tensor data extension: JSON header, then the BYTES element."""
    element = struct.pack("<I", len(image)) + image
    header = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(element)}}], **(header_extra or {})}
    head = json.dumps(header).encode()
    return head + element, {"Inference-Header-Content-Length": str(len(head)),
                            "Content-Type": "application/octet-stream"}


def split_binary(response) -> tuple[dict, dict[str, bytes]]:
    """The JSON header of a binary response and each binary output's bytes."""
    size = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:size])
    offset, chunks = size, {}
    for out in header["outputs"]:
        n = out.get("parameters", {}).get("binary_data_size")
        if n is not None:
            chunks[out["name"]] = response.content[offset:offset + n]
            offset += n
    assert offset == len(response.content)
    return header, chunks


def rest_detections(client, image: bytes) -> list[dict]:
    r = client.post(f"/v1/models/{MODEL}:predict", content=image, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()["detections"]


def test_the_protocol_needs_no_numpy():
    """The pytorch-cpp-cpu image has neither numpy nor torch: the v2 router must import without them."""
    code = ("import sys; sys.modules['numpy'] = sys.modules['torch'] = None; "
            "import serving.app, serving.oip; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


# -- health and metadata ----------------------------------------------------------------------

def test_server_metadata_and_health(client):
    meta = client.get("/v2")
    assert meta.status_code == 200
    assert meta.json()["name"] == "slipway" and "binary_tensor_data" in meta.json()["extensions"]
    assert meta.json()["version"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v2/models/{MODEL}/versions/{VERSION}/ready").status_code == 200


def test_model_metadata_names_the_tensors(client):
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/{VERSION}"):
        meta = client.get(path)
        assert meta.status_code == 200, meta.text
        assert meta.json() == {
            "name": MODEL,
            "versions": [VERSION],
            "platform": "pytorch_torchscript",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
            "outputs": [
                {"name": "boxes", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "scores", "datatype": "FP32", "shape": [-1]},
                {"name": "classes", "datatype": "INT64", "shape": [-1]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1]},
            ],
        }


# -- infer ------------------------------------------------------------------------------------

def test_json_infer_matches_the_rest_api(client):
    image = png()
    [expected] = rest_detections(client, image)
    r = client.post(INFER, json=json_request(image, id="req-1"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["model_name"] == MODEL and body["model_version"] == VERSION and body["id"] == "req-1"
    outs = {o["name"]: o for o in body["outputs"]}
    assert [o["name"] for o in body["outputs"]] == OUTPUTS
    assert outs["boxes"] == {"name": "boxes", "datatype": "FP32", "shape": [1, 4], "data": expected["box"]}
    assert outs["scores"]["shape"] == [1] and outs["scores"]["data"] == [expected["score"]]
    assert outs["classes"] == {"name": "classes", "datatype": "INT64", "shape": [1], "data": [expected["class_id"]]}
    assert outs["labels"] == {"name": "labels", "datatype": "BYTES", "shape": [1], "data": [expected["label"]]}


def test_binary_infer_matches_the_rest_api(client):
    image = png(seed=5)
    [expected] = rest_detections(client, image)
    body, headers = binary_request(image, header_extra={"parameters": {"binary_data_output": True}})
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    header, chunks = split_binary(r)
    assert header["model_name"] == MODEL and [o["datatype"] for o in header["outputs"]] == [
        "FP32", "FP32", "INT64", "BYTES"]
    assert set(chunks) == set(OUTPUTS)
    boxes = np.frombuffer(chunks["boxes"], "<f4").reshape(1, 4)
    assert boxes[0].tolist() == pytest.approx(expected["box"], abs=1e-4)
    assert np.frombuffer(chunks["scores"], "<f4")[0] == pytest.approx(expected["score"], abs=1e-6)
    assert np.frombuffer(chunks["classes"], "<i8").tolist() == [expected["class_id"]]
    label = expected["label"].encode()
    assert chunks["labels"] == struct.pack("<I", len(label)) + label


def test_requested_outputs_in_their_order_each_json_or_binary(client):
    body, headers = binary_request(png())
    header = json.loads(body[:int(headers["Inference-Header-Content-Length"])])
    header["outputs"] = [{"name": "labels"}, {"name": "scores", "parameters": {"binary_data": True}}]
    head = json.dumps(header).encode()
    headers["Inference-Header-Content-Length"] = str(len(head))
    r = client.post(INFER, content=head + body[len(body) - len(png()) - 4:], headers=headers)
    assert r.status_code == 200, r.text
    doc, chunks = split_binary(r)
    assert [o["name"] for o in doc["outputs"]] == ["labels", "scores"]
    assert doc["outputs"][0]["data"] == ["red"]
    assert set(chunks) == {"scores"} and len(chunks["scores"]) == 4
    # Only JSON asked for: a plain JSON answer, with just what was asked.
    r = client.post(INFER, json=json_request(png(), outputs=[{"name": "classes"}]))
    assert r.headers["content-type"].startswith("application/json")
    assert [o["name"] for o in r.json()["outputs"]] == ["classes"]


def test_no_detections_are_empty_tensors(client):
    grey = encode(np.full((50, 70, 3), 128, dtype=np.uint8), "PNG")
    r = client.post(INFER, json=json_request(grey))
    shapes = {o["name"]: (o["shape"], o["data"]) for o in r.json()["outputs"]}
    assert shapes == {"boxes": ([0, 4], []), "scores": ([0], []), "classes": ([0], []), "labels": ([0], [])}
    body, headers = binary_request(grey, header_extra={"parameters": {"binary_data_output": True}})
    doc, chunks = split_binary(client.post(INFER, content=body, headers=headers))
    assert all(c == b"" for c in chunks.values()) and doc["outputs"][0]["shape"] == [0, 4]


def test_base64_wrapped_in_lines_is_accepted(client):
    image = png()
    text = base64.encodebytes(image).decode()  # 76-character lines, as the base64 tool writes them
    assert "\n" in text
    r = client.post(INFER, json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [text]}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][3]["data"] == ["red"]


def test_a_large_body_is_parsed_off_the_loop_and_its_budget_given_back(client):
    from serving.oip import OFF_LOOP_BYTES

    noisy = np.random.default_rng(1).integers(0, 256, size=(400, 400, 3), dtype=np.uint8)
    image = encode(noisy, "PNG")
    payload = json.dumps(json_request(image)).encode()
    assert len(payload) > OFF_LOOP_BYTES
    expected = rest_detections(client, image)
    for body, headers in ((payload, {"content-type": "application/json"}), binary_request(image)):
        r = client.post(INFER, content=body, headers=headers)
        assert r.status_code == 200, r.text
        assert len(r.json()["outputs"][0]["data"]) == 4 * len(expected)
    assert client.app.state.service.bodies.used == 0


def test_parsing_holds_body_budget_while_it_runs(model_dir):
    """Parsing JSON holds about twice the body more (its string, the decoded image): a body that
    fits the budget, but not with that, is refused with 503 while other bodies hold the rest."""
    payload = json.dumps(json_request(png())).encode()
    app = create_app(Settings(model_dir=model_dir, body_budget_bytes=4 * len(payload)))
    with TestClient(app) as client:
        service = app.state.service
        assert service.backend.wait_started(60)
        assert service.bodies.take(3 * len(payload) // 2)  # other requests' bodies
        r = client.post(INFER, content=payload, headers={"content-type": "application/json"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json() == {"error": "the service is receiving too many images; retry later"}
        service.bodies.give(3 * len(payload) // 2)
        assert service.bodies.used == 0
        r = client.post(INFER, content=payload, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert service.bodies.used == 0 and service.bodies.peak >= 3 * len(payload)


# -- errors -----------------------------------------------------------------------------------

def _with_input(**changes) -> dict:
    req = json_request(png())
    req["inputs"][0].update(changes)
    return req


BAD_JSON_REQUESTS = {
    "wrong datatype": (_with_input(datatype="UINT8"), 400, "datatype 'UINT8'; expected 'BYTES'"),
    "wrong shape": (_with_input(shape=[2]), 400, "shape '[2]'; expected [1]"),
    "shape and data disagree": (_with_input(data=["aGk=", "aGk="]), 400, "2 elements"),
    "unknown input": (_with_input(name="pixels"), 400, "unknown input 'pixels'"),
    "two inputs": ({"inputs": [_with_input()["inputs"][0]] * 2}, 400, "2 inputs given"),
    "no inputs": ({"inputs": []}, 400, "'inputs' must be a list"),
    "not base64": (_with_input(data=["not base64!"]), 400, "is not base64"),
    "data not text": (_with_input(data=[[1, 2, 3]]), 400, "3 elements"),
    "no data": ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}, 400, "no 'data'"),
    "unknown output": (json_request(png(), outputs=[{"name": "masks"}]), 400, "unknown output 'masks'"),
    "binary_data not a bool": (json_request(png(), outputs=[{"name": "boxes", "parameters": {"binary_data": 1}}]),
                               400, "'binary_data' must be true or false"),
    "id not a string": (json_request(png(), id=7), 400, "'id' must be a string"),
    "base64 of no image": (_with_input(data=[base64.b64encode(b"hello").decode()]), 400, "not an image"),
    "binary size without header": (_with_input(parameters={"binary_data_size": 4}), 400, "has both"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON_REQUESTS))
def test_bad_json_request_is_a_protocol_error(client, case):
    payload, status, words = BAD_JSON_REQUESTS[case]
    r = client.post(INFER, json=payload)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    assert words in r.json()["error"]
    assert client.app.state.service.bodies.used == 0


def test_body_that_is_not_json(client):
    r = client.post(INFER, content=png(), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "must be a JSON inference request" in r.json()["error"]


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda body, h: (body, {**h, "Inference-Header-Content-Length": "many"}), "invalid Inference-Header"),
        (lambda body, h: (body, {**h, "Inference-Header-Content-Length": str(len(body) + 1)}),
         "invalid Inference-Header"),
        (lambda body, h: (body, {**h, "Inference-Header-Content-Length": "-1"}), "invalid Inference-Header"),
        # The header cuts the JSON short.
        (lambda body, h: (body, {**h, "Inference-Header-Content-Length": "10"}), "JSON inference request"),
        # Fewer bytes follow than binary_data_size declares.
        (lambda body, h: (body[:-3], h), "bytes follow the JSON header"),
        # The BYTES element's own length is wrong.
        (lambda body, h: (_relength(body, h, +1), h), "the BYTES element says"),
        # No binary_data_size parameter, yet bytes after the header.
        (lambda body, h: (body.replace(b'"parameters": {"binary_data_size"', b'"parameterz": {"binary_data_size"'),
                          h), "no 'data' and no 'binary_data_size'"),
    ],
    ids=["not-a-number", "past-the-body", "negative", "cuts-the-json", "short-data", "element-length",
         "no-size"],
)
def test_bad_binary_request_is_a_protocol_error(client, mangle, words):
    body, headers = mangle(*binary_request(png()))
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


def _relength(body: bytes, headers: dict[str, str], delta: int) -> bytes:
    at = int(headers["Inference-Header-Content-Length"])
    (n,) = struct.unpack_from("<I", body, at)
    return body[:at] + struct.pack("<I", n + delta) + body[at + 4:]


def test_unknown_model_version_and_endpoint(client):
    for path in ("/v2/models/other/infer", f"/v2/models/{MODEL}/versions/9.9/infer"):
        r = client.post(path, json=json_request(png()))
        assert r.status_code == 404 and "error" in r.json(), r.text
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/other/ready").json() == {"error": "no model named 'other'; this service "
                                                                    f"serves '{MODEL}'"}
    r = client.get("/v2/repository/index")
    assert r.status_code == 404 and r.json() == {"error": "no endpoint at '/v2/repository/index'"}
    r = client.get(INFER)
    assert r.status_code == 405 and r.json() == {"error": "infer takes POST"}


def test_compressed_body_is_refused(client):
    r = client.post(INFER, content=b"\x1f\x8b", headers={"content-encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding 'gzip'" in r.json()["error"]


def test_the_body_and_image_limits_of_predict_apply(model_dir):
    image = png()
    app = create_app(Settings(model_dir=model_dir, max_body_bytes=len(image) - 1))
    with TestClient(app) as client:
        assert app.state.service.backend.wait_started(60)
        # The REST API refuses the image; so does v2, as binary data and as base64 in JSON.
        assert client.post(f"/v1/models/{MODEL}:predict", content=image,
                           headers={"content-type": "image/png"}).status_code == 413
        body, headers = binary_request(image)
        r = client.post(INFER, content=body, headers=headers)
        assert r.status_code == 413 and "the limit is" in r.json()["error"]
        r = client.post(INFER, json=json_request(image))
        assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
        # A body far past the limit is refused from its Content-Length, before it is read.
        r = client.post(INFER, content=b"{" + b" " * (4 * len(image) + 128 * 1024) + b"}")
        assert r.status_code == 413 and "the limit is" in r.json()["error"]
        # An image just under the limit is served.
        small = encode(sample_image(40, 30), "PNG")
        assert client.post(INFER, json=json_request(small)).status_code == 200
        assert app.state.service.bodies.used == 0


def test_a_full_service_answers_503_with_retry_after(model_dir):
    import asyncio

    app = create_app(Settings(model_dir=model_dir, max_inflight=1, max_queue=0))
    with TestClient(app) as client:
        service = app.state.service
        assert service.backend.wait_started(60)
        asyncio.run(service.admission.acquire(1))  # someone else holds the only slot
        r = client.post(INFER, json=json_request(png()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": "the service is at capacity; retry later"}
        service.admission.release(1)
        assert client.post(INFER, json=json_request(png())).status_code == 200
        assert service.admission.inflight == 0 and service.bodies.used == 0
        metrics = client.get("/metrics").text
        assert 'slipway_rejected_requests_total{code="overloaded"} 1' in metrics
        assert 'route="/v2/models/{name}/infer",status="503"' in metrics


class _GatedBackend(TorchScriptBackend):
    """Loads, then holds its warm-up until released: not ready in between."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.loaded = threading.Event()

    def warmup(self):
        self.loaded.set()
        assert self.gate.wait(30)
        super().warmup()


def test_not_ready_until_warmed_up(model_dir):
    backend = _GatedBackend(model_dir, load_manifest(model_dir))
    app = create_app(Settings(model_dir=model_dir), backend=backend)
    with TestClient(app) as client:
        assert backend.loaded.wait(30)
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": False}
        r = client.post(INFER, json=json_request(png()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"].startswith("the model is loading")
        backend.gate.set()
        assert backend.wait_started(30)
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post(INFER, json=json_request(png())).status_code == 200


# -- a client we did not write: tritonclient.http, over real HTTP -------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """``python -m serving`` on a free loopback port, ready; yields its host:port."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("log") / "service.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODEL_DIR": str(model_dir), "HOST": "127.0.0.1",
           "PORT": str(port), "THREADS": "1"}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "serving"], env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=proc, log=log_path)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def triton_detections(address: str, model: str, image: bytes, *, binary: bool) -> list[dict]:
    """Detections of ``image`` asked with tritonclient.http: the image as binary data or as base64
    in JSON, the outputs answered likewise; returned in the REST API's form."""
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(address, network_timeout=60.0) as client:
        tensor = httpclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image if binary else base64.b64encode(image)], dtype=object),
                                   binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
        result = client.infer(model, [tensor], outputs=outputs)
        boxes, scores = result.as_numpy("boxes"), result.as_numpy("scores")
        classes, labels = result.as_numpy("classes"), result.as_numpy("labels")
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and classes.dtype == np.int64
    return [
        {"box": b.tolist(), "score": float(s), "class_id": int(c),
         "label": lab.decode() if isinstance(lab, bytes) else str(lab)}
        for b, s, c, lab in zip(boxes, scores, classes, labels, strict=True)
    ]


def assert_same_detections(found: list[dict], expected: list[dict]) -> None:
    """Equal up to FP32: the REST API answers float64 JSON numbers, the v2 tensors are FP32."""
    assert len(found) == len(expected), (found, expected)
    for f, e in zip(found, expected, strict=True):
        assert (f["class_id"], f["label"]) == (e["class_id"], e["label"])
        assert f["score"] == pytest.approx(e["score"], rel=1e-6)
        assert f["box"] == pytest.approx(e["box"], rel=1e-6, abs=1e-4)


def test_tritonclient_health_and_metadata(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with httpclient.InferenceServerClient(server) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, model_version=VERSION)
        assert not client.is_model_ready("other")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata(MODEL)
        assert [t["name"] for t in meta["outputs"]] == OUTPUTS
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("other")
        assert info.value.status() == "404" and "no model named 'other'" in info.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_matches_the_rest_api(server, binary):
    for seed in (3, 7):
        image = png(seed)
        rest = httpx.post(f"http://{server}/v1/models/{MODEL}:predict", content=image,
                          headers={"content-type": "image/png"}, timeout=60).json()["detections"]
        assert rest, "the sample image has a red quadrant; expected a detection"
        assert_same_detections(triton_detections(server, MODEL, image, binary=binary), rest)


def test_tritonclient_sees_protocol_errors(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    with httpclient.InferenceServerClient(server) as client:
        wrong = httpclient.InferInput("image", [1, 4], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [wrong])
        assert info.value.status() == "400" and "expected 'BYTES'" in info.value.message()
        good = httpclient.InferInput("image", [1], "BYTES")
        good.set_data_from_numpy(np.array([png()], dtype=object))
        with pytest.raises(InferenceServerException) as info:
            client.infer("other", [good])
        assert info.value.status() == "404"


# -- the same client against a built image ----------------------------------------------------

@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["pytorch-cpu", "onnx-cpu"])
def test_tritonclient_against_a_built_image_matches_the_rest_api(service_images, variant):
    """The shapes example's image, run as a smoke test runs it: tritonclient.http asks for the
    golden images' detections as binary and as JSON tensors and gets what the REST API answers."""
    from service_images import MODEL as IMAGE_MODEL

    from model_export.examples.shapes import golden
    from slipway.smoketest import run_container

    pngs = [encode(image, "PNG") for image, _ in golden(3, seed=20201215)]
    with run_container(service_images[variant], memory="2g", cpus=2.0, timeout=120) as running:
        address = running.url.split("://", 1)[1]
        import tritonclient.http as httpclient

        with httpclient.InferenceServerClient(address) as client:
            assert client.is_server_ready() and client.is_model_ready(IMAGE_MODEL)
            platform = client.get_model_metadata(IMAGE_MODEL)["platform"]
            assert platform == ("onnxruntime_onnx" if variant == "onnx-cpu" else "pytorch_torchscript")
        found = 0
        for image in pngs:
            rest = httpx.post(f"{running.url}/v1/models/{IMAGE_MODEL}:predict", content=image,
                              headers={"content-type": "image/png"}, timeout=60)
            assert rest.status_code == 200, rest.text
            expected = rest.json()["detections"]
            found += len(expected)
            for binary in (True, False):
                assert_same_detections(triton_detections(address, IMAGE_MODEL, image, binary=binary), expected)
    assert found >= 3, "the golden images hold shapes; expected detections to compare"
