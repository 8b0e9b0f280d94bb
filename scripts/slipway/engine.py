"""The container engine: the Docker SDK for everything but builds; the docker CLI for builds.

Which engine: the one ``slipway services up`` started (its socket under the state folder) unless
``DOCKER_HOST`` names another; else the user's own (the SDK's and the CLI's default socket).

Everything but a build goes through the Docker SDK for Python (``docker``): run, inspect, logs,
save, load, tag, push, pull, remove. Failures come back as typed errors (below), decided on the
engine API's HTTP status and the exception type, never on the text of a message. Builds run the
``docker`` CLI with BuildKit where the client has it: the SDK's builder is the classic one.

Errors (all ``SlipwayError``s, each with its exit code):

- ``EngineError`` (5, a ``ServiceError``): the engine cannot be reached or answered an error;
  ``status`` is the engine API's HTTP status (None when there was no answer).
- ``ImageNotFound`` (5): no such image in the engine (or, for a pull, in the registry).
- ``ContainerFailed`` (4, a ``CheckError``): a container run to completion exited non-zero;
  ``exit_status`` and ``output`` (its stderr, else stdout) say how.
- ``PullError`` (5): the registry refused a pull with a final answer (401, 403, 400...).
- ``PushError`` (6, a ``PublishError``): a push failed with the registry answering.
- ``EngineTransient`` (6, a ``TransientError``): a pull or push that another attempt may cure
  (the registry unreachable or answering 5xx); ``registry.retry`` retries it.
- ``BuildFailed`` (3, a ``BuildError``): ``docker build`` exited non-zero; ``output`` holds its end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from slipway import services
from slipway.errors import BuildError, CheckError, PublishError, ServiceError, TransientError
from slipway.settings import get_settings

# ---------------------------------------------------------------------------------------------
# Errors


class EngineError(ServiceError):
    """The engine could not be reached, or answered an error. ``status``: its HTTP status."""

    exit_code = 5

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)


class ImageNotFound(EngineError):
    """No such image (in the engine; for a pull, in the registry)."""


class ContainerNotFound(EngineError):
    """No such container."""


class PullError(EngineError):
    """A registry refused a pull with a final answer; ``status`` is the engine's HTTP status."""


class EngineTransient(TransientError):
    """A pull or push another attempt may cure: the engine or registry went away, or answered 5xx."""

    exit_code = 6

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)


class PushError(PublishError):
    """A push failed while the registry answered (refused, denied, invalid)."""

    exit_code = 6


class ContainerFailed(CheckError):
    """A container run to completion exited non-zero."""

    exit_code = 4

    def __init__(self, message: str, *, exit_status: int, output: str):
        self.exit_status = exit_status
        self.output = output
        super().__init__(message)


class BuildFailed(BuildError):
    """``docker build`` exited non-zero; ``output`` is the end of what it printed."""

    exit_code = 3

    def __init__(self, message: str, *, returncode: int, output: str):
        self.returncode = returncode
        self.output = output
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Which engine, which CLI


def _managed_engine() -> bool:
    return services.PidFile(services.state_dir() / "docker" / "dockerd.slipway.pid").read() is not None


