"""One virtualenv per peer, with pinned versions, kept between runs (keyed on what is installed).

Every peer gets the same torch, numpy and pillow as Slipway's images (Slipway's requirements
files), so only the server differs. TorchServe's frontend needs a Java runtime: Debian's
``openjdk-17-jre-headless`` is installed with apt-get where ``java`` is missing (as root on Debian).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from slipway import paths
from slipway.benchmark.peers.spec import JAVA_PACKAGE, Peer
from slipway.errors import BuildError
from slipway.settings import get_settings

SHARED = ("torch", "numpy", "pillow")
STAMP = ".slipway-peer"


def cache_root() -> Path:
    """Where the peers' virtualenvs live: ``SLIPWAY_PEERS_CACHE``, else the user's cache folder."""
    given = get_settings().peers_cache
    if given:
        return given
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slipway" / "peers"


def shared_pins(files: tuple[str, ...] = ("requirements-pytorch.txt", "requirements.txt")) -> list[str]:
    """``name==version`` of torch, numpy and pillow as Slipway's images pin them."""
    pins: dict[str, str] = {}
    for name in files:
        path = paths.resource(name)
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if "==" not in line:
                continue
            pkg = line.split("==", 1)[0].strip().lower()
            if pkg in SHARED:
                pins[pkg] = line
    missing = [p for p in SHARED if p not in pins]
    if missing:
        raise BuildError(f"Slipway's requirements files {', '.join(files)} pin no {', '.join(missing)}")
    return [pins[p] for p in SHARED]


def requirements(peer: Peer) -> list[str]:
    return [*shared_pins(), *peer.packages]


def ensure_java(log: Callable[[str], None]) -> str:
    java = shutil.which("java")
    if java:
        return java
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BuildError(f"TorchServe needs a Java runtime: install {JAVA_PACKAGE} (no `java` on PATH)")
    log(f"installing {JAVA_PACKAGE} with apt-get (TorchServe's frontend is Java)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", JAVA_PACKAGE]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed: {(res.stderr or res.stdout).strip()[-400:]}")
    java = shutil.which("java")
    if not java:
        raise BuildError(f"{JAVA_PACKAGE} installed but `java` is still not on PATH")
    return java


def ensure(peer: Peer, log: Callable[[str], None], root: Path | None = None) -> Path:
    """The peer's virtualenv (created or reused); returns its folder."""
    reqs = requirements(peer)
    key = hashlib.sha256("\n".join([sys.version, *reqs]).encode()).hexdigest()[:16]
    venv = (root or cache_root()) / f"{peer.name}-{peer.version}"
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text().strip() == key and (venv / "bin" / "python").is_file():
        return venv
    if peer.needs_java:
        ensure_java(log)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"{peer.name}: creating {venv} with {', '.join(reqs)} (first run: a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    res = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *reqs],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise BuildError(f"{peer.name}: pip install {' '.join(reqs)} failed:\n{(res.stderr or res.stdout)[-1500:]}")
    stamp.write_text(key + "\n")
    return venv
