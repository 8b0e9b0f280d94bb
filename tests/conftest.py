"""Shared fixtures: the repository root, the local services, and the GPU skip.

Integration tests use the real Docker engine, registry and index that 'slipway services up'
starts ('make test' starts them first); nothing here is mocked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _has_gpu() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


HAS_GPU = _has_gpu()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU; runs on the GPU runner of _smoke.yml")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session", autouse=True)
def remove_pushed_repositories():
    """After the session, the registry repositories this session pushed to are deleted
    (tests/registry_cleanup.py); what the registry held before the session is left alone."""
    import registry_cleanup

    from slipway import services

    before = registry_cleanup.catalog(services.REGISTRY_ADDR)
    yield
    if registry_cleanup.PREFIXES:
        removed, problems = registry_cleanup.clean(services.REGISTRY_ADDR, before)
        for line in problems:
            print(f"could not remove a test repository from the registry: {line}", file=sys.stderr)
        if removed:
            print(f"removed {len(removed)} test repositories from {services.REGISTRY_ADDR}", file=sys.stderr)


@pytest.fixture(scope="session")
def local_services():
    """The Docker engine, registry and index, started if needed (and left for 'make test' to stop)."""
    from slipway import services

    services.up()
    env = services.docker_env()
    if "DOCKER_HOST" in env:
        os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]
    return services.status()


# Slipway built and installed into a fresh venv (tests/installed.py); the C++ runtime wheels
# (tests/native_fixtures.py), for test_native.py and test_serving_backends.py.
from installed import installed_slipway, slipway_dists  # noqa: E402
from native_fixtures import native_wheels, sc_python  # noqa: E402

# The pytorch-cpu and onnx-cpu images of the service (tests/service_images.py), built once for
# test_serving_hostile.py and test_serving_oip.py.
from service_images import service_images  # noqa: E402

__all__ = ["installed_slipway", "native_wheels", "sc_python", "service_images", "slipway_dists"]