def docker_host() -> str | None:
    """``DOCKER_HOST`` for the engine slipway uses: the caller's own, else the socket of the engine
    ``slipway services up`` started, else None (the default socket)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    if _managed_engine():
        return f"unix://{services.docker_socket()}"
    return None


def docker_env() -> dict[str, str]:
    """The environment under which the ``docker`` CLI (and tools that call it, like cibuildwheel)
    reach the engine slipway uses."""
    env = dict(os.environ)
    host = docker_host()
    if host:
        env["DOCKER_HOST"] = host
    # BuildKit only where the chosen client has it: a newer client without the buildx plugin
    # fails every build with "BuildKit is enabled but the buildx component is missing".
    if "DOCKER_BUILDKIT" not in env:
        clients = services.installed("docker")
        env["DOCKER_BUILDKIT"] = "1" if clients and client_has_buildkit(cli_path()) else "0"
    return env


# Client path -> whether it builds with BuildKit. Keyed by path, never "the" client: installing
# docker.io adds a client after the first look, and the choice must be made again then.
_BUILDKIT: dict[str, bool] = {}


def client_has_buildkit(client: str) -> bool:
    """True for a client with the buildx plugin, or one older than 23.0 (BuildKit built in)."""
    if client not in _BUILDKIT:
        if subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0:
            _BUILDKIT[client] = True
        else:
            res = subprocess.run([client, "--version"], capture_output=True, text=True)
            major = res.stdout.split("version", 1)[-1].strip().split(".")[0]
            _BUILDKIT[client] = major.isdigit() and int(major) < 23
    return _BUILDKIT[client]


def cli_path() -> str:
    """A docker client that builds with BuildKit where one is installed; else the first on PATH
    (which then builds with the classic builder). Looked up on every call, so a client that an
    install step just added is seen."""
    clients = services.installed("docker")
    if not clients:
        raise EngineError("no 'docker' client found on PATH (builds need one)")
    return next((c for c in clients if client_has_buildkit(c)), clients[0])


def cli(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
        **kw: Any) -> subprocess.CompletedProcess:
    """Run the docker CLI against slipway's engine. For builds and for tools that need the CLI;
    everything else goes through the SDK functions of this module."""
    cmd = [cli_path(), *args]
    res = subprocess.run(cmd, env=docker_env(), capture_output=capture, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise EngineError(f"{' '.join(cmd[:4])}... failed ({res.returncode}): {(res.stderr or '')[-3000:]}")
    return res


# ---------------------------------------------------------------------------------------------
# The SDK client


_CLIENTS: dict[tuple[str | None, float | None], Any] = {}

# Seconds one engine API call may take; transfers (push, pull, load, save) get no read limit.
API_TIMEOUT = 120.0


def client(timeout: float | None = API_TIMEOUT):
    """A Docker SDK client for the engine of ``docker_host()``; one per (engine, timeout)."""
    import docker

    host = docker_host()
    socket_path = (host or "unix:///var/run/docker.sock").removeprefix("unix://")
    if (host or "unix://").startswith("unix://") and not os.path.exists(socket_path):
        # Checked here, not left to a connection attempt: the SDK's Unix transport leaves the
        # socket of a failed connect open.
        raise EngineError(f"no container engine at {host or 'the default socket'}: {socket_path} does not exist")
    key = (host, timeout)
    if key not in _CLIENTS:
        env = {k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}
        if host:
            env["DOCKER_HOST"] = host
        try:
            _CLIENTS[key] = docker.from_env(environment=env, timeout=timeout, version="auto")
        except docker.errors.DockerException as exc:
            raise EngineError(f"no container engine at {host or 'the default socket'}: {exc}") from exc
    return _CLIENTS[key]


def _said(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    text = explanation.decode(errors="replace") if isinstance(explanation, bytes) else explanation
    return str(text or exc).strip()


@contextlib.contextmanager
def _engine_call(what: str, *, not_found: type[EngineError] = ImageNotFound) -> Iterator[None]:
    """Turn the SDK's exceptions into slipway's: 404 -> ``not_found``, other answers -> EngineError
    with the status; no answer at all (socket missing, connection refused, timeout) -> EngineError."""
    import docker
    import requests

    try:
        yield
    except docker.errors.NotFound as exc:
        raise not_found(f"{what}: {_said(exc)}", status=404) from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{what}: the engine answered {exc.status_code}: {_said(exc)}",
                          status=exc.status_code) from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise EngineError(f"{what}: no answer from the container engine at "
                          f"{docker_host() or 'the default socket'} ({type(exc).__name__})") from exc
    except docker.errors.DockerException as exc:
        raise EngineError(f"{what}: {exc}") from exc


def reachable() -> bool:
    """True when the engine answers a ping."""
    try:
        with _engine_call("ping"):
            return bool(client(timeout=20).ping())
    except EngineError:
        return False


def server_version() -> str:
    with _engine_call("version"):
        return str(client().version().get("Version", ""))


def host_networking() -> bool:
    """True when the engine has no bridge network (the one slipway starts): builds and containers
    must then use the host's network."""
    if _managed_engine():
        return True
    try:
        with _engine_call("network list"):
            return not client().networks.list(names=["bridge"])
    except EngineError:
        return False


