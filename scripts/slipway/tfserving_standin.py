"""A stand-in for TensorFlow Serving's REST API. It is NOT TensorFlow Serving.

Part of Slipway (the smoke stage runs it for the tfserving-client variant locally), not of the
service: nothing here is copied into an image.

    python -m slipway.tfserving_standin --model-dir dist/<version>/models/<model> --port 8501

No TF Serving model server can be installed here (none on PyPI or Debian) and the real
``tensorflow/serving`` image cannot be pulled, so tests and local smoke runs of the
``tfserving`` backend talk to this instead: it loads the SavedModel with TensorFlow in Python and
answers the subset of the REST API the backend uses:

    GET  /v1/models/<name>                              model status (version 1 AVAILABLE)
    GET  /v1/models/<name>/metadata                     the serving signature's inputs and outputs
    POST /v1/models/<name>[/versions/<v>]:predict       {"instances": [...]} -> {"predictions": [...]}
                                                        {"inputs": ...}      -> {"outputs": ...}

Every status answer carries ``"server": "slipway tfserving_stub (not TensorFlow Serving)"`` so a
result can always say which server it ran against. On GitHub the smoke test runs the real server.

``--model-dir`` is a model export folder (``model.json`` + ``saved_model/``) or a SavedModel
folder itself (then ``--model-name`` is required).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("slipway.tfserving_standin")

SERVER = "slipway tfserving_stub (not TensorFlow Serving)"
# Outputs of a batch of instances, keyed by output name, each with the batch as first dimension.
Runner = Callable[[np.ndarray], dict[str, np.ndarray]]

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:predict)?$"
)


def saved_model_runner(path: Path, threads: int = 2) -> tuple[Runner, dict[str, Any]]:
    """Load a SavedModel's serving_default; return (runner, metadata)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("TensorFlow was already initialised in this process; thread settings unchanged")
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise SystemExit(f"{path}: the stub serves one-input signatures; this one takes {sorted(inputs)}")
    ((input_name, spec),) = inputs.items()
    lock = threading.Lock()

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with lock:  # one inference at a time, like the service itself
            outputs = signature(**{input_name: tf.constant(batch, dtype=spec.dtype)})
        return {k: v.numpy() for k, v in outputs.items()}

    metadata = {
        "signature_name": "serving_default",
        "inputs": {input_name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}},
        "outputs": {
            k: {"dtype": v.dtype.name, "shape": v.shape.as_list()}
            for k, v in signature.structured_outputs.items()
        },
        "tensorflow": tf.__version__,
    }
    return run, metadata


class _Handler(BaseHTTPRequestHandler):
    server_version = "slipway-tfserving-stub"
    model_name: str
    runner: Runner
    metadata: dict[str, Any]

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> re.Match | None:
        match = _PATH.match(self.path.split("?", 1)[0])
        if match is None:
            self._send(404, {"error": f"Malformed request: {self.command} {self.path}"})
            return None
        if match["name"] != self.model_name:
            self._send(404, {"error": f"Servable not found for request: Latest({match['name']})"})
            return None
        if match["version"] not in (None, "1"):
            self._send(
                404,
                {"error": f"Servable not found for request: Specific({match['name']}, {match['version']})"},
            )
            return None
        return match

    def do_GET(self) -> None:
        match = self._route()
        if match is None:
            return
        if match["rest"] == ":predict":
            self._send(405, {"error": "predict takes POST"})
        elif match["rest"] == "/metadata":
            self._send(
                200,
                {
                    "model_spec": {"name": self.model_name, "version": "1"},
                    "server": SERVER,
                    "metadata": {"signature_def": self.metadata},
                },
            )
        else:
            self._send(
                200,
                {
                    "model_version_status": [
                        {
                            "version": "1",
                            "state": "AVAILABLE",
                            "status": {"error_code": "OK", "error_message": ""},
                        }
                    ],
                    "server": SERVER,
                },
            )

    def do_POST(self) -> None:
        match = self._route()
        if match is None:
            return
        if match["rest"] != ":predict":
            self._send(405, {"error": f"POST is for :predict, not {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length))
        except (ValueError, OSError) as exc:
            self._send(400, {"error": f"JSON Parse error: {exc}"})
            return
        try:
            columnar = "inputs" in request
            values = request["inputs"] if columnar else request["instances"]
            if isinstance(values, dict):
                if len(values) != 1:
                    raise ValueError("the stub serves one-input signatures")
                values = next(iter(values.values()))
            if not columnar and values and isinstance(values[0], dict):
                if any(len(v) != 1 for v in values):
                    raise ValueError("the stub serves one-input signatures")
                values = [next(iter(v.values())) for v in values]
            # Instances of different shapes cannot form one batch; TF Serving refuses them too.
            batch = np.asarray(values)
            if batch.dtype == object:
                raise ValueError("instances must all have the same shape")
        except (KeyError, TypeError, ValueError) as exc:
            self._send(400, {"error": f"Invalid request: {exc}"})
            return
        try:
            outputs = self.runner(batch)
        except Exception as exc:  # an inference error is reported like TF Serving's, as JSON
            log.exception("inference failed")
            self._send(400, {"error": f"{type(exc).__name__}: {exc}"})
            return
        if columnar:
            self._send(200, {"outputs": {k: v.tolist() for k, v in outputs.items()}})
        else:
            n = len(batch)
            self._send(
                200, {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]}
            )


def make_server(
    model_name: str,
    runner: Runner,
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    metadata: dict[str, Any] | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server speaking TF Serving's REST predict API for one model; port 0 picks a free port."""
    handler = type(
        "Handler",
        (_Handler,),
        {
            "model_name": model_name,
            "runner": staticmethod(runner),
            "metadata": metadata or {},
        },
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def _resolve(model_dir: Path, model_name: str | None) -> tuple[Path, str]:
    manifest_path = model_dir / "model.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        entry = (manifest.get("files") or {}).get("saved_model") or {}
        return model_dir / entry.get("path", "saved_model"), model_name or manifest["name"]
    if (model_dir / "saved_model.pb").is_file():
        if not model_name:
            raise SystemExit(f"{model_dir} is a SavedModel without model.json: pass --model-name")
        return model_dir, model_name
    raise SystemExit(
        f"{model_dir}: neither a model export folder (model.json) nor a SavedModel (saved_model.pb)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slipway.tfserving_standin",
        description="A stand-in for TensorFlow Serving's REST predict API (NOT TensorFlow Serving): "
        "runs a SavedModel with TensorFlow in Python.",
    )
    parser.add_argument(
        "--model-dir", type=Path, required=True, help="model export folder or SavedModel folder"
    )
    parser.add_argument("--model-name", help="name to serve under (default: model.json's name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path, name = _resolve(args.model_dir, args.model_name)
    runner, metadata = saved_model_runner(path, args.threads)
    server = make_server(name, runner, host=args.host, port=args.port, metadata=metadata)
    log.info(
        "%s: serving %r from %s on http://%s:%d", SERVER, name, path, args.host, server.server_address[1]
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
