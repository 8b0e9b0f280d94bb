"""Proving an artifact against the golden images: start it, wait for ready, predict, compare.

Shared by ``slipway smoke`` and ``slipway bench``. Three kinds of artifact:

- a served image: ``run_container`` starts it (limited memory and CPUs, host networking, a free
  port), ``check_golden`` sends every golden PNG to its predict endpoint;
- the external model server a ``tfserving`` image talks to: ``tfserving_server`` starts the real
  ``tensorflow/serving`` image (GitHub) or the REST stand-in ``slipway.tfserving_standin`` (here);
- a C++ runtime wheel: ``smoke_wheel`` installs it into a fresh virtualenv without torch and runs
  the wheels stage's own harness (native/tools/check_wheel.py) on the golden images in it.

Whatever was started is stopped and removed afterwards, also when a check fails; logs are kept
when something failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from slipway import engine, records
from slipway.errors import CheckError, SlipwayError
from slipway.settings import get_settings

STUB_DESCRIPTION = (
    "slipway tfserving_stub (a stand-in speaking TF Serving's REST API; NOT TensorFlow Serving)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_gpu() -> bool:
    """An NVIDIA GPU that containers can be given (``--gpus all``): ``engine.has_gpu``."""
    return engine.has_gpu()


def tfserving_image() -> str:
    """The real TF Serving image (GitHub); pinned, overridable by SLIPWAY_TFSERVING_IMAGE."""
    return get_settings().tfserving_image


@dataclass
class Running:
    name: str
    url: str
    ready_seconds: float


@contextlib.contextmanager
def run_container(
    image: str,
    *,
    env: dict[str, str] | None = None,
    memory: str = "2g",
    cpus: float = 2.0,
    timeout: float = 120.0,
    logs_to: Path | None = None,
    keep_logs: bool = False,
    gpus: bool = False,
) -> Iterator[Running]:
    """Start ``image`` with host networking on a free port; yield once /readyz answers 200.

    The container's log is written to ``logs_to`` when startup fails, when the body raises, or
    when ``keep_logs`` is set; the container is removed in every case.
    """
    port = free_port()
    name = f"slipway-smoke-{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    try:
        engine.start(image, name=name, network="host", memory=memory, cpus=cpus, gpus=gpus,
                     env={"PORT": str(port), "HOST": "127.0.0.1", **(env or {})})
    except SlipwayError as exc:
        engine.remove_container(name)
        raise CheckError(f"cannot start {image}: {str(exc).strip()[-500:]}") from exc
    url = f"http://127.0.0.1:{port}"
    failed = True
    try:
        ready = wait_ready(url, name, timeout)
        yield Running(name=name, url=url, ready_seconds=ready - started)
        failed = False
    finally:
        if logs_to is not None and (failed or keep_logs):
            save_container_logs(name, logs_to)
        engine.remove_container(name)


def save_container_logs(name: str, logs_to: Path) -> None:
    logs = engine.container_logs(name)
    logs_to.parent.mkdir(parents=True, exist_ok=True)
    logs_to.write_text(logs)


def wait_ready(url: str, name: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return time.monotonic()
            last = f"/readyz answered {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        state = engine.container_status(name)
        if state in ("exited", "dead"):
            raise CheckError(f"container {name} exited before it was ready ({last})")
        time.sleep(0.2)
    raise CheckError(f"container {name} not ready after {timeout:.0f}s ({last})")


def model_info(url: str, model: str) -> dict[str, Any]:
    """What the service says about its model (backend, device, runtime); {} when it says nothing."""
    try:
        r = httpx.get(f"{url}/v1/models/{model}", timeout=10)
        return r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------
# The external model server of the tfserving-client image


@dataclass
class ExternalServer:
    url: str
    kind: str  # "tensorflow/serving" or "stub"
    description: str
    ready_seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def tfserving_mode(requested: str | None = None) -> str:
    """``image`` (the real tensorflow/serving) on GitHub, ``stub`` elsewhere, unless asked.

    ``SLIPWAY_TFSERVING`` (``image``|``stub``|``auto``) chooses where the CLI has no option.
    """
    mode = (requested or get_settings().tfserving).strip().lower()
    if mode not in ("auto", "image", "stub"):
        raise CheckError(f"SLIPWAY_TFSERVING={mode!r}: expected auto, image or stub")
    if mode == "auto":
        return "image" if os.environ.get("GITHUB_ACTIONS") == "true" else "stub"
    return mode


def _wait_model_available(url: str, name: str, timeout: float, alive: Callable[[], str | None]) -> float:
    started = time.monotonic()
    deadline = started + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/v1/models/{name}", timeout=2)
            if r.status_code == 200 and any(
                v.get("state") == "AVAILABLE" for v in r.json().get("model_version_status") or []
            ):
                return time.monotonic() - started
            last = f"answered {r.status_code}: {r.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            last = type(exc).__name__
        dead = alive()
        if dead:
            raise CheckError(f"the model server stopped before it served {name!r}: {dead}")
        time.sleep(0.3)
    raise CheckError(f"the model server did not serve {name!r} within {timeout:.0f}s ({last})")


@contextlib.contextmanager
def tfserving_server(
    model_dir: Path,
    *,
    mode: str,
    timeout: float = 120.0,
    memory: str = "2g",
    cpus: float = 2.0,
    logs_to: Path | None = None,
    keep_logs: bool = False,
) -> Iterator[ExternalServer]:
    """Serve the SavedModel of the export ``model_dir`` over TF Serving's REST API on a free port.

    ``mode="image"`` runs the real ``tensorflow/serving`` image (SavedModel mounted read-only as
    version 1); ``mode="stub"`` runs ``python -m slipway.tfserving_standin`` on the host, which is a
    stand-in, not TF Serving, and says so in every result.
    """
    manifest = records.read(model_dir / "model.json", records.ModelManifest)
    name = manifest.name
    saved_model = model_dir / (manifest.files["saved_model"].path if "saved_model" in manifest.files
                               else "saved_model")
    if not (saved_model / "saved_model.pb").is_file():
        raise CheckError(
            f"{saved_model}: no SavedModel to serve (export the model with the saved_model exporter)"
        )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    failed = True
    if mode == "image":
        container = f"slipway-tfserving-{uuid.uuid4().hex[:10]}"
        grpc_port = free_port()
        image = tfserving_image()
        # The entrypoint script would add its own --port/--rest_api_port; with host networking the
        # defaults (8500/8501) may be taken, so the server binary is called directly.
        try:
            if not engine.image_exists(image):
                engine.pull(image)
            engine.start(
                image, name=container, network="host", memory=memory, cpus=cpus,
                volumes={str(saved_model.resolve()): {"bind": f"/models/{name}/1", "mode": "ro"}},
                entrypoint="tensorflow_model_server",
                command=[f"--port={grpc_port}", f"--rest_api_port={port}", f"--model_name={name}",
                         f"--model_base_path=/models/{name}"],
            )
        except SlipwayError as exc:
            engine.remove_container(container)
            raise CheckError(f"cannot start {image}: {str(exc).strip()[-500:]}") from exc

        def alive() -> str | None:
            state = engine.container_status(container)
            return f"container {state or 'gone'}" if state in ("exited", "dead", None) else None

        try:
            ready = _wait_model_available(url, name, timeout, alive)
            try:
                digests = engine.image_inspect(image).get("RepoDigests") or []
            except SlipwayError:
                digests = []
            yield ExternalServer(
                url=url,
                kind="tensorflow/serving",
                description=f"TensorFlow Serving ({image})",
                ready_seconds=ready,
                details={"image": image, "repo_digests": digests},
            )
            failed = False
        finally:
            if logs_to is not None and (failed or keep_logs):
                save_container_logs(container, logs_to)
            engine.remove_container(container)
        return

    log_path = logs_to or Path(tempfile.mkstemp(prefix="tfserving-stub-", suffix=".log")[1])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "slipway.tfserving_standin",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--threads",
        str(max(1, int(cpus))),
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        ready = _wait_model_available(
            url, name, timeout, lambda: None if proc.poll() is None else f"exit code {proc.returncode}"
        )
        yield ExternalServer(
            url=url,
            kind="stub",
            description=STUB_DESCRIPTION,
            ready_seconds=ready,
            details={"command": ["python", *cmd[1:]]},
        )
        failed = False
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        if logs_to is None or not (failed or keep_logs):
            log_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Golden images


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def predict(
    url: str, model: str, body: bytes, content_type: str = "image/png"
) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    try:
        r = httpx.post(
            f"{url}/v1/models/{model}:predict",
            content=body,
            headers={"content-type": content_type},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        raise CheckError(f"predict failed: {type(exc).__name__}: {exc}") from exc
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise CheckError(f"predict answered {r.status_code}: {r.text[:300]}")
    return r.json(), elapsed


def compare_golden(
    model_dir: Path,
    detect: Callable[[records.GoldenImage, Path], tuple[list[dict[str, Any]], float]],
    *,
    iou: float,
    score: float,
) -> dict[str, Any]:
    """Run ``detect(reference_entry, png_path) -> (detections, seconds)`` on every golden image and
    compare with the export's reference detections (tolerance ``iou``/``score``) and score them
    against the golden ground truth (``accuracy``: mAP@0.5, precision and recall at the model's
    score threshold)."""
    from model_export.compare import accuracy, compare_detections

    manifest = records.read(model_dir / "model.json", records.ModelManifest)
    reference = records.read(model_dir / "golden" / "reference.json", records.GoldenReference).images
    results, latencies, got_all = [], [], []
    for entry in reference:
        got, seconds = detect(entry, model_dir / "golden" / entry.file)
        latencies.append(seconds * 1000)
        got_all.append(got)
        cmp = compare_detections([records.dump(d) for d in entry.detections], got, iou=iou, score=score)
        results.append({"file": entry.file, **cmp.to_json(), "differences": cmp.table()})
    # Against the project's own ground truth, over the model's own labels; precision and recall at
    # the score threshold the release serves with.
    acc = accuracy([[records.dump(t) for t in e.ground_truth] for e in reference], got_all, manifest.labels,
                   float(manifest.output.score_threshold))
    return {
        "ok": bool(results) and all(r["ok"] for r in results),
        "model": manifest.name,
        "images": len(results),
        "min_iou": min((r["min_iou"] for r in results), default=1.0),
        "max_score_diff": max((r["max_score_diff"] for r in results), default=0.0),
        "map50_vs_ground_truth": acc["map50"],
        # Which export this was checked against: publish refuses a result of another one.
        "export_inputs": export_digest(manifest),
        "accuracy": acc,
        "latency_ms": {"p50": _pct(latencies, 50), "max": max(latencies, default=0.0)},
        "per_image": results,
    }


def export_digest(manifest: records.ModelManifest) -> str | None:
    """One hash of the inputs an export records in ``model.json`` (None for an export without)."""
    inputs = manifest.inputs
    if inputs is None:
        return None
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def check_golden(url: str, model_dir: Path, *, iou: float, score: float) -> dict[str, Any]:
    """Send every golden image to a served model; compare with the reference and the ground truth."""
    name = records.read(model_dir / "model.json", records.ModelManifest).name

    def detect(entry: records.GoldenImage, path: Path) -> tuple[list[dict[str, Any]], float]:
        answer, seconds = predict(url, name, png_bytes(path))
        return answer.get("detections", []), seconds

    return compare_golden(model_dir, detect, iou=iou, score=score)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


# --------------------------------------------------------------------------------------------
# Wheels

def wheel_harness() -> Path:
    """The wheel-check harness (native/tools/check_wheel.py, shipped in Slipway's resources): it runs
    inside the wheel's environment, where only the wheel, its dependencies and numpy exist, and the
    wheels stage and cibuildwheel run the same file."""
    from slipway.paths import resource

    return resource("native") / "tools" / "check_wheel.py"


def wheel_tags(filename: str) -> list[tuple[str, str, str]]:
    """(interpreter, abi, platform) triples of a wheel file name, compressed tag sets expanded (PEP 425)."""
    try:
        tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename as exc:
        raise CheckError(
            f"{filename}: not a wheel file name (name-version[-build]-python-abi-platform.whl): {exc}"
        ) from None
    return sorted((t.interpreter, t.abi, t.platform) for t in tags)


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    return (int(parts[0]), int(parts[1])) if out.returncode == 0 and len(parts) == 2 else None


def interpreter_for(wheel: Path) -> tuple[str | None, str]:
    """A Python on this machine that can install ``wheel``, or (None, why not)."""
    machine = platform.machine()
    candidates = [sys.executable] + [p for p in (shutil.which(f"python3.{m}") for m in range(8, 16)) if p]
    versions = {}
    for python in candidates:
        version = _python_version(python)
        if version and version not in versions:
            versions[version] = python
    wanted = []
    for interpreter, _abi, plat in wheel_tags(wheel.name):
        if plat != "any" and not (
            plat.startswith(("linux", "manylinux", "musllinux")) and plat.endswith(machine)
        ):
            continue
        for (major, minor), python in versions.items():
            if interpreter in (f"cp{major}{minor}", f"py{major}", f"py{major}{minor}"):
                return python, ""
        wanted.append(f"{interpreter}-{plat}")
    have = ", ".join(f"{a}.{b}" for a, b in sorted(versions)) or "none"
    need = ", ".join(sorted(set(wanted))) or "+".join(sorted({t[2] for t in wheel_tags(wheel.name)}))
    return None, f"no Python on this {machine} machine can run it (needs {need}; found Python {have})"


def _run(
    cmd: list[str], *, log: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}\n")
    return res


def wheel_requirements(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` lines of a wheel's METADATA."""
    import email.parser
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
            if not names:
                return []
            meta = email.parser.Parser().parsestr(zf.read(names[0]).decode("utf-8", "replace"))
    except (OSError, zipfile.BadZipFile):
        return []  # not readable as a wheel: installing it says why
    return meta.get_all("Requires-Dist") or []


def wheel_kind(wheel: Path) -> str:
    """``thin`` when the wheel needs the torch package, ``self-contained`` when it must run without it,
    ``model-package`` for a project's model package (it needs Slipway's runtime)."""
    needs = set()
    for text in wheel_requirements(wheel):
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue  # installing the wheel says what is wrong with it
        if req.marker is None or "extra" not in str(req.marker):  # not only with an extra
            needs.add(canonicalize_name(req.name))
    if "slipway-runtime" in needs:
        return "model-package"
    return "thin" if "torch" in needs else "self-contained"


def _top_level(wheel: Path) -> str | None:
    """The import name a wheel installs (its ``top_level.txt``, else the first package folder)."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        for name in names:
            if name.endswith(".dist-info/top_level.txt"):
                first = zf.read(name).decode().split()
                if first:
                    return first[0]
    return next((n.split("/")[0] for n in names if n.endswith("/__init__.py") and n.count("/") == 1), None)


def _torch_pin(wheel: Path) -> str | None:
    for req in wheel_requirements(wheel):
        name = req.split(";")[0].replace(" ", "")
        if name.lower().startswith("torch=="):
            return name.split("==", 1)[1]
    return None


def smoke_wheel(
    wheel: Path,
    model_dir: Path,
    *,
    work: Path,
    iou: float,
    score: float,
    python: str | None = None,
    timeout: float = 900.0,
    keep: bool = False,
    runtime: Path | None = None,
) -> dict[str, Any]:
    """Install ``wheel`` where a user would, run the golden images through
    ``slipway_runtime.Detector(model_dir).predict(image)`` and compare with the reference.

    A model package (``wheel_kind`` ``model-package``) goes into a fresh virtualenv with the
    self-contained ``runtime`` wheel it depends on; the detector is then its own ``load()``.

    A self-contained wheel goes into a fresh virtualenv, and torch must be absent there. A thin wheel
    (one that requires torch) is unpacked beside this interpreter's torch, which must be the version
    it pins, as the wheels stage checks it; downloading a second torch for it would only cost time.

    Never raises for a failed check: the result says ``ok`` false and why. ``work`` holds the
    virtualenv and the log; it is removed afterwards unless the check failed or ``keep`` is set.
    """
    import numpy as np
    from PIL import Image

    kind = wheel_kind(wheel)
    result: dict[str, Any] = {"ok": False, "wheel_kind": kind}
    package = None
    if kind == "model-package":
        if runtime is None:
            return {**result, "error": f"{wheel.name}: a model package is checked with the self-contained "
                                       "runtime wheel it depends on, and none was given"}
        package = _top_level(wheel)
        if python is None:
            python, why = interpreter_for(runtime)
            if python is None:
                return {**result, "untested": True, "error": f"{runtime.name}: {why}"}
    if python is None:
        python, why = interpreter_for(wheel)
        if python is None:
            return {**result, "untested": True, "error": f"{wheel.name}: {why}"}
    if kind == "thin":
        import importlib.metadata

        if _python_version(python) != sys.version_info[:2]:
            needs = ".".join(map(str, _python_version(python) or ()))
            why = f"a thin wheel is checked beside this Python's torch; it needs Python {needs}"
            return {**result, "untested": True, "error": f"{wheel.name}: {why}"}
        try:
            have = importlib.metadata.version("torch").split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            have = None
        pin = _torch_pin(wheel)
        if have is None or (pin is not None and pin.split("+")[0] != have):
            why = f"it needs torch {pin or '(any)'} beside it; this machine has {have or 'no torch'}"
            return {**result, "untested": True, "error": f"{wheel.name}: {why}"}
        python = sys.executable
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = work / "smoke.log"
    venv = work / "venv"
    # The host's pip settings (index, proxy CA) apply; its site-packages, which hold torch, never do
    # for a self-contained wheel.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    pip = [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--only-binary",
        ":all:",
    ]
    failed = True
    try:
        if kind in ("self-contained", "model-package"):
            res = _run([python, "-m", "venv", str(venv)], log=log, timeout=120, env=env)
            if res.returncode != 0:
                result["error"] = f"cannot create a virtualenv with {python}: {res.stderr.strip()[-300:]}"
                return result
            runner_python = str(venv / "bin" / "python")
            wheels = [str(runtime), str(wheel)] if runtime is not None and package else [str(wheel)]
            res = _run([runner_python, *pip, *wheels, "numpy"], log=log, timeout=timeout, env=env)
        else:
            runner_python = python
            res = _run(
                [python, *pip, "--no-deps", "--target", str(venv), str(wheel)],
                log=log,
                timeout=timeout,
                env=env,
            )
            env["PYTHONPATH"] = str(venv)
        if res.returncode != 0:
            result["error"] = f"pip install {wheel.name} failed: {(res.stderr or res.stdout).strip()[-500:]}"
            return result
        if kind in ("self-contained", "model-package"):
            frozen = _run(
                [runner_python, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                log=log,
                timeout=120,
                env=env,
            )
            packages = {p["name"]: p["version"] for p in json.loads(frozen.stdout or "[]")}
            result["installed"] = packages
            if any(name.lower() == "torch" for name in packages):
                result["error"] = (
                    f"installing {wheel.name} brought torch ({packages.get('torch')}): "
                    "the self-contained runtime wheel must work without the torch package"
                )
                return result
        inputs = work / "inputs"
        inputs.mkdir()
        reference = records.read(model_dir / "golden" / "reference.json", records.GoldenReference).images
        for entry in reference:
            with Image.open(model_dir / "golden" / entry.file) as im:
                np.save(inputs / f"{Path(entry.file).stem}.npy", np.asarray(im.convert("RGB"), dtype=np.uint8))
        answers, summary_file = work / "answers.json", work / "check.json"
        cmd = [runner_python, str(wheel_harness()), "--kind", "thin" if kind == "thin" else "self-contained",
               "--model", str(model_dir.resolve()), "--inputs", str(inputs), "--answers", str(answers),
               "--json-out", str(summary_file), "--iou", str(iou), "--score", str(score)]
        if package:
            cmd += ["--package", package]
        # From an empty folder: the repository's own slipway_runtime sources must not shadow the wheel.
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=inputs, env=env)
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}\n")
        check = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        if not answers.is_file():
            # The runtime never answered: it failed to import or load, or the process died.
            how = f"exit code {res.returncode}"
            if res.returncode < 0:
                with contextlib.suppress(ValueError):
                    how = f"killed by {signal.Signals(-res.returncode).name}"
            output = check.get("error") or (res.stderr or res.stdout).strip()[-800:] or "(no output)"
            result["error"] = f"slipway_runtime.Detector failed ({how}): {output}"
            return result
        got = json.loads(answers.read_text())
        result.update(
            {
                "module": got["module"],
                "runtime_version": got["version"],
                "torch_imported": got["torch_imported"],
                "torch_installed": got["torch_installed"],
            }
        )
        by_stem = got["images"]

        def detect(entry: records.GoldenImage, path: Path) -> tuple[list[dict[str, Any]], float]:
            answer = by_stem[Path(entry.file).stem]
            return answer["detections"], answer["ms"] / 1000

        result.update(compare_golden(model_dir, detect, iou=iou, score=score))
        if not str(Path(got["module"]).resolve()).startswith(str(venv.resolve())):
            result["ok"] = False
            result["error"] = f"slipway_runtime was imported from {got['module']}, not from the wheel"
        elif kind != "thin" and (got["torch_imported"] or got["torch_installed"]):
            result["ok"] = False
            result["error"] = "torch was present while the wheel ran; the check must run without it"
        elif result["ok"] and not check.get("ok"):
            # The golden detections agree, and the harness found something else: inputs that answer
            # differently (RGB bytes, PIL image), or a torch guard that let torch in.
            result["ok"] = False
            problems = [p for f in check.get("failures", []) for p in f.get("problems", []) if "input" in p]
            result["error"] = check.get("error") or (
                f"{problems[0]['input']} input: {problems[0]['problem']}" if problems
                else "the wheel check failed (see the log)")
        failed = not result["ok"]
        return result
    except subprocess.TimeoutExpired as exc:
        result["error"] = f"timed out after {exc.timeout:.0f}s: {' '.join(map(str, exc.cmd))[:200]}"
        return result
    finally:
        result["log"] = str(log) if (failed or keep) else None
        if failed:
            shutil.rmtree(venv, ignore_errors=True)  # the log stays; a venv is hundreds of MB
        elif not keep:
            shutil.rmtree(work, ignore_errors=True)


__all__ = [
    "ExternalServer",
    "Running",
    "check_golden",
    "compare_golden",
    "export_digest",
    "free_port",
    "has_gpu",
    "interpreter_for",
    "model_info",
    "predict",
    "run_container",
    "save_container_logs",
    "smoke_wheel",
    "tfserving_mode",
    "tfserving_server",
    "wait_ready",
    "wheel_tags",
]
