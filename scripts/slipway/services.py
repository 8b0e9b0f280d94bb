"""Local services for a release that never leaves the machine.

``slipway services up`` finds or starts: a Docker engine, the CNCF distribution registry on
127.0.0.1, and pypiserver on 127.0.0.1. Everything it starts lives under one state folder
(PID files, logs, data) and ``down`` stops exactly that, by PID. Talking to the engine once it
runs (containers, images, builds) is ``slipway.engine``'s part.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slipway.errors import ServiceError
from slipway.settings import get_settings

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def registry_addr() -> str:
    """host:port of the local registry (``SLIPWAY_REGISTRY_ADDR``)."""
    return get_settings().registry_addr


def index_addr() -> str:
    """host:port of the local package index (``SLIPWAY_INDEX_ADDR``)."""
    return get_settings().index_addr


def __getattr__(name: str) -> str:
    # REGISTRY_ADDR and INDEX_ADDR, read from the settings when asked for, never at import.
    if name == "REGISTRY_ADDR":
        return registry_addr()
    if name == "INDEX_ADDR":
        return index_addr()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def state_dir() -> Path:
    """One place for everything slipway keeps between runs; ``SLIPWAY_STATE_DIR`` overrides it."""
    configured = get_settings().state_dir
    if configured:
        return configured.expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "slipway"


# --------------------------------------------------------------------------------------------
# PID files that survive PID reuse: the process start time is stored beside the PID.


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may contain spaces, so split after ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class PidFile:
    path: Path

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"pid": pid, "start": _start_time(pid)}))

    def read(self) -> int | None:
        """The PID if that very process is still alive; a stale file is removed."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            self.path.unlink(missing_ok=True)
            return None
        pid = data.get("pid")
        if isinstance(pid, int) and _start_time(pid) is not None and _start_time(pid) == data.get("start"):
            return pid
        self.path.unlink(missing_ok=True)
        return None


def _stop_pid(pid: int, name: str, log: Log, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _start_time(pid) is None or _is_zombie(pid):
            return
        time.sleep(0.2)
    log(f"{name} (pid {pid}) did not stop in {timeout:.0f}s; killing it")
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        # Services outlive the command that starts them: they run in their state folder, not in
        # the caller's folder (measured: pypiserver answered 500 on every request once the
        # checkout it was started from had been deleted, since it resolves paths from its cwd).
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
            cwd=log_path.parent,
        )
    return proc.pid


