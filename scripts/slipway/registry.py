"""Talking to an OCI registry and a package index over HTTP: what is already there, by digest."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

T = TypeVar("T")


class Transient(Exception):
    """A failure worth retrying: connection refused or reset, a 5xx answer."""


def retry(fn: Callable[[], T], *, what: str, attempts: int = 5, base: float = 1.0,
          log: Callable[[str], None] | None = None) -> T:
    """Call ``fn`` until it succeeds; retry only ``Transient`` errors, with jittered backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Transient as exc:
            if attempt == attempts:
                raise
            delay = base * 2 ** (attempt - 1) * (0.5 + random.random())
            if log:
                log(f"{what}: {exc}; retrying in {delay:.1f}s (attempt {attempt + 1}/{attempts})")
            time.sleep(delay)
    raise AssertionError("unreachable")


def split_ref(image: str) -> tuple[str, str]:
    """``127.0.0.1:5000/slipway/name`` -> (``127.0.0.1:5000``, ``slipway/name``)."""
    host, _, repo = image.partition("/")
    return host, repo


def _scheme(host: str) -> str:
    # Loopback registries speak plain HTTP, as docker itself assumes for 127.0.0.0/8.
    return "http" if host.startswith(("127.", "localhost")) else "https"


def is_loopback(image: str) -> bool:
    return split_ref(image)[0].split(":")[0] in ("127.0.0.1", "localhost", "::1")


def manifest(image: str, tag: str) -> dict[str, Any] | None:
    """The manifest of ``image:tag`` with its digest, or None when the tag does not exist."""
    host, repo = split_ref(image)
    url = f"{_scheme(host)}://{host}/v2/{repo}/manifests/{tag}"
    try:
        r = httpx.get(url, headers={"Accept": MANIFEST_TYPES}, timeout=15)
    except httpx.TransportError as exc:
        raise Transient(f"{type(exc).__name__} from {host}") from exc
    if r.status_code == 404:
        return None
    if r.status_code >= 500:
        raise Transient(f"{host} answered {r.status_code}")
    r.raise_for_status()
    body = r.json()
    return {"digest": r.headers.get("Docker-Content-Digest", ""), "config": (body.get("config") or {}).get("digest"),
            "body": body}


def tags(image: str) -> list[str]:
    host, repo = split_ref(image)
    try:
        r = httpx.get(f"{_scheme(host)}://{host}/v2/{repo}/tags/list", timeout=15)
    except httpx.TransportError as exc:
        raise Transient(f"{type(exc).__name__} from {host}") from exc
    if r.status_code == 404:
        return []
    if r.status_code >= 500:
        raise Transient(f"{host} answered {r.status_code}")
    r.raise_for_status()
    return sorted(r.json().get("tags") or [])
