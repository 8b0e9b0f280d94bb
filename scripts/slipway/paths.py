"""Where Slipway's own files are: the service, the shared pre/postprocessing, the Dockerfiles.

A project that releases with Slipway keeps its own release.toml, model code and weights; the
service and Dockerfiles come from Slipway unless the project brings its own.
"""

from __future__ import annotations

from pathlib import Path


def source_root() -> Path:
    """The folder holding serving/, model_export/, dockerfiles/ and the requirements files."""
    import slipway

    # Installed from a checkout (editable), the package lives at <root>/scripts/slipway.
    return Path(slipway.__file__).resolve().parent.parent.parent


def resolve(relative: str | Path, *roots: Path) -> Path | None:
    """The first existing ``root / relative``, trying the given roots, then Slipway's own."""
    rel = Path(relative)
    if rel.is_absolute():
        return rel if rel.exists() else None
    for root in (*roots, source_root()):
        candidate = root / rel
        if candidate.exists():
            return candidate
    return None
