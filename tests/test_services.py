"""Local services: idempotent start, PID files that survive PID reuse, the base image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from slipway import services
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
    res = services.docker("info", "--format", "{{json .}}")
    assert res.returncode == 0, res.stderr


def test_bad_build_cache_size_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIPWAY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SLIPWAY_BUILD_CACHE_GB", "lots")
    monkeypatch.setattr(services, "docker_reachable", lambda: False)
    with pytest.raises(services.ServiceError, match="SLIPWAY_BUILD_CACHE_GB='lots'"):
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
    res = services.docker(
        "run",
        "--rm",
        "--network",
        "none",
        base,
        "python3",
        "-c",
        "import sys, venv; print(sys.version_info[:2])",
        timeout=120,
    )
    assert res.stdout.strip() == "(3, 11)"


FAKE_DOCKER = """#!/bin/sh
# A newer docker client without the buildx plugin, first on PATH (as on a fresh machine).
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  --version) echo "Docker version 28.2.2, build fake"; exit 0 ;;
  buildx) echo "docker: unknown command: docker buildx" >&2; exit 1 ;;
  *) echo "ERROR: BuildKit is enabled but the buildx component is missing or broken." >&2; exit 1 ;;
esac
"""

FRESH_MACHINE = """
import os, pathlib, subprocess, sys
from slipway import services
first = services.docker_cli()
services.up(["docker"])
client = services.docker_cli()
ctx = pathlib.Path(sys.argv[1])
res = services.docker("build", "-t", "swt-fresh:1", str(ctx), check=False, timeout=300)
print(f"first={first}\\nclient={client}\\nbuildkit={services.docker_env()['DOCKER_BUILDKIT']}\\nbuild={res.returncode}")
print(res.stderr[-2000:], file=sys.stderr)
"""


@pytest.mark.slow
def test_fresh_machine_chooses_a_client_that_builds(tmp_path):
    """A fresh machine: a newer docker client without buildx first on PATH, and no engine yet
    (an empty state folder, no DOCKER_HOST). `services up` starts an engine, and the build after
    it uses a client that can build; the client without buildx is looked at and passed over."""
    if os.geteuid() != 0 or not services._docker_clients():
        pytest.skip("starts a second dockerd: needs root and Debian's docker.io")
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "docker").write_text(FAKE_DOCKER)
    (fake_bin / "docker").chmod(0o755)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    # Short: dockerd's socket path must stay under the Unix socket limit (108 bytes).
    state = Path(tempfile.mkdtemp(prefix="swt-state-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_BUILDKIT")}
    env.update(SLIPWAY_STATE_DIR=str(state), FAKE_DOCKER_LOG=str(tmp_path / "fake.log"),
               PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    try:
        res = subprocess.run([sys.executable, "-c", FRESH_MACHINE, str(ctx)], env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        out = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        assert out["client"] != str(fake_bin / "docker"), res.stdout
        assert out["build"] == "0", res.stdout + res.stderr
        # The client without buildx was asked, and never used for the build.
        calls = (tmp_path / "fake.log").read_text().splitlines()
        assert "buildx version" in calls and not any(c.startswith("build ") for c in calls), calls
    finally:
        subprocess.run([sys.executable, "-c", "from slipway import services; services.down(['docker'])"],
                       env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
