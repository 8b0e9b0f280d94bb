"""The pytorch-cpu and onnx-cpu images of this checkout's service, built once per session.

conftest.py imports the fixture from here; test_serving_hostile.py (load) and test_serving_oip.py
(the Open Inference Protocol with tritonclient) both use it, so the images are built once. They
come from the release stages on the shapes example (export, then images; the layers below the
service code come from the engine's cache) and are removed at the end of the session.
"""

from __future__ import annotations

import json
import uuid

import pytest
from image_cleanup import owns
from release_configs import small_release

from slipway.cli import main

MODEL = "shapes-torch"

ONNX_VARIANT = """
[[variants]]
name = "onnx-cpu"
model = "shapes-torch"
runtime = "onnx"
dockerfile = "dockerfiles/pytorch.Dockerfile"
target = "onnx-cpu"
"""


@pytest.fixture(scope="session")
def service_images(local_services, tmp_path_factory):
    """{variant: tag} of the pytorch-cpu and onnx-cpu images; removed afterwards."""
    from slipway import engine

    tmp = tmp_path_factory.mktemp("service-images")
    project = owns(f"service-{uuid.uuid4().hex[:8]}")
    config = small_release(tmp / "release.toml", project, "127.0.0.1:5000/slipway-service", extra=ONNX_VARIANT)
    config.write_text(config.read_text().replace('exporters = ["torchscript"]', 'exporters = ["torchscript", "onnx"]'))
    out = tmp / "dist"
    args = ["release", "--config", str(config), "--local", "--out", str(out),
            "--skip", "wheels", "--skip", "smoke", "--skip", "bench", "--skip", "publish"]
    assert main(args) == 0
    built = {variant: record["tag"] for variant, record in json.loads((out / "images.json").read_text()).items()}
    assert set(built) == {"pytorch-cpu", "onnx-cpu"}
    yield built
    for tag in built.values():
        engine.remove_image(tag)
