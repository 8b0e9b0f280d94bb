"""Local services: idempotent start, PID files that survive PID reuse, the base image."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
import registry_cleanup
from test_smoke_fixtures import run_id

from slipway import engine, services
from slipway.errors import ConfigError
from slipway.services import PidFile

pytestmark = pytest.mark.docker


def test_stale_pid_file_is_detected(tmp_path):
    pidfile = PidFile(tmp_path / "x.pid")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pidfile.write(proc.pid)
    assert pidfile.read() is None  # the process is gone
    assert not pidfile.path.exists()
    # A live PID whose start time differs (PID reused by another process) is stale too.
    pidfile.path.write_text(json.dumps({"pid": os.getpid(), "start": "1"}))
    assert pidfile.read() is None
    pidfile.write(os.getpid())
    assert pidfile.read() == os.getpid()
    pidfile.path.write_text("12345")  # not ours: a bare PID written by something else
    assert pidfile.read() is None


def test_up_is_idempotent_and_services_answer(local_services):
    again = services.up()
    assert all(state.startswith("running") for state in again.values()), again
    assert httpx.get("http://127.0.0.1:5000/v2/", timeout=5).status_code == 200
    assert httpx.get(f"http://{services.INDEX_ADDR}/simple/", timeout=5).status_code == 200
    assert services.docker_reachable()


def test_engine_started_here_collects_its_build_cache(local_services):
    """An engine slipway started keeps BuildKit's cache bounded (the engine reads daemon.json)."""
    config = services.state_dir() / "docker" / "daemon.json"
    if services.PidFile(services.state_dir() / "docker" / "dockerd.slipway.pid").read() is None:
        pytest.skip("the engine in use was not started by slipway (its configuration is not ours)")
    gc = json.loads(config.read_text())["builder"]["gc"]
    assert gc["enabled"] is True and gc["defaultKeepStorage"].endswith("GB")
    assert engine.client().info()["ServerVersion"]


def test_bad_build_cache_size_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIPWAY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SLIPWAY_BUILD_CACHE_GB", "lots")
    monkeypatch.setattr(services, "docker_reachable", lambda: False)
    with pytest.raises(ConfigError, match="SLIPWAY_BUILD_CACHE_GB = 'lots'"):
        services.ensure_docker(log=lambda _m: None)
    monkeypatch.setenv("SLIPWAY_BUILD_CACHE_GB", "0")
    with pytest.raises(ConfigError, match="SLIPWAY_BUILD_CACHE_GB = '0': Input should be greater than or equal to 1"):
        services.ensure_docker(log=lambda _m: None)


def test_mounts_the_engine_leaves_are_found_deepest_first(tmp_path):
    root = tmp_path / "state dir" / "docker"
    mounts = "\n".join([
        "proc /proc proc rw 0 0",
        f"nsfs {str(root).replace(' ', chr(92) + '040')}/exec/netns/default nsfs rw 0 0",
        f"overlay {str(root).replace(' ', chr(92) + '040')}/data/overlay2/abc/merged overlay rw 0 0",
        f"tmpfs {str(root).replace(' ', chr(92) + '040')}-other/x tmpfs rw 0 0",  # a sibling, not below root
        f"tmpfs {str(root).replace(' ', chr(92) + '040')}/exec tmpfs rw 0 0",
    ])
    assert services.mounts_under(root, mounts) == [
        f"{root}/data/overlay2/abc/merged", f"{root}/exec/netns/default", f"{root}/exec",
    ]


def test_registry_listens_on_loopback_only(local_services):
    config = (services.state_dir() / "registry" / "config.yml").read_text()
    assert "addr: 127.0.0.1:" in config


def test_local_base_image_has_python(local_services):
    from slipway.baseimage import resolve_base_image

    base = resolve_base_image("python:3.11-slim-bookworm")
    res = engine.run(base, ["python3", "-c", "import sys, venv; print(sys.version_info[:2])"], timeout=120)
    assert res.stdout.strip() == "(3, 11)"


FAKE_DOCKER = """#!/bin/sh
# A newer docker client without the buildx plugin, first on PATH (as on a fresh machine). It
# talks to an engine like any client (here by handing the command to the host's client), but only
# once one runs: with no DOCKER_HOST there is none yet. It builds only with the classic builder.
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  --version) echo "Docker version 28.2.2, build fake"; exit 0 ;;
  buildx) echo "docker: unknown command: docker buildx" >&2; exit 1 ;;
esac
if [ -z "$DOCKER_HOST" ]; then
  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
  exit 1
fi
if [ "$1" = build ] && [ "$DOCKER_BUILDKIT" != 0 ]; then
  echo "ERROR: BuildKit is enabled but the buildx component is missing or broken." >&2
  exit 1
fi
exec "$HOST_DOCKER" "$@"
"""

