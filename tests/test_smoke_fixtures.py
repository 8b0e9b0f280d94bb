"""Helpers shared by the smoke and publish tests (no tests here).

Everything a test creates is named with a per-run id (``swt<hex>``), so a persistent registry and
index never collide with earlier runs, and nothing touches the example release's tags.

- ``make_project``: a throw-away project beside the repository's code (symlinks), with its own
  release.toml.
- ``build_replay_image``: a tiny image FROM the local base image that serves a model export's
  golden references over the service's API (a *replay* of the reference, for testing what happens
  around the smoke check, cheaply: pushing, refusing, resuming). It answers like a perfect model.
- ``make_replay_wheel``: a pure-Python wheel whose ``slipway_runtime.Detector`` replays the
  references the same way.
- ``TestRegistry`` / ``TestIndex``: a registry and a pypiserver of the test's own on free loopback
  ports, which a test may kill and restart without disturbing the shared ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from image_cleanup import owns
from PIL import Image
from readiness import process_gone, wait_until
from registry_cleanup import pushes_to

from slipway import records

ROOT = Path(__file__).resolve().parent.parent
LINKED = (
    "serving",
    "model_export",
    "dockerfiles",
    "requirements.txt",
    "requirements-pytorch.txt",
    "requirements-tensorflow.txt",
)


def run_id() -> str:
    """A name new to this session; the registry repositories under it and the local images named
    with it are removed after the session."""
    return owns(pushes_to(f"swt{uuid.uuid4().hex[:8]}"))


def slipway(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """The CLI, as a user runs it (a separate process)."""
    return subprocess.run(
        [sys.executable, "-m", "slipway.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def make_project(
    folder: Path,
    *,
    name: str,
    models: str,
    variants: list[dict[str, str]],
    registry: str,
    index: str = "http://127.0.0.1:8765/",
    version: str | None = "0.0.1",
    request_cases: bool = True,
) -> Path:
    """A project using the repository's code (symlinked) with its own release.toml; returns that file."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in LINKED:
        link = folder / item
        if not link.exists():
            link.symlink_to(ROOT / item)
    lines = ["[project]", f'name = "{name}"']
    if version:
        lines.append(f'version = "{version}"')
    lines += ["", models, ""]
    for v in variants:
        lines.append("[[variants]]")
        lines += [f'{k} = "{val}"' for k, val in v.items()]
        lines.append("")
    lines += [
        "[wheels]",
        "enabled = false",
        "",
        "[registries]",
        f'images = "{registry}"',
        f'packages = "{index}"',
        "",
        "[smoke]",
        "timeout-s = 90",
        'memory = "1g"',
        "cpus = 1",
        # Replay images answer golden images only; the service's request cases need the real service.
        f"request-cases = {'true' if request_cases else 'false'}",
        "",
    ]
    config = folder / "release.toml"
    config.write_text("\n".join(lines))
    # Plan refuses a weights file that does not exist; a replay model's weights are a placeholder.
    for name in re.findall(r'^weights = "([^"/]+)"$', models, re.M):
        if not (folder / name).exists():
            (folder / name).write_bytes(b"placeholder weights of a replay model\n")
    return config


TORCH_MODEL = """[[models]]
name = "shapes-torch"
framework = "pytorch"
entry-point = "model_export.examples.torch_detector:build_model"
weights = "model_export/examples/weights/shapes_torch.pt"
labels = ["circle", "square", "triangle"]
exporters = ["torchscript"]
golden = { hook = "model_export.examples.shapes:golden", count = 4, seed = 20201215 }
input = { height = 128, width = 128, channels = 3, mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }
"""

TF_MODEL = """[[models]]
name = "shapes-tf"
framework = "tensorflow"
entry-point = "model_export.examples.tf_detector:build_model"
weights = "model_export/examples/weights/shapes_tf.weights.h5"
labels = ["circle", "square", "triangle"]
exporters = ["saved_model"]
golden = { hook = "model_export.examples.shapes:golden", count = 4, seed = 20201215 }
input = { height = 128, width = 128, channels = 3, mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }
"""


# --------------------------------------------------------------------------------------------
# A model export with golden images, written directly (no framework needed)


