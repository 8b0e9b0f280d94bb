"""Shared fixtures: the repository root, the local services, and the GPU skip.

Integration tests use the real Docker engine, registry and index that 'slipway services up'
starts ('make test' starts them first); nothing here is mocked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _has_gpu() -> bool:
    # The probe slipway itself uses (SLIPWAY_NO_GPU=1 makes a GPU machine run as one without).
    from slipway import engine

    return engine.has_gpu()


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


@pytest.fixture(scope="session", autouse=True)
def remove_session_images():
    """After the session, the local images this session named (tests/image_cleanup.py) are removed;
    every other image in the engine is left alone."""
    import image_cleanup

    yield
    removed, problems = image_cleanup.remove_owned()
    for line in problems:
        print(f"could not remove a test image: {line}", file=sys.stderr)
    if removed:
        print(f"removed {len(removed)} local test image reference(s)", file=sys.stderr)


@pytest.fixture(scope="session")
def local_services():
    """The Docker engine, registry and index, started if needed (and left for 'make test' to stop)."""
    from slipway import engine, services

    services.up()
    host = engine.docker_host()
    if host:
        os.environ["DOCKER_HOST"] = host
    return services.status()


# Slipway built and installed into a fresh venv (tests/installed.py); the C++ runtime wheels
# (tests/native_fixtures.py), for test_native.py and test_serving_backends.py.
from installed import installed_slipway, slipway_dists  # noqa: E402
from native_fixtures import native_wheels, sc_python  # noqa: E402

# The pytorch-cpu and onnx-cpu images of the service (tests/service_images.py), built once for
# test_serving_hostile.py and test_serving_oip.py.
from service_images import service_images  # noqa: E402

__all__ = ["installed_slipway", "native_wheels", "sc_python", "service_images", "slipway_dists"]