# ---------------------------------------------------------------------------------------------
# Images


def image_inspect(ref: str) -> dict[str, Any]:
    """What ``docker image inspect`` says about one image; ImageNotFound when it is not there."""
    with _engine_call(f"inspect image {ref}"):
        return client().api.inspect_image(ref)


def image_exists(ref: str) -> bool:
    try:
        image_inspect(ref)
    except ImageNotFound:
        return False
    return True


def image_id(ref: str) -> str:
    return str(image_inspect(ref)["Id"])


def image_history(ref: str) -> list[dict[str, Any]]:
    """The image's layers, newest first: ``Size`` in bytes, ``CreatedBy``."""
    with _engine_call(f"history of {ref}"):
        return list(client().api.history(ref))


def tag(source: str, ref: str) -> None:
    """Give image ``source`` (an ID or a reference) the reference ``ref`` (``repo:tag``)."""
    repo, _, name = ref.rpartition(":")
    if not repo or "/" in name:
        repo, name = ref, "latest"
    with _engine_call(f"tag {source} as {ref}"):
        client().api.tag(source, repo, name)


def remove_image(ref: str, *, force: bool = True) -> bool:
    """Remove an image (a reference or an ID); False when there was none."""
    try:
        with _engine_call(f"remove image {ref}"):
            client().api.remove_image(ref, force=force)
    except ImageNotFound:
        return False
    return True


def images(reference: str | None = None) -> list[dict[str, Any]]:
    """Images in the engine, optionally only those matching ``reference`` (e.g. ``swt-*``)."""
    filters = {"reference": reference} if reference else None
    with _engine_call("list images"):
        return list(client().api.images(filters=filters))