def write_fake_export(folder: Path, *, name: str, images: int = 3, seed: int = 7,
                      config: Path | None = None, version: str = "0.0.1") -> Path:
    """model.json + golden/*.png + golden/reference.json, as ``slipway export`` lays them out.

    With ``config`` (a release.toml naming model ``name``), model.json records the inputs
    ``slipway export`` would record for that model and release ``version``, so that publish takes
    the export as current."""
    rng = np.random.default_rng(seed)
    golden = folder / "golden"
    golden.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(images):
        pixels = rng.integers(0, 256, size=(48 + 8 * i, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(golden / f"{i:03d}.png")
        dets = [
            {
                "box": [4.0 + i, 5.0, 30.0, 33.0 + i],
                "score": 0.91 - 0.01 * i,
                "class_id": i % 2,
                "label": ["circle", "square"][i % 2],
            }
        ]
        entries.append(
            {
                "file": f"{i:03d}.png",
                "width": 64,
                "height": 48 + 8 * i,
                "source": f"fake#{i}",
                "ground_truth": [{"box": d["box"], "class_id": d["class_id"], "label": d["label"]} for d in dets],
                "detections": dets,
            }
        )
    records.write(golden / "reference.json", records.GoldenReference.model_validate({"images": entries}))
    manifest = {
        "name": name,
        "version": "0.0.1",
        "framework": "pytorch",
        "labels": ["circle", "square"],
        "input": {"height": 32, "width": 32, "channels": 3, "dtype": "uint8", "resize": "stretch",
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "output": {"format": "candidates", "score_threshold": 0.3, "nms_iou": 0.5, "max_detections": 50},
        "files": {},
        "exporters": {},
        "golden": {"dir": "golden", "reference": "golden/reference.json", "count": images,
                   "source": {"kind": "hook", "hook": "fake", "count": images, "seed": seed}},
        "verification": {
            "ok": True,
            "runs": [
                {"format": "torchscript", "ok": True, "min_iou": 1.0, "max_score_diff": 0.0, "images": images}
            ],
        },
    }
    if config is not None:
        manifest["inputs"] = current_inputs(config, name, version)
    # Through the record's model: a fake export is still a valid one.
    records.write(folder / "model.json", records.ModelManifest.model_validate(manifest))
    return folder


def current_inputs(config: Path, model: str, version: str) -> dict[str, str]:
    """What ``slipway export`` records as the inputs of ``model`` of ``config`` now."""
    from plans import bare_plan

    from slipway.config import load_config
    from slipway.context import StageContext
    from slipway.stages.export import export_inputs

    cfg = load_config(config)
    ctx = StageContext(config=cfg, plan=bare_plan(version), out=config.parent, root=cfg.root)
    return export_inputs(ctx, cfg.model(model))


# --------------------------------------------------------------------------------------------
# Replay images and wheels

REPLAY_SERVER = r'''
"""Answers predict with the reference detections of the golden image it is sent (by sha256)."""
import hashlib, json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODEL = Path(os.environ.get("MODEL_DIR", "/model"))
NAME = json.loads((MODEL / "model.json").read_text())["name"]
REF = json.loads((MODEL / "golden" / "reference.json").read_text())["images"]
BY_HASH = {}
for e in REF:
    BY_HASH[hashlib.sha256((MODEL / "golden" / e["file"]).read_bytes()).hexdigest()] = e["detections"]

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/readyz":
            self.send(200, {"ready": True})
        elif self.path == f"/v1/models/{NAME}":
            backend = os.environ.get("BACKEND", "torchscript")
            self.send(200, {"name": NAME, "backend": backend, "device": "cpu"})
        else:
            self.send(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != f"/v1/models/{NAME}:predict":
            return self.send(404, {"error": "not found"})
        dets = BY_HASH.get(hashlib.sha256(body).hexdigest())
        if dets is None:
            return self.send(400, {"error": "not a golden image"})
        self.send(200, {"model": NAME, "detections": dets})

address = (os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080")))
ThreadingHTTPServer(address, Handler).serve_forever()
'''


def base_image() -> str:
    from slipway.baseimage import resolve_base_image

    return resolve_base_image("python:3.11-slim-bookworm")


def docker_build(context: Path, tag: str) -> str:
    """Build ``context`` (its Dockerfile) as ``tag``; return the image ID."""
    from slipway import engine

    return engine.build(context, tag, timeout=600)


def build_replay_image(folder: Path, *, tag: str, model_dir: Path, content: str) -> str:
    """A tiny service image that replays ``model_dir``'s references; ``content`` makes it unique."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copytree(model_dir, folder / "model")
    (folder / "replay.py").write_text(REPLAY_SERVER)
    (folder / "content.txt").write_text(content + "\n")
    (folder / "Dockerfile").write_text(
        f"FROM {base_image()}\n"
        "COPY replay.py content.txt /app/\n"
        "COPY model/ /model/\n"
        "USER 65534:65534\n"
        'CMD ["python3", "/app/replay.py"]\n'
        'LABEL org.opencontainers.image.created="2026-01-01T00:00:00Z"\n'
    )
    return docker_build(folder, tag)


def image_entry(
    variant: str, tag: str, *, model: str, runtime: str = "torchscript", device: str = "cpu"
) -> dict:
    """An images.json entry for a locally built image, as 'slipway images' writes it."""
    from slipway import records
    from slipway.stages.images import inspect_image

    info = inspect_image(tag)
    return records.dump(records.ImageRecord(
        variant=variant, model=model, runtime=runtime, device=device, image=tag.rsplit(":", 1)[0], tag=tag,
        id=info.id, size=info.size, layers=info.layers, labels=info.labels,
    ))


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    folder: Path,
    *,
    dist: str,
    version: str,
    files: dict[str, str | bytes],
    readme: str,
    requires: tuple[str, ...] = ("numpy",),
) -> Path:
    """A valid pure-Python wheel (METADATA, WHEEL, RECORD) that passes 'twine check --strict'."""
    folder.mkdir(parents=True, exist_ok=True)
    name = dist.replace("-", "_")
    info = f"{name}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\nSummary: slipway test wheel\n"
        "License: Apache-2.0\nRequires-Python: >=3.9\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
        + f"Description-Content-Type: text/markdown\n\n{readme}\n"
    )
    contents = {
        **files,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: slipway-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [_record_line(p, c.encode() if isinstance(c, str) else c) for p, c in contents.items()]
    record.append(f"{info}/RECORD,,")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, c in sorted(contents.items()):
            info_entry = zipfile.ZipInfo(p, date_time=(2026, 1, 1, 0, 0, 0))
            info_entry.external_attr = 0o644 << 16
            zf.writestr(info_entry, c)
        zf.writestr(
            zipfile.ZipInfo(f"{info}/RECORD", date_time=(2026, 1, 1, 0, 0, 0)), "\n".join(record) + "\n"
        )
    return path


def replay_runtime_source(model_dir: Path, *, version: str = "0.0.1", kind: str = "self-contained",
                          bytes_input: bool = True) -> str:
    """``slipway_runtime/__init__.py`` of a runtime double that replays ``model_dir``'s references.

    Images are recognised by the sha256 of their pixels, decoded here exactly as the smoke test does.
    With ``bytes_input`` false, raw RGB bytes (``predict(data, size=...)``) find no detections. A
    ``self-contained`` double refuses ``import torch`` with the real runtime's advice, as its guard does.
    """
    table = {}
    reference = json.loads((model_dir / "golden" / "reference.json").read_text())["images"]
    for entry in reference:
        with Image.open(model_dir / "golden" / entry["file"]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        table[hashlib.sha256(pixels.tobytes()).hexdigest()] = entry["detections"]
    return (
        '"""Test double of the C++ runtime: replays reference detections."""\n'
        "import hashlib\nimport sys\nfrom importlib.abc import MetaPathFinder\n\n"
        "__version__ = " + repr(version) + "\nKIND = " + repr(kind) + "\nTORCH_VERSION = '0'\n"
        "_TABLE = " + json.dumps(table) + "\n\n\n"
        "class _TorchBlocker(MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('refused: use slipway-runtime-torch beside torch')\n\n\n"
        "if KIND == 'self-contained':\n"
        "    sys.meta_path.insert(0, _TorchBlocker())\n\n\n"
        "class Detector:\n"
        "    def __init__(self, model_dir, threads=1):\n"
        "        self.model_dir = model_dir\n\n"
        "    def predict(self, image, size=None):\n"
        "        if isinstance(image, bytes) and not " + repr(bytes_input) + ":\n"
        "            return []\n"
        "        pixels = image if isinstance(image, bytes) else image.tobytes()\n"
        "        return _TABLE[hashlib.sha256(pixels).hexdigest()]\n"
    )


def make_replay_wheel(
    folder: Path, *, dist: str, model_dir: Path, version: str = "0.0.1", readme: str = "", bytes_input: bool = True
) -> Path:
    """A wheel providing ``slipway_runtime.Detector`` that replays ``model_dir``'s references
    (``replay_runtime_source``)."""
    code = replay_runtime_source(model_dir, version=version, bytes_input=bytes_input)
    return make_wheel(
        folder,
        dist=dist,
        version=version,
        files={"slipway_runtime/__init__.py": code},
        readme=readme or f"# {dist}\n\nA test double of the slipway runtime.",
    )


# --------------------------------------------------------------------------------------------
# A registry and an index of the test's own


def _free_port() -> int:
    from slipway.smoketest import free_port

    return free_port()


class _Process:
    name = "process"

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        log = open(self.folder / f"{self.name}.log", "ab")  # noqa: SIM115 - the child owns it while it runs
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        wait_until(self.ready, timeout=30, what=f"{self.name} did not start", gone=process_gone(self.proc),
                   log=self.folder / f"{self.name}.log")

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class TestRegistry(_Process):
    __test__ = False
    name = "registry"

    def __init__(self, folder: Path):
        super().__init__(folder)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.config = folder / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: info\nstorage:\n"
            f"  filesystem:\n    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = shutil.which("docker-registry") or shutil.which("registry") or "/usr/bin/docker-registry"
        return [binary, "serve", str(self.config)]

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://{self.address}/v2/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


class TestIndex(_Process):
    __test__ = False
    name = "pypiserver"

    def __init__(self, folder: Path):
        super().__init__(folder)
        (folder / "packages").mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pypiserver",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--authenticate",
            ".",
            "--passwords",
            ".",
            str(self.folder / "packages"),
        ]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}simple/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def remove_images(uid: str) -> None:
    """Untag every local image a test run named with ``uid`` (its layers go when nothing else uses them)."""
    from image_cleanup import owned_references

    from slipway import engine

    for ref in owned_references(engine.images(), {uid}):
        engine.remove_image(ref)


def registry_state(image: str) -> dict[str, Any]:
    """tag -> manifest digest of everything ``image`` holds."""
    from slipway import registry

    return {t: registry.manifest(image, t)["digest"] for t in registry.tags(image)}
