"""The C++ runtime wheels as session fixtures, shared by test_native.py and test_serving_backends.py.

conftest.py imports the fixtures from here; the tests import the helpers. The wheels are built
with the wheels stage's own functions into build/native-test-cache/<hash of the sources>, so an
unchanged tree reuses them (a fresh build takes a few minutes). A build that fails fails the
tests that need it: nothing here skips.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import slipway

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
CACHE = ROOT / "build" / "native-test-cache"
# The runtime's wheels always carry Slipway's own version (a model package depends on it by that).
TEST_VERSION = slipway.__version__


def _log(message: str) -> None:
    print(f"[native tests] {message}", file=sys.__stderr__, flush=True)


def _env(pythonpath: Path | str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def run_python(python: Path | str, code: str, *, pythonpath: Path | str | None = None, cwd: Path | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", textwrap.dedent(code)], env=_env(pythonpath), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def last_json(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def native_wheels() -> dict[str, Path]:
    """Both wheels, built with the wheels stage's functions; reused while native/ is unchanged."""
    from slipway.stages import wheels

    key = wheels.source_fingerprint(NATIVE, {
        "torch": importlib.metadata.version("torch"), "python": sys.version, "version": TEST_VERSION,
    })[:16]
    folder = CACHE / key
    index = folder / "built.json"
    if index.is_file():
        built = json.loads(index.read_text())
        if all((folder / name).is_file() for name in built.values()):
            _log(f"reusing the wheels in {folder}")
            return {kind: folder / name for kind, name in built.items()}
    _log("building both wheels (a few minutes; reused afterwards while native/ is unchanged)")
    if CACHE.exists():
        for old in CACHE.iterdir():
            if old.name not in ("src", "cmake"):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    staging = folder.with_name(folder.name + ".tmp")
    src = wheels.stage_sources(NATIVE, CACHE / "src", TEST_VERSION)
    made = wheels.build_local(src, staging, CACHE / "cmake", _log)
    (staging / "built.json").write_text(json.dumps({b.kind: b.path.name for b in made}))
    (staging / "repair.json").write_text(json.dumps({b.kind: b.repair for b in made}))
    staging.rename(folder)
    return {b.kind: folder / b.path.name for b in made}


@pytest.fixture(scope="session")
def sc_python(native_wheels, tmp_path_factory) -> Path:
    """A venv without torch with the self-contained wheel, its numpy extra and Pillow (for the checks)."""
    venv = tmp_path_factory.mktemp("venv") / "self-contained"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    f'{native_wheels["self-contained"]}[numpy]', "pillow"], check=True, env=_env())
    assert run_python(python, "import importlib.util; assert importlib.util.find_spec('torch') is None").returncode == 0
    return python
