"""Start one configuration of one server, pinned to the benchmark's CPUs, and stop it again.

Peers run from their own virtualenvs under ``taskset -c CPUS`` (so every process and thread they
start stays on those CPUs); Slipway's images run with ``docker run --cpuset-cpus CPUS`` and host
networking. Each yields a ``Running``: the predict URL, the root pid of the server's process tree
(for memory) and the settings it actually ran with.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from slipway import engine, paths
from slipway.benchmark import procs
from slipway.benchmark.peers.spec import Config
from slipway.errors import CheckError, SlipwayError

HANDLERS = Path(__file__).parent / "handlers"
MODEL_VERSION = "1.0"


@dataclass
class Running:
    url: str                     # where a PNG is POSTed
    root_pid: int
    actual: dict[str, Any] = field(default_factory=dict)
    ready_s: float = 0.0


@dataclass
class Setup:
    model_dir: Path              # the export: model.json, model.torchscript.pt, golden/
    model: str                   # the model's name
    cpus: str                    # taskset / cpuset list, e.g. "0,1"
    work: Path                   # scratch folder of this run
    venvs: dict[str, Path]
    images: dict[str, str]       # Slipway variant -> image reference
    probe: bytes                 # one golden PNG, to tell when a server answers
    timeout: float = 180.0
    log: Callable[[str], None] = print

    @property
    def ncpus(self) -> int:
        return len(parse_cpus(self.cpus))


def parse_cpus(text: str) -> list[int]:
    """A taskset/cpuset list ("0,1", "0-3", "0-1,4") -> CPU numbers; ValueError names the bad part."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"CPU list {text!r}: {part!r} is not a CPU number or range") from None
    return sorted(set(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pythonpath(setup: Setup) -> Path:
    """A folder with Slipway's model_export package and the handlers, for the peers' PYTHONPATH."""
    lib = setup.work / "pylib"
    if not (lib / "model_export").is_dir():
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copytree(paths.resource("model_export"), lib / "model_export",
                        ignore=shutil.ignore_patterns("__pycache__", "weights", "*.pt", "*.h5"))
        for handler in HANDLERS.glob("*.py"):
            shutil.copy2(handler, lib / handler.name)
    return lib


def _threads(config: Config, setup: Setup, workers: int | None) -> int:
    if config.threads:
        return config.threads
    return max(1, setup.ncpus // (workers or setup.ncpus))


def wait_answers(url: str, body: bytes, proc: subprocess.Popen | None, timeout: float, what: str,
                 log_file: Path | None = None) -> float:
    """Seconds until ``url`` answers a POST of ``body`` with 200; CheckError when the server dies or times out."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-1500:] if log_file and log_file.is_file() else ""
            raise CheckError(f"{what} exited with status {proc.returncode} before answering:\n{tail}")
        try:
            r = httpx.post(url, content=body, headers={"content-type": "image/png"}, timeout=30)
            if r.status_code == 200:
                return time.monotonic() - started
            last = f"HTTP {r.status_code}: {r.text[:300]}"
            # A client error other than "not there yet" will not go away by waiting.
            if 400 <= r.status_code < 500 and r.status_code not in (404, 408, 429):
                raise CheckError(f"{what} refused the golden image at {url}: {last}")
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise CheckError(f"{what} did not answer {url} within {timeout:.0f}s (last: {last}); log: {log_file}")


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], cwd: Path, log_file: Path, cpus: str,
             url: str, setup: Setup, what: str) -> Iterator[tuple[subprocess.Popen, float]]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PEER_", "PYTHON"))}
    full_env.update(env)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], cwd=cwd, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = wait_answers(url, setup.probe, proc, setup.timeout, what, log_file)
        yield proc, ready
    finally:
        procs.stop_tree(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _peer_env(setup: Setup, config: Config, threads: int | None, lib: Path) -> dict[str, str]:
    env = {"PYTHONPATH": str(lib), "PEER_MODEL_DIR": str(setup.model_dir),
           "PEER_ONEDNN_FUSION": "0" if config.batch_max > 1 else "1", **config.env}
    if threads:
        env["PEER_THREADS"] = str(threads)
    return env


def _torchserve(config: Config, setup: Setup) -> Iterator[Running]:
    venv = setup.venvs["torchserve"]
    lib = pythonpath(setup)
    home = setup.work / config.key
    store = home / "store"
    shutil.rmtree(home, ignore_errors=True)
    store.mkdir(parents=True)
    manifest = json.loads((setup.model_dir / "model.json").read_text())
    ts_file = setup.model_dir / manifest["files"]["torchscript"]["path"]
    res = subprocess.run(
        [str(venv / "bin" / "torch-model-archiver"), "--model-name", setup.model, "--version", MODEL_VERSION,
         "--serialized-file", str(ts_file), "--handler", str(lib / "torchserve_handler.py"),
         "--extra-files", f"{setup.model_dir / 'model.json'},{lib / 'peer_pipeline.py'}",
         "--export-path", str(store), "--archive-format", "no-archive"],
        capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise CheckError(f"torch-model-archiver failed: {(res.stderr or res.stdout).strip()[-800:]}")
    workers = config.workers or setup.ncpus  # TorchServe's default: one worker per CPU it sees
    model: dict[str, Any] = {"defaultVersion": True, "marName": setup.model, "minWorkers": workers,
                             "maxWorkers": workers, "responseTimeout": 120}
    if config.batch_max > 1:
        model.update(batchSize=config.batch_max, maxBatchDelay=config.batch_delay_ms)
    port, mport, xport = free_port(), free_port(), free_port()
    props = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{mport}",
        "metrics_address": f"http://127.0.0.1:{xport}",
        "model_store": str(store),
        "load_models": setup.model,
        "disable_token_authorization": "true",
        "install_py_dep_per_model": "false",
        "models": json.dumps({setup.model: {MODEL_VERSION: model}}),
    }
    if config.workers:
        props["default_workers_per_model"] = str(config.workers)
    (home / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    threads = _threads(config, setup, workers)
    env = {**_peer_env(setup, config, threads, lib), "LOG_LOCATION": str(home / "logs"),
           "METRICS_LOCATION": str(home / "logs"), "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
    url = f"http://127.0.0.1:{port}/predictions/{setup.model}"
    cmd = [str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
           "--ts-config", str(home / "config.properties"), "--model-store", str(store)]
    with _process(cmd, env, home, home / "server.log", setup.cpus, url, setup, "TorchServe") as (proc, ready):
        yield Running(url=url, root_pid=proc.pid, ready_s=ready,
                      actual={"workers": workers, "threads": threads, "batch_max": config.batch_max,
                              "batch_delay_ms": config.batch_delay_ms})


def _litserve(config: Config, setup: Setup) -> Iterator[Running]:
    venv = setup.venvs["litserve"]
    lib = pythonpath(setup)
    home = setup.work / config.key
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**_peer_env(setup, config, config.threads, lib), "PEER_PORT": str(port)}
    if config.workers:
        env["PEER_WORKERS"] = str(config.workers)
    url = f"http://127.0.0.1:{port}/predict"
    log_file = home / "server.log"
    cmd = [str(venv / "bin" / "python"), str(lib / "litserve_server.py")]
    with _process(cmd, env, home, log_file, setup.cpus, url, setup, "LitServe") as (proc, ready):
        actual = _announced(log_file)
        yield Running(url=url, root_pid=proc.pid, ready_s=ready, actual=actual)


def _bentoml(config: Config, setup: Setup) -> Iterator[Running]:
    venv = setup.venvs["bentoml"]
    lib = pythonpath(setup)
    home = setup.work / config.key
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    workers = config.workers or setup.ncpus
    threads = _threads(config, setup, workers)
    env = {**_peer_env(setup, config, threads, lib), "PEER_WORKERS": str(workers),
           "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    url = f"http://127.0.0.1:{port}/predict"
    cmd = [str(venv / "bin" / "bentoml"), "serve", "bentoml_service:Detector", "--host", "127.0.0.1",
           "--port", str(port), "--working-dir", str(lib)]
    with _process(cmd, env, lib, home / "server.log", setup.cpus, url, setup, "BentoML") as (proc, ready):
        yield Running(url=url, root_pid=proc.pid, ready_s=ready, actual={"workers": workers, "threads": threads})


def _announced(log_file: Path) -> dict[str, Any]:
    for line in log_file.read_text(errors="replace").splitlines():
        if line.startswith("PEER_SETTINGS "):
            return json.loads(line.split(" ", 1)[1])
    return {}


def _slipway(config: Config, setup: Setup) -> Iterator[Running]:
    image = setup.images.get(config.variant)
    if not image:
        raise CheckError(f"no {config.variant} image: build it with 'slipway images' or name it with --image")
    port = free_port()
    name = f"slipway-peers-{uuid.uuid4().hex[:10]}"
    env = {"PORT": str(port), "HOST": "127.0.0.1", **config.env}
    started = time.monotonic()
    try:
        engine.start(image, name=name, env=env, network="host", cpuset=setup.cpus)
    except SlipwayError as exc:
        engine.remove_container(name)
        raise CheckError(f"cannot start {image}: {exc}") from exc
    log_file = setup.work / config.key / "container.log"
    try:
        info = engine.container_inspect(name)
        pid = int(info["State"]["Pid"])
        url = f"http://127.0.0.1:{port}/v1/models/{setup.model}:predict"
        wait_answers(url, setup.probe, None, setup.timeout, f"{config.variant} image", log_file)
        env_of = dict(e.split("=", 1) for e in (info.get("Config") or {}).get("Env") or [] if "=" in e)
        _same_export(name, env_of.get("MODEL_DIR", "/model"), image, setup)
        actual: dict[str, Any] = {k: v for k, v in env_of.items() if k.startswith("SLIPWAY_") or k == "THREADS"}
        reported = _reported_parallelism(f"http://127.0.0.1:{port}/v1/models/{setup.model}")
        if reported:
            actual["parallelism"] = reported
        yield Running(url=url, root_pid=pid, ready_s=time.monotonic() - started,
                      actual={"image": image, **actual})
    finally:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(engine.container_logs(name))
        engine.remove_container(name)


def _reported_parallelism(url: str) -> dict[str, Any] | None:
    """What the service says it runs with (workers, slots, threads per slot, batching), where it says."""
    try:
        r = httpx.get(url, timeout=10)
        found = r.json().get("parallelism") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return found if isinstance(found, dict) else None


def export_mismatch(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """How two export manifests differ in what decides the answers, the weights they were exported from
    (sha256); empty when they agree or either does not say. (Model files are not compared: two exports
    of the same weights differ in bytes, not in answers.)"""
    a, b = (ours.get("source") or {}).get("weights_sha256"), (theirs.get("source") or {}).get("weights_sha256")
    if a and b and a != b:
        return f"exported from weights sha256 {b[:12]}, the peers' export from {a[:12]}"
    return ""


def _same_export(container: str, model_dir: str, image: str, setup: Setup) -> None:
    """CheckError when the image serves another export of the model than the one the peers serve
    (an image built before the weights changed): its answers could not equal theirs."""
    code, text = engine.exec_in(container, ["cat", f"{model_dir}/model.json"])
    if code != 0:
        setup.log(f"{image}: cannot read {model_dir}/model.json in the container; not compared with the export")
        return
    try:
        theirs = json.loads(text)
    except ValueError:
        return
    ours = json.loads((setup.model_dir / "model.json").read_text())
    differs = export_mismatch(ours, theirs)
    if differs:
        raise CheckError(f"{image} serves another export of {setup.model} than {setup.model_dir}: "
                         f"{differs}. Rebuild the project's images ('slipway images' in its folder) "
                         "or name an image of this export with --image VARIANT=REF")


STARTERS = {"slipway": _slipway, "torchserve": _torchserve, "litserve": _litserve, "bentoml": _bentoml}


@contextlib.contextmanager
def serve(config: Config, setup: Setup) -> Iterator[Running]:
    with contextlib.contextmanager(STARTERS[config.server])(config, setup) as running:
        yield running
