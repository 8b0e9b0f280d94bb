"""Where Slipway's own files are: the Dockerfiles, the service, the shared pre/postprocessing, the
C++ runtime's sources and the requirements files. The only module that knows.

Installed from the wheel, they are package data found through ``importlib.resources``:
``slipway/_resources/`` holds ``dockerfiles/``, ``native/`` and ``requirements*.txt``, and
``serving`` and ``model_export`` are packages of their own. From an editable checkout they are the
repository's top-level folders. Nothing here looks at the current directory.

A project that releases with Slipway keeps its own release.toml, model code and weights; it may
bring its own Dockerfile (a path beside its release.toml wins over Slipway's of the same name).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from slipway.errors import BuildError

# Top-level names of Slipway's resources, as a release.toml names them (dockerfiles/pytorch.Dockerfile).
DATA = ("dockerfiles", "native", "requirements.txt", "requirements-pytorch.txt", "requirements-tensorflow.txt")
PACKAGES = ("serving", "model_export")
RESOURCES = (*DATA, *PACKAGES)


def _package_dir(name: str) -> Path:
    return Path(str(importlib.resources.files(name)))


def data_root() -> Path:
    """The folder that holds ``dockerfiles/``, ``native/`` and the requirements files."""
    installed = _package_dir("slipway") / "_resources"
    if installed.is_dir():
        return installed
    # An editable install from a checkout: the package lives at <checkout>/scripts/slipway.
    checkout = _package_dir("slipway").parent.parent
    if (checkout / "dockerfiles").is_dir():
        return checkout
    raise BuildError(
        f"Slipway's resources are missing: neither {installed} (an installed wheel) nor "
        f"{checkout / 'dockerfiles'} (a checkout) exists; reinstall slipway"
    )


def resource(name: str) -> Path:
    """One of Slipway's resources by its top-level name (``RESOURCES``); BuildError if missing."""
    if name in PACKAGES:
        path = _package_dir(name)
    elif name in DATA:
        path = data_root() / name
    else:
        raise KeyError(f"{name!r} is not one of Slipway's resources ({', '.join(RESOURCES)})")
    if not path.exists():
        raise BuildError(f"Slipway's {name} is missing at {path}; reinstall slipway")
    return path


def own(relative: str | Path) -> Path | None:
    """``relative`` (e.g. ``dockerfiles/pytorch.Dockerfile``) inside Slipway's resources, if it exists."""
    rel = Path(relative)
    if rel.is_absolute() or not rel.parts or rel.parts[0] not in RESOURCES:
        return None
    try:
        path = resource(rel.parts[0]).joinpath(*rel.parts[1:])
    except BuildError:
        return None
    return path if path.exists() else None


def resolve(relative: str | Path, *roots: Path) -> Path | None:
    """The first existing ``root / relative`` for the given (project) roots, then Slipway's own."""
    rel = Path(relative)
    if rel.is_absolute():
        return rel if rel.exists() else None
    for root in roots:
        candidate = root / rel
        if candidate.exists():
            return candidate
    return own(rel)
