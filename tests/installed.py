"""Slipway as a user gets it: the wheel and sdist built from this tree, the wheel installed into a
fresh virtualenv (not editable), as session fixtures.

- ``slipway_dists``: ``python -m build`` of the repository (the sdist, then the wheel built from
  that sdist, so a file missing from the sdist is missing from the wheel too).
- ``installed_slipway``: a new venv (no system site-packages, not this environment) with that wheel
  and its extras for a release (pytorch, serve, publish, bench, wheels), every package at the version
  this environment has (``pip freeze`` as constraints), so pip takes them from its cache.

Helpers run the installed ``slipway`` from any folder (``Installed.slipway``) with an environment
that has nothing of this checkout on it (no PYTHONPATH, cwd outside the repository).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a release needs on the host, besides Slipway itself (pyproject.toml's extras).
RELEASE_EXTRAS = "pytorch,tensorflow,serve,publish,bench,wheels"


def _log(message: str) -> None:
    print(f"[installed slipway] {message}", file=sys.__stderr__, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment less everything that would put this checkout or venv on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _run(cmd: list[str | Path], *, cwd: Path | None = None, timeout: float = 1800,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {res.returncode}:\n{res.stdout[-3000:]}\n"
                             f"{res.stderr[-3000:]}")
    return res


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def slipway(self, *args: str, cwd: Path, timeout: float = 3600, check: bool = False,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the installed ``slipway`` in ``cwd``, its venv's bin first on PATH."""
        run_env = clean_env(**(env or {}))
        run_env["PATH"] = os.pathsep.join([str(self.bin), run_env.get("PATH", "")])
        res = subprocess.run([str(self.bin / "slipway"), *args], cwd=cwd, env=run_env, capture_output=True,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"slipway {' '.join(args)} exited {res.returncode}:\n{res.stdout[-4000:]}\n"
                                 f"{res.stderr[-4000:]}")
        return res


@pytest.fixture(scope="session")
def slipway_dists(tmp_path_factory) -> dict[str, Path]:
    """{"wheel": ..., "sdist": ...} built from this tree by ``python -m build``."""
    out = tmp_path_factory.mktemp("slipway-dists")
    _log(f"building Slipway's sdist and wheel into {out}")
    # --no-isolation: hatchling comes with the dev extras, so the build needs no index.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], timeout=600)
    wheels, sdists = sorted(out.glob("slipway-*.whl")), sorted(out.glob("slipway-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="session")
def installed_slipway(slipway_dists, tmp_path_factory) -> Installed:
    """Slipway's wheel, with the extras a release needs, in a fresh venv (a minute or two, pip's cache)."""
    root = tmp_path_factory.mktemp("slipway-installed")
    venv = root / "venv"
    _log(f"installing {slipway_dists['wheel'].name} into a fresh venv at {venv}")
    _run([sys.executable, "-m", "venv", venv])
    # This environment's versions as constraints: the same torch, onnx, onnxruntime, ... from pip's cache.
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"])
    constraints = root / "constraints.txt"
    constraints.write_text("\n".join(line for line in frozen.stdout.splitlines()
                                     if "==" in line and not line.lower().startswith("slipway")) + "\n")
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "-c", constraints]
    torch = next((line.split("==", 1)[1] for line in constraints.read_text().splitlines()
                  if line.lower().startswith("torch==")), None)
    if torch:
        _run([*pip, f"torch=={torch}"])  # first and alone: the CPU build, never the CUDA one from PyPI
    _run([*pip, f"{slipway_dists['wheel']}[{RELEASE_EXTRAS}]"])
    installed = Installed(venv=venv, wheel=slipway_dists["wheel"])
    where = _run([installed.python, "-c", "import slipway, sys; print(slipway.__file__)"], cwd=root).stdout.strip()
    assert where.startswith(str(venv)), f"slipway imported from {where}, not from the fresh venv"
    return installed
