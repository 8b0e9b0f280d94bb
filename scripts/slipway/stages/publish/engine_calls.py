"""The Docker engine calls of a local publish, each one line, in one place."""

from __future__ import annotations

import json
from typing import Any

from slipway import services


def inspect_image(ref: str) -> dict[str, Any] | None:
    """``docker image inspect`` of one image, or None when the engine does not hold it."""
    res = services.docker("image", "inspect", ref, check=False, timeout=60)
    return json.loads(res.stdout)[0] if res.returncode == 0 else None


def tag_image(source: str, ref: str) -> None:
    services.docker("tag", source, ref, timeout=60)


def push_image(ref: str) -> str | None:
    """Push ``ref``; None when it went through, else what the engine said (to show, never to parse)."""
    res = services.docker("push", ref, check=False, timeout=3600)
    return None if res.returncode == 0 else (res.stderr or res.stdout or "").strip() or "docker push failed"
