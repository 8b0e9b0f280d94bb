"""slipway.settings: every SLIPWAY_* variable the CLI reads is a field, read once, documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from slipway import settings
from slipway.cli import main
from slipway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "scripts" / "slipway"
DOC = ROOT / "docs" / "settings.md"

# Named in the package, but not read by it: set for the wheel tools slipway runs in cibuildwheel's
# containers, printed by `slipway services env`, the bench worker's output marker, a constant's
# name, and the service's own knobs (serving/config.py, read inside the images).
NOT_READ = {"SLIPWAY_MODEL_DIR", "SLIPWAY_MAX_SIZE_MIB", "SLIPWAY_DOCKER", "SLIPWAY_BENCH_RESULT", "SLIPWAY_NAMES",
            "SLIPWAY_WORKERS", "SLIPWAY_SLOTS", "SLIPWAY_THREADS", "SLIPWAY_BATCH_MAX", "SLIPWAY_BATCH_DELAY_MS"}


def test_the_documentation_is_generated_from_the_model():
    assert DOC.read_text() == settings.markdown(), (
        "docs/settings.md is stale: run 'python -m slipway.settings > docs/settings.md'"
    )


def test_every_variable_the_package_names_is_a_setting():
    named = set()
    for path in PACKAGE.rglob("*.py"):
        named |= set(re.findall(r"\bSLIPWAY_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    fields = {settings.PREFIX + name.upper() for name in settings.Settings.model_fields}
    assert named - NOT_READ <= fields, sorted(named - NOT_READ - fields)
    # And every field has a description (the documentation's only source).
    assert all(info.description for info in settings.Settings.model_fields.values())


def test_no_module_reads_a_slipway_variable_itself():
    """Only settings.py reads the environment for SLIPWAY_*."""
    readers = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "settings.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(environ|getenv)\b.*[\"']SLIPWAY_|SLIPWAY_\w*[\"']\s*\]?\s*.*environ\.get", line):
                readers.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert readers == []


def test_values_are_typed_and_read_once(monkeypatch):
    monkeypatch.setenv("SLIPWAY_BENCH_CONCURRENCY", "1,4")
    monkeypatch.setenv("SLIPWAY_NO_GPU", "1")
    monkeypatch.setenv("SLIPWAY_REGISTRY_PASSWORD", "hunter2")
    monkeypatch.setenv("SLIPWAY_IMAGE_REGISTRY", "")
    first = settings.get_settings()
    assert first.bench_concurrency == (1, 4) and first.no_gpu is True and first.image_registry is None
    assert "hunter2" not in repr(first) and first.registry_password.get_secret_value() == "hunter2"
    assert settings.get_settings() is first  # parsed once for one environment
    monkeypatch.setenv("SLIPWAY_NO_GPU", "0")
    assert settings.get_settings().no_gpu is False  # a changed variable is read again
    settings.reset_settings()
    assert settings.get_settings() is not first


def test_every_wrong_value_is_one_configuration_error(monkeypatch):
    monkeypatch.setenv("SLIPWAY_BUILD_CACHE_GB", "lots")
    monkeypatch.setenv("SLIPWAY_TFSERVING", "docker")
    monkeypatch.setenv("SLIPWAY_BENCH_CONCURRENCY", "1,x")
    with pytest.raises(ConfigError) as err:
        settings.get_settings()
    text = str(err.value)
    assert "3 configuration problem(s)" in text
    assert "SLIPWAY_BUILD_CACHE_GB = 'lots'" in text
    assert "SLIPWAY_TFSERVING = 'docker': Input should be 'auto', 'image' or 'stub'" in text
    assert "SLIPWAY_BENCH_CONCURRENCY = '1,x': expected client counts like 1,8" in text


def test_the_command_stops_with_exit_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("SLIPWAY_BENCH_RUNS", "many")
    assert main(["plan"]) == 2
    err = capsys.readouterr().err
    assert "SLIPWAY_BENCH_RUNS = 'many'" in err and "Traceback" not in err


def test_no_import_reads_the_environment():
    """Importing every module of the package with a wrong variable set does not fail: settings are
    read when used, never at import."""
    code = (
        "import importlib, pkgutil, slipway, slipway.stages, slipway.benchmark\n"
        "for pkg in (slipway, slipway.stages, slipway.benchmark):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        if m.name not in ('worker', 'tfserving_standin'):\n"
        "            importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
    )
    env = {"SLIPWAY_REGISTRY_ADDR": "x", "SLIPWAY_BUILD_CACHE_GB": "lots", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