FRESH_MACHINE = """
import os, pathlib, subprocess, sys
from slipway import engine, services
ctx, installed, host_docker, host_dockerd = map(pathlib.Path, sys.argv[1:5])
# Debian's docker.io is not installed: its folder holds no client and no engine yet.
services.DOCKER_BIN_DIRS = (str(installed),)

def apt_install(packages, log):
    # What `apt-get install docker.io` does, without touching the host: docker and dockerd appear
    # in the folder Debian installs them to.
    assert packages == ["docker.io"], packages
    (installed / "docker").symlink_to(host_docker)
    (installed / "dockerd").symlink_to(host_dockerd)
    log("installed docker.io")

services._apt_install = apt_install
first = engine.cli_path()
services.up(["docker"])
client = engine.cli_path()
res = engine.cli("build", "-t", "swt-fresh:1", str(ctx), check=False, timeout=300)
print(f"first={first}\\nclient={client}\\nbuildkit={engine.docker_env()['DOCKER_BUILDKIT']}\\nbuild={res.returncode}")
print(res.stderr[-2000:], file=sys.stderr)
"""


def _host_docker() -> tuple[str, str] | None:
    """The host's docker client that builds (Debian's docker.io, say) and its dockerd."""
    def builds(client: str) -> bool:  # the buildx plugin, or a client older than 23.0
        if subprocess.run([client, "buildx", "version"], capture_output=True).returncode == 0:
            return True
        version = subprocess.run([client, "--version"], capture_output=True, text=True).stdout
        major = version.split("version", 1)[-1].strip().split(".")[0]
        return major.isdigit() and int(major) < 23

    client = next((c for c in services.installed("docker") if builds(c)), None)
    dockerd = next(iter(services.installed("dockerd")), None)
    return (client, dockerd) if client and dockerd else None


def _path_without(names: set[str], folder: Path) -> str:
    """A folder with a link to every program on PATH except ``names``: the host's tools without
    its docker, nothing removed from the host."""
    folder.mkdir()
    for directory in [*os.environ["PATH"].split(os.pathsep), *services.DOCKER_BIN_DIRS]:
        if not directory or not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = folder / entry.name
            if entry.name in names or target.exists() or target.is_symlink():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                target.symlink_to(os.path.realpath(entry.path))
    return str(folder)


@pytest.mark.slow
def test_fresh_machine_chooses_a_client_that_builds(tmp_path):
    """A fresh machine: a newer docker client without buildx first on PATH, Debian's docker.io not
    installed, no engine. `services up` installs docker.io (here: its client and engine appear in
    the folder apt would put them in) and starts the engine; the build after it must use the
    client that install added. A choice made before the install (the client without buildx) fails
    the build with "BuildKit is enabled but the buildx component is missing"."""
    host = _host_docker()
    if os.geteuid() != 0 or host is None:
        pytest.skip("starts a second dockerd from the host's docker.io: needs root and Debian's docker.io")
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "docker").write_text(FAKE_DOCKER)
    (fake_bin / "docker").chmod(0o755)
    installed = tmp_path / "installed"
    installed.mkdir()
    tools = _path_without({"docker", "dockerd"}, tmp_path / "tools")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    # Short: dockerd's socket path must stay under the Unix socket limit (108 bytes).
    state = Path(tempfile.mkdtemp(prefix="swt-state-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_BUILDKIT")}
    env.update(SLIPWAY_STATE_DIR=str(state), FAKE_DOCKER_LOG=str(tmp_path / "fake.log"), HOST_DOCKER=host[0],
               PATH=os.pathsep.join([str(fake_bin), tools, str(installed)]))
    args = [sys.executable, "-c", FRESH_MACHINE, str(ctx), str(installed), *host]
    try:
        res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        out = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        # Before the install, the client without buildx was the only one.
        assert out["first"] == str(fake_bin / "docker"), res.stdout
        assert "installed docker.io" in res.stderr, res.stderr
        assert out["client"] == str(installed / "docker"), res.stdout
        assert out["build"] == "0", res.stdout + res.stderr
        # The client without buildx was asked, and never used for the build.
        calls = (tmp_path / "fake.log").read_text().splitlines()
        assert "buildx version" in calls and not any(c.startswith("build ") for c in calls), calls
    finally:
        down = "from slipway import services; services.DOCKER_BIN_DIRS = (sys.argv[1],); services.down(['docker'])"
        subprocess.run([sys.executable, "-c", "import sys; " + down, str(installed)], env=env,
                       capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# make test leaves the registry as it found it


def _push_tiny(addr: str, repository: str, reference: str | None, manifest: dict | None = None) -> dict:
    """Push a small OCI image (or the index ``manifest``) by the registry API, tagged ``reference``
    or (None) by digest only; returns its descriptor (digest, size)."""
    def blob(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = httpx.post(f"http://{addr}/v2/{repository}/blobs/uploads/", timeout=30)
        assert start.status_code == 202, start.text
        location = start.headers["location"]
        location = location if location.startswith("http") else f"http://{addr}{location}"
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        done = httpx.put(location, content=data, timeout=30,
                         headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return {"digest": digest, "size": len(data)}

    if manifest is None:
        config = blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                  "diff_ids": []}, "note": f"{repository} {reference}"}).encode())
        layer = blob(f"{repository} {reference} {uuid.uuid4()}".encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}
    body = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    res = httpx.put(f"http://{addr}/v2/{repository}/manifests/{reference or digest}", content=body, timeout=30,
                    headers={"Content-Type": manifest["mediaType"]})
    assert res.status_code == 201, res.text
    return {"digest": digest, "size": len(body)}


