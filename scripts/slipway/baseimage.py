"""The base image every variant builds FROM.

The Dockerfiles default to the official slim Python image. Where it cannot be pulled (no
registry reachable), slipway builds an equivalent from Debian packages with debootstrap,
imports it as ``localhost/slipway/python:3.11-bookworm`` and caches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from slipway import engine
from slipway.errors import ServiceError, SlipwayError
from slipway.services import Log, _apt_install, _stderr, state_dir
from slipway.settings import get_settings

LOCAL_BASE = "localhost/slipway/python:3.11-bookworm"
SUITE = "bookworm"
PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# Label that marks a base (and every image built on it) as carrying this host's CA certificates:
# such images are for local use only, and publish refuses to send them anywhere else.
HOST_CA_LABEL = "io.slipway.host-ca-certificates"
# Trimmed after debootstrap: nothing a Python service reads at run time.
TRIM = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/log",
)


def image_exists(ref: str) -> bool:
    return engine.image_exists(ref)


def try_pull(ref: str, log: Log, timeout: float = 60) -> bool:
    log(f"pulling {ref}")
    try:
        engine.pull(ref, timeout=timeout)
    except SlipwayError as exc:
        log(f"cannot pull {ref}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else 'failed'}")
        return False
    return True


def host_ca_certs() -> list[Path]:
    if not HOST_CA_DIR.is_dir():
        return []
    return sorted(p for p in HOST_CA_DIR.rglob("*.crt") if p.is_file())


def _debian_mirror() -> str:
    """The host's own Debian mirror, so a machine behind a mirror or proxy uses the same one."""
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in source.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def build_local_base(tag: str = LOCAL_BASE, *, with_host_ca: bool, log: Log = _stderr) -> str:
    """debootstrap a minimal bookworm with Python, trim it, import it into the engine."""
    if os.geteuid() != 0:
        raise ServiceError(
            "the base image cannot be pulled and building one with debootstrap needs root; "
            "pull it elsewhere and 'docker load' it, or pass --base-image"
        )
    if not shutil.which("debootstrap"):
        _apt_install(["debootstrap"], log)
    cache = state_dir() / "base"
    cache.mkdir(parents=True, exist_ok=True)
    certs = host_ca_certs() if with_host_ca else []
    tarball = cache / f"python-3.11-{SUITE}{'-hostca' if certs else ''}.tar"
    if not tarball.exists():
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            rootfs = Path(tmp) / "rootfs"
            mirror = _debian_mirror()
            log(f"building the local base image from Debian packages ({SUITE}, {mirror}); about 2 minutes")
            cmd = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(rootfs), mirror]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise ServiceError(f"debootstrap failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
            for rel in TRIM:
                target = rootfs / rel
                if target.is_dir():
                    shutil.rmtree(target)
                    target.mkdir(parents=True)
            for pyc in rootfs.glob("usr/lib/python3*/**/__pycache__"):
                shutil.rmtree(pyc, ignore_errors=True)
            if certs:
                dest = rootfs / "usr/local/share/ca-certificates"
                dest.mkdir(parents=True, exist_ok=True)
                for cert in certs:
                    shutil.copy2(cert, dest / cert.name)
                subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True)
                log(f"added {len(certs)} host CA certificate(s) to the local base (local use only)")
            partial = tarball.with_suffix(".partial")
            with tarfile.open(partial, "w") as tar:
                tar.add(rootfs, arcname=".")
            partial.replace(tarball)
        log(f"local base rootfs ready in {time.monotonic() - started:.0f}s")
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        "ENV PYTHONDONTWRITEBYTECODE=1",
        'CMD ["python3"]',
        'LABEL org.opencontainers.image.title="slipway-local-python-base"',
        f'LABEL org.opencontainers.image.description="Debian {SUITE} with Python 3.11, built by slipway"',
    ]
    if certs:
        changes.append(f"LABEL {HOST_CA_LABEL}=true")
    engine.import_tar(tarball, tag, changes=changes)
    log(f"imported {tag}")
    return tag


def resolve_base_image(requested: str, *, host_ca: str = "auto", log: Log = _stderr) -> str:
    """The image to pass as BASE_IMAGE: the requested one if present or pullable, else the local base.

    ``host_ca``: ``auto`` adds the host's extra CA certificates to the local base when there are
    any (needed where outgoing HTTPS is intercepted by a proxy); ``yes`` requires them; ``no`` never.
    """
    if image_exists(requested):
        return requested
    if not get_settings().no_pull and try_pull(requested, log):
        return requested
    with_ca = host_ca == "yes" or (host_ca == "auto" and bool(host_ca_certs()))
    if host_ca == "yes" and not host_ca_certs():
        raise ServiceError(f"--host-ca-certs=yes but {HOST_CA_DIR} holds no .crt files")
    if image_exists(LOCAL_BASE):
        return LOCAL_BASE
    return build_local_base(LOCAL_BASE, with_host_ca=with_ca, log=log)
