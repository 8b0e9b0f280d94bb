"""The Docker engine calls of a local publish, each one line, in one place (through slipway.engine)."""

from __future__ import annotations

from typing import Any

from slipway import engine, registry


def inspect_image(ref: str) -> dict[str, Any] | None:
    """``docker image inspect`` of one image, or None when the engine does not hold it."""
    try:
        return engine.image_inspect(ref)
    except engine.ImageNotFound:
        return None


def tag_image(source: str, ref: str) -> None:
    engine.tag(source, ref)


def push_image(ref: str) -> str | None:
    """Push ``ref`` with the registry's credentials (``registry.credentials``; else what
    ``docker login`` stored); None when it went through.

    A failure another attempt may cure (the registry or the engine went away, a 5xx) raises
    ``engine.EngineTransient``, a ``registry.Transient``, for the caller's ``registry.retry``. A
    final refusal (``engine.PushError``, or ``engine.ImageNotFound`` for an image the engine does
    not hold) comes back as what the engine said: to show, never to parse.
    """
    host, _ = registry.split_ref(ref)
    try:
        engine.push(ref, auth=registry.credentials(host))
    except (engine.PushError, engine.ImageNotFound) as exc:
        return str(exc) or "docker push failed"
    return None