def _manifest_status(addr: str, repository: str, reference: str) -> int:
    accept = ", ".join(registry_cleanup.MANIFEST_TYPES)
    return httpx.get(f"http://{addr}/v2/{repository}/manifests/{reference}", timeout=10,
                     headers={"Accept": accept}).status_code


def test_push_for_the_session_check():
    """Run by the next test as a test session of its own: pushes an image and a two-platform index
    under a prefix it registers, and leaves them for the session's end to remove."""
    prefix = os.environ.get("SWT_SESSION_PREFIX")
    if not prefix:
        pytest.skip("a step of test_a_test_session_removes_what_it_pushed")
    addr = services.REGISTRY_ADDR
    registry_cleanup.pushes_to(f"{addr}/{prefix}")
    _push_tiny(addr, f"{prefix}/pushed", "1")
    # A two-platform index: only the index is tagged, its platforms must go with it.
    platforms = {arch: _push_tiny(addr, f"{prefix}/index", None) for arch in ("amd64", "arm64")}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **descriptor,
         "platform": {"architecture": arch, "os": "linux"}} for arch, descriptor in platforms.items()]}
    _push_tiny(addr, f"{prefix}/index", "1", index)
    Path(os.environ["SWT_SESSION_RECORD"]).write_text(json.dumps([d["digest"] for d in platforms.values()]))


def test_a_test_session_removes_what_it_pushed(local_services, repo_root, tmp_path):
    """A pytest session (the repository's conftest) pushes under a prefix of its own; when it ends,
    those repositories are gone, platforms of an index included, and a repository under the same
    prefix that existed before the session still holds its tag."""
    addr = services.REGISTRY_ADDR
    prefix = run_id()
    existing = f"{prefix}/existing"
    try:
        _push_tiny(addr, existing, "1")
        record = tmp_path / "platforms.json"
        env = {**os.environ, "SWT_SESSION_PREFIX": prefix, "SWT_SESSION_RECORD": str(record)}
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_services.py::test_push_for_the_session_check"],
            cwd=repo_root, env=env, capture_output=True, text=True, timeout=300,
        )
        assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout + res.stderr
        platforms = json.loads(record.read_text())
        assert len(platforms) == 2
        for repository, reference in [(f"{prefix}/pushed", "1"), (f"{prefix}/index", "1"),
                                      *((f"{prefix}/index", d) for d in platforms)]:
            assert _manifest_status(addr, repository, reference) == 404, (repository, reference)
        assert _manifest_status(addr, existing, "1") == 200
        catalog = registry_cleanup.catalog(addr) or set()
        assert existing in catalog
        if registry_cleanup._data_root(addr) is not None:
            # slipway's own registry: the emptied repositories are out of the catalog too.
            assert not {f"{prefix}/pushed", f"{prefix}/index"} & catalog, sorted(catalog)
    finally:
        registry_cleanup.remove(addr, [existing, f"{prefix}/pushed", f"{prefix}/index"])