def _wait_for(check: Callable[[], bool], what: str, log_path: Path, pid: int | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and (_start_time(pid) is None or _is_zombie(pid)):
            break
        time.sleep(0.25)
    tail = ""
    with contextlib.suppress(OSError):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    raise ServiceError(f"{what} did not become ready (log: {log_path}):\n{tail}")


def _port_open(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _apt_install(packages: list[str], log: Log) -> None:
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists() or not shutil.which("apt-get"):
        raise ServiceError(
            f"{', '.join(packages)} not installed, and slipway installs them only as root on Debian: "
            f"install them (apt-get install {' '.join(packages)}) or start the service yourself"
        )
    log(f"installing Debian packages: {' '.join(packages)} (one time)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise ServiceError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


# --------------------------------------------------------------------------------------------
# Docker engine


def docker_socket() -> Path:
    """The socket of the engine ``ensure_docker`` starts."""
    return state_dir() / "docker" / "docker.sock"


# Where Debian's docker.io puts docker and dockerd. Looked at after PATH: the apt step of
# ensure_docker installs there whatever PATH holds. (The fresh-machine test points it at a folder
# of its own, so that it can start with no client there and "install" one.)
DOCKER_BIN_DIRS: tuple[str, ...] = ("/usr/bin", "/usr/sbin")


def installed(name: str) -> list[str]:
    """Every executable ``name`` on PATH, then in DOCKER_BIN_DIRS, one path per real file."""
    seen: list[str] = []
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), *DOCKER_BIN_DIRS]:
        if not directory:
            continue
        candidate = os.path.join(directory, name)
        real = os.path.realpath(candidate)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and real not in [
            os.path.realpath(s) for s in seen
        ]:
            seen.append(candidate)
    return seen


def docker_reachable() -> bool:
    """True when the engine slipway uses answers (``slipway.engine.reachable``)."""
    from slipway import engine

    # A client too: builds need the CLI, and without one ensure_docker installs Debian's.
    return bool(installed("docker")) and engine.reachable()


def ensure_docker(log: Log = _stderr) -> str:
    """Use a running engine; else start Debian's dockerd under the state folder."""
    pidfile = PidFile(state_dir() / "docker" / "dockerd.slipway.pid")
    if docker_reachable():
        return "running"
    # BuildKit's cache otherwise grows without bound: many builds of 1-7 GB images once filled
    # a 250 GB disk. The engine collects it down to this size (SLIPWAY_BUILD_CACHE_GB, default 20).
    keep_gb = get_settings().build_cache_gb
    if not installed("dockerd"):
        _apt_install(["docker.io"], log)
    found = installed("dockerd")
    if not found:
        raise ServiceError(f"docker.io is installed but no dockerd is on PATH or in {', '.join(DOCKER_BIN_DIRS)}")
    dockerd = found[0]
    root = state_dir() / "docker"
    for sub in ("data", "exec"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sock = docker_socket()
    sock.unlink(missing_ok=True)
    config = root / "daemon.json"
    config.write_text(json.dumps({"builder": {"gc": {"enabled": True, "defaultKeepStorage": f"{keep_gb}GB"}}}))
    log(f"starting dockerd (overlay2, no iptables, no bridge: containers use host networking; "
        f"build cache kept under {keep_gb} GB)")
    cmd = [
        dockerd,
        f"--config-file={config}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        f"--host=unix://{sock}",
        "--storage-driver=overlay2",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
    ]
    pid = _spawn(cmd, root / "dockerd.log")
    pidfile.write(pid)
    os.environ.pop("DOCKER_HOST", None)
    _wait_for(docker_reachable, "dockerd", root / "dockerd.log", pid, timeout=60)
    return "started"


# --------------------------------------------------------------------------------------------
# Registry and package index


def _registry_config(root: Path) -> Path:
    config = root / "config.yml"
    # Written by slipway: the packaged config listens on every interface.
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: {registry_addr()}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
    )
    return config


def _ensure_http_service(
    what: str, addr: str, url: str, root: Path, pid_name: str, command: Callable[[], list[str]], log: Log
) -> str:
    """Find ``what`` answering at ``url``, or start ``command()`` and wait until it does.

    A port held by something that does not answer like ``what`` is an error, never a second start.
    """
    pidfile = PidFile(root / pid_name)
    if pidfile.read() is not None and _http_ok(url):
        return "running"
    if _port_open(addr):
        if _http_ok(url):
            return "running (not started by slipway)"
        raise ServiceError(f"{addr} is taken by something that is not a {what}")
    cmd = command()
    log(f"starting {what} on {addr}")
    log_path = root / f"{pid_name.split('.')[0]}.log"
    pid = _spawn(cmd, log_path)
    pidfile.write(pid)
    _wait_for(lambda: _http_ok(url), what, log_path, pid, timeout=30)
    return "started"


def ensure_registry(log: Log = _stderr) -> str:
    root = state_dir() / "registry"

    def command() -> list[str]:
        binary = shutil.which("docker-registry") or shutil.which("registry")
        if not binary:
            _apt_install(["docker-registry"], log)
            binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        (root / "data").mkdir(parents=True, exist_ok=True)
        return [binary, "serve", str(_registry_config(root))]

    return _ensure_http_service(
        "registry", registry_addr(), f"http://{registry_addr()}/v2/", root, "registry.pid", command, log
    )


def ensure_index(log: Log = _stderr) -> str:
    root = state_dir() / "pypi"

    def command() -> list[str]:
        packages = root / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        host, port = index_addr().rsplit(":", 1)
        server = Path(sys.executable).with_name("pypi-server")
        cmd = [str(server)] if server.exists() else [sys.executable, "-m", "pypiserver"]
        # No authentication on loopback; uploads never overwrite an existing file (the default).
        return [*cmd, "run", "--host", host, "--port", port, "--authenticate", ".", "--passwords", ".",
                str(packages)]

    return _ensure_http_service(
        "package index", index_addr(), f"http://{index_addr()}/simple/", root, "pypiserver.pid", command, log
    )


SERVICES = {"docker": ensure_docker, "registry": ensure_registry, "index": ensure_index}
PIDFILES = {
    "docker": ("docker", "dockerd.slipway.pid"),
    "registry": ("registry", "registry.pid"),
    "index": ("pypi", "pypiserver.pid"),
}


def up(names: list[str] | None = None, log: Log = _stderr) -> dict[str, str]:
    result = {}
    for name in names or list(SERVICES):
        result[name] = SERVICES[name](log)
        log(f"{name}: {result[name]}")
    return result


def down(names: list[str] | None = None, log: Log = _stderr) -> dict[str, str]:
    result = {}
    # Reverse order: the engine goes last, after whatever might still use it.
    for name in reversed(names or list(SERVICES)):
        folder, file = PIDFILES[name]
        pidfile = PidFile(state_dir() / folder / file)
        pid = pidfile.read()
        if pid is None:
            result[name] = "not started by slipway"
            continue
        if name == "docker":
            _stop_containers(log)
        _stop_pid(pid, name, log)
        if name == "docker":
            _unmount_leftovers(state_dir() / folder, log)
        pidfile.path.unlink(missing_ok=True)
        result[name] = "stopped"
        log(f"{name}: stopped (pid {pid})")
    return result


def mounts_under(root: Path, mounts: str) -> list[str]:
    """Mount points at or below ``root`` in /proc/mounts text, deepest first (the unmount order)."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 1:
            # /proc/mounts escapes spaces and other odd characters as octal: \040 is a space.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            if point.startswith(prefix) or point == prefix.rstrip("/"):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _unmount_leftovers(root: Path, log: Log) -> None:
    """dockerd (20.10, measured) leaves its network namespace file mounted under exec/netns even
    after a clean shutdown; the state folder could then not be deleted. Unmount what it left."""
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        return
    for point in mounts_under(root, mounts):
        res = subprocess.run(["umount", point], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            log(f"could not unmount {point} left by the engine: {res.stderr.strip()}")


def _stop_containers(log: Log) -> None:
    from slipway import engine

    try:
        ids = engine.running_containers()
        if ids:
            log(f"stopping {len(ids)} container(s) before the engine")
            for container in ids:
                engine.remove_container(container)
    except ServiceError:
        pass


def status() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name, (folder, file) in PIDFILES.items():
        pid = PidFile(state_dir() / folder / file).read()
        out[name] = {"pid": pid, "managed": pid is not None}
    out["docker"]["reachable"] = docker_reachable()
    out["registry"]["reachable"] = _http_ok(f"http://{registry_addr()}/v2/")
    out["registry"]["url"] = f"http://{registry_addr()}"
    out["index"]["reachable"] = _http_ok(f"http://{index_addr()}/simple/")
    out["index"]["url"] = f"http://{index_addr()}"
    from slipway import engine

    out["docker"]["docker_host"] = engine.docker_host() or "(default)"
    return out