def _split(ref: str) -> tuple[str, str | None]:
    """``repo:tag`` or ``repo@digest`` into the SDK's (repository, tag) pair."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return repo, digest
    repo, _, name = ref.rpartition(":")
    if repo and "/" not in name:
        return repo, name
    return ref, "latest"


def _transfer_error(what: str, exc: Exception, final: type[Exception]) -> Exception:
    """An SDK error of a pull or push: the registry's final answers (4xx) are ``final``; no answer
    or a 5xx from the engine (which reports an unreachable registry as 500) may pass."""
    import docker
    import requests

    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code
        if status == 404:
            return ImageNotFound(f"{what}: {_said(exc)}", status=404)
        if status is not None and status >= 500:
            return EngineTransient(f"{what}: {_said(exc)}", status=status)
        return final(f"{what}: the engine answered {status}: {_said(exc)}")
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return EngineTransient(f"{what}: the engine stopped answering ({type(exc).__name__})")
    return EngineError(f"{what}: {exc}")


def _auth_config(auth: tuple[str, str] | None) -> dict[str, str] | None:
    return {"username": auth[0], "password": auth[1]} if auth else None


def pull(ref: str, *, timeout: float | None = None, auth: tuple[str, str] | None = None) -> str:
    """Pull ``ref`` (``repo:tag`` or ``repo@sha256:...``); the pulled image's ID. ``timeout``: the
    longest the engine may stay silent (None: no limit). ``auth``: (user, password) for the
    registry; without it, what ``docker login`` stored (the SDK reads the same config).

    ImageNotFound when the registry has no such manifest, PullError for another final answer,
    EngineTransient when the registry could not be reached (retry with ``registry.retry``).
    """
    import docker
    import requests

    repo, name = _split(ref)
    what = f"pull {ref}"
    try:
        for line in client(timeout=timeout).api.pull(repo, tag=name, stream=True, decode=True,
                                                     auth_config=_auth_config(auth)):
            if isinstance(line, dict) and line.get("error"):
                # An error after the transfer began has no status: the registry answered something
                # mid-way; whether it is worth another attempt is what the registry now says.
                raise _stream_failure(what, ref, line, PullError)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _transfer_error(what, exc, PullError) from exc
    return image_id(ref)


def _stream_failure(what: str, ref: str, line: dict[str, Any], final: type[Exception]) -> Exception:
    """A pull or push that failed mid-stream. The engine gives such errors no status, so the
    registry is asked directly: unreachable or 5xx -> EngineTransient, else ``final``."""
    detail = line.get("errorDetail") or {}
    said = str(detail.get("message") or line.get("error"))
    code = detail.get("code")
    if (isinstance(code, int) and code >= 500) or not _registry_answers(ref):
        return EngineTransient(f"{what}: {said}", status=code if isinstance(code, int) else None)
    return final(f"{what}: {said}")


def _registry_host(ref: str) -> str:
    """The registry of an image reference: its first part when that names a host, else Docker Hub."""
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "registry-1.docker.io"


def _registry_answers(ref: str) -> bool:
    """Whether the registry of ``ref`` answers its API root with something other than a 5xx."""
    import httpx

    host = _registry_host(ref)
    scheme = "http" if host.startswith(("127.", "localhost", "[::1]")) else "https"
    try:
        r = httpx.get(f"{scheme}://{host}/v2/", timeout=10)
    except httpx.HTTPError:
        return False
    return r.status_code < 500


def push(ref: str, *, progress: Callable[[str], None] | None = None, auth: tuple[str, str] | None = None) -> str:
    """Push ``ref`` (``repo:tag``) to its registry; the manifest digest the registry now holds.

    PushError for a final refusal, EngineTransient when another attempt may succeed. ``auth``:
    (user, password); without it, what ``docker login`` stored.
    """
    import docker
    import requests

    repo, name = _split(ref)
    what = f"push {ref}"
    digest = ""
    try:
        for line in client(timeout=None).api.push(repo, tag=name, stream=True, decode=True,
                                                  auth_config=_auth_config(auth)):
            if not isinstance(line, dict):
                continue
            if line.get("error"):
                raise _stream_failure(what, ref, line, PushError)
            aux = line.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            elif progress and line.get("status") and not line.get("progressDetail"):
                progress(str(line["status"]))
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise _transfer_error(what, exc, PushError) from exc
    if not digest:
        raise PushError(f"{what}: the engine reported no digest for the pushed image")
    return digest


def load(tar: Path) -> list[str]:
    """``docker load`` of a saved tar; the references it names (its manifest's tags), else the IDs
    of the images it holds."""
    names = saved_names(tar)
    with _engine_call(f"load {tar}"), open(tar, "rb") as data:
        client(timeout=None).images.load(data)
    return names


def saved_names(tar: Path) -> list[str]:
    """What a ``docker save`` tar holds, from its ``manifest.json``: each image's tags, or its ID."""
    try:
        with tarfile.open(tar) as archive:
            member = archive.extractfile("manifest.json")
            manifest = json.loads(member.read()) if member is not None else None
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise EngineError(f"{tar}: not an image saved by docker save ({exc})") from exc
    if not isinstance(manifest, list):
        raise EngineError(f"{tar}: its manifest.json lists no images")
    names: list[str] = []
    for entry in manifest:
        tags = entry.get("RepoTags") or []
        config = str(entry.get("Config", ""))
        names.extend(tags or ["sha256:" + Path(config).name.removesuffix(".json").removeprefix("sha256:")])
    return names


def import_tar(tarball: Path, ref: str, *, changes: list[str] | None = None) -> str:
    """``docker import``: a root filesystem tarball as image ``ref``, with Dockerfile ``changes``."""
    repo, name = _split(ref)
    with _engine_call(f"import {tarball} as {ref}"):
        client(timeout=None).api.import_image(src=str(tarball), repository=repo, tag=name, changes=changes)
    return image_id(ref)


def save(ref: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The image as ``docker save`` writes it (a tar stream), in chunks."""
    with _engine_call(f"save {ref}"):
        stream = client(timeout=None).api.get_image(ref, chunk_size=chunk_size)
    with _engine_call(f"save {ref}"):
        yield from stream


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (for ``tarfile.open(fileobj=..., mode="r|")``)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def save_reader(ref: str) -> IO[bytes]:
    """``docker save ref`` as a readable binary stream."""
    return io.BufferedReader(_ChunkReader(save(ref)), buffer_size=1 << 20)


def save_to(ref: str, path: Path) -> None:
    """``docker save -o path ref``."""
    with open(path, "wb") as out:
        for chunk in save(ref):
            out.write(chunk)


# ---------------------------------------------------------------------------------------------
# Containers


def _gpu_requests() -> list[Any]:
    import docker

    return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]


def start(image: str, *, name: str, command: list[str] | None = None, entrypoint: str | None = None,
          env: dict[str, str] | None = None, network: str | None = "host", memory: str | None = None,
          cpus: float | None = None, gpus: bool = False, volumes: dict[str, dict[str, str]] | None = None,
          user: str | None = None, cpuset: str | None = None) -> str:
    """``docker run -d``: start a container named ``name``; its ID. ``cpuset``: the CPUs it may
    use, as ``--cpuset-cpus`` takes them (``0,1`` or ``2-3``)."""
    options: dict[str, Any] = {"detach": True, "name": name, "environment": env or {}}
    if network:
        options["network_mode"] = network
    if memory:
        options["mem_limit"] = memory
    if cpus:
        options["nano_cpus"] = int(cpus * 1e9)
    if cpuset:
        options["cpuset_cpus"] = cpuset
    if gpus:
        options["device_requests"] = _gpu_requests()
    if volumes:
        options["volumes"] = volumes
    if entrypoint is not None:
        options["entrypoint"] = entrypoint
    if user is not None:
        options["user"] = user
    with _engine_call(f"start {image}"):
        return str(client().containers.run(image, command, **options).id)


def container_status(name: str) -> str | None:
    """``running``, ``exited``, ``dead``...; None when there is no such container."""
    try:
        with _engine_call(f"inspect container {name}", not_found=ContainerNotFound):
            return str(client().api.inspect_container(name)["State"]["Status"])
    except ContainerNotFound:
        return None


def container_inspect(name: str) -> dict[str, Any]:
    with _engine_call(f"inspect container {name}", not_found=ContainerNotFound):
        return client().api.inspect_container(name)


def container_logs(name: str) -> str:
    """Everything the container wrote (stdout and stderr interleaved); '' when it is gone."""
    try:
        with _engine_call(f"logs of {name}", not_found=ContainerNotFound):
            return client().api.logs(name, stdout=True, stderr=True).decode(errors="replace")
    except ContainerNotFound:
        return ""


def remove_container(name: str) -> bool:
    """Stop and remove a container (``docker rm -f``); False when there was none."""
    try:
        with _engine_call(f"remove container {name}", not_found=ContainerNotFound):
            client().api.remove_container(name, force=True, v=True)
    except ContainerNotFound:
        return False
    return True


def stop_container(name: str, timeout: int = 10) -> None:
    with _engine_call(f"stop container {name}", not_found=ContainerNotFound):
        client().api.stop(name, timeout=timeout)


def running_containers() -> list[str]:
    with _engine_call("list containers"):
        return [c["Id"] for c in client().api.containers()]


def exec_in(name: str, command: list[str]) -> tuple[int, str]:
    """``docker exec``: (exit status, output)."""
    with _engine_call(f"exec in {name}", not_found=ContainerNotFound):
        code, output = client().containers.get(name).exec_run(command)
    return int(code), output.decode(errors="replace")


@dataclass(frozen=True)
class RunResult:
    exit_status: int
    stdout: str
    stderr: str


def run(image: str, command: list[str] | None = None, *, entrypoint: str | None = None,
        env: dict[str, str] | None = None, network: str | None = "none", user: str | None = None,
        memory: str | None = None, timeout: float = 300, check: bool = True) -> RunResult:
    """``docker run --rm``: run ``command`` in ``image`` to completion; its exit status and output.

    With ``check``, a non-zero exit raises ContainerFailed. A run past ``timeout`` seconds is killed
    and raises EngineError.
    """
    import uuid

    name = f"slipway-run-{uuid.uuid4().hex[:10]}"
    options: dict[str, Any] = {"detach": True, "name": name, "environment": env or {}}
    if network:
        options["network_mode"] = network
    if entrypoint is not None:
        options["entrypoint"] = entrypoint
    if user is not None:
        options["user"] = user
    if memory:
        options["mem_limit"] = memory
    try:
        with _engine_call(f"run {image}"):
            container = client().containers.run(image, command, **options)
        try:
            with _engine_call(f"run {image}"):
                status = client(timeout=timeout).api.wait(container.id)
        except EngineError as exc:
            raise EngineError(f"run {image}: still running after {timeout:.0f}s") from exc
        with _engine_call(f"output of {image}", not_found=ContainerNotFound):
            stdout = client().api.logs(container.id, stdout=True, stderr=False).decode(errors="replace")
            stderr = client().api.logs(container.id, stdout=False, stderr=True).decode(errors="replace")
    finally:
        remove_container(name)
    code = int(status.get("StatusCode", -1))
    if check and code != 0:
        said = (stderr.strip() or stdout.strip())[-2000:]
        raise ContainerFailed(f"{' '.join(command or [])[:80]} in {image} exited {code}: {said}",
                              exit_status=code, output=said)
    return RunResult(code, stdout, stderr)


# ---------------------------------------------------------------------------------------------
# Builds (the CLI, for BuildKit)


def build(context: Path, tag: str, *, dockerfile: Path | None = None, target: str | None = None,
          build_args: dict[str, str] | None = None, labels: dict[str, str] | None = None,
          log_to: IO[str] | None = None,
          on_line: Callable[[str], None] | None = None, timeout: float | None = None) -> str:
    """``docker build`` of ``context`` as ``tag`` (BuildKit where the client has it, host network on
    an engine without a bridge); the built image's ID. Every output line goes to ``log_to`` and
    ``on_line``; a failed build raises BuildFailed with the end of the output."""
    cmd = [cli_path(), "build", "-t", tag]
    if dockerfile is not None:
        cmd += ["-f", str(dockerfile)]
    if target:
        cmd += ["--target", target]
    if host_networking():
        cmd += ["--network", "host"]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        cmd += ["--label", f"{key}={value}"]
    env = docker_env()
    if env.get("DOCKER_BUILDKIT") == "0":
        # The classic builder keeps the container of a failed step unless told not to.
        cmd.append("--force-rm")
    cmd.append(str(context))
    tail: list[str] = []
    started = time.monotonic()
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if log_to is not None:
                log_to.write(line)
            if on_line is not None:
                on_line(line)
            tail = [*tail[-59:], line.rstrip()]
            if timeout is not None and time.monotonic() - started > timeout:
                proc.kill()
                break
        proc.wait()
    if proc.returncode != 0:
        output = "\n".join(tail[-25:])
        raise BuildFailed(f"docker build of {tag} failed ({proc.returncode}):\n{output}",
                          returncode=proc.returncode, output=output)
    return image_id(tag)


# ---------------------------------------------------------------------------------------------
# GPUs


def has_gpu() -> bool:
    """An NVIDIA GPU that containers can be given (``--gpus all``); never with SLIPWAY_NO_GPU=1.

    The one probe every stage and the plan use.
    """
    if get_settings().no_gpu or not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
