"""Talking to an OCI registry and a package index over HTTP: what is already there, by digest.

The calls here read; pushing and uploading are done by ``docker push`` and ``twine``, and the
manifest PUT that tags a pushed digest on GitHub, in ``slipway.stages.publish``. Failures that another attempt may cure (connection refused or
reset, timeouts, 5xx answers) raise ``Transient`` (``slipway.errors.TransientError``) so callers can retry them with
``retry``; anything else (404 aside, which means "absent") is final: ``RegistryError`` with the
HTTP status and the registry's own message. Both are ``PublishError``s (exit 6).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from slipway.errors import RegistryError, TransientError

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

T = TypeVar("T")

# What the output of docker or twine says when the other end went away or choked; only these
# are retried. "denied", "unauthorized", "409 Conflict" and the like are answers, not accidents.
TRANSIENT_PATTERNS = re.compile(
    r"connection refused|connection reset|reset by peer|broken pipe|\bEOF\b|i/o timeout|timed? ?out|"
    r"temporary failure|no route to host|server closed|RemoteDisconnected|ConnectionError|"
    r"\b50[0234]\b|Internal Server Error|Bad Gateway|Service Unavailable|Gateway Time-?out",
    re.IGNORECASE,
)


# The errors are ``SlipwayError``s (exit 6, see slipway.errors); ``Transient`` is the name callers use.
Transient = TransientError


def answer(r: httpx.Response) -> str:
    """What a registry or index said, in its own words: the ``errors`` of an OCI/distribution error
    body (``CODE: message``), else the start of the body, else the status line."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        said = [
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
            for e in body["errors"]
            if isinstance(e, dict)
        ]
        if any(said):
            return "; ".join(s for s in said if s)
    text = r.text.strip()[:300]
    return text or f"{r.status_code} {r.reason_phrase}".strip()


def is_transient_text(text: str) -> bool:
    return bool(TRANSIENT_PATTERNS.search(text or ""))


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def retry(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int | None = None,
    base: float | None = None,
    cap: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds; retry only ``Transient`` errors, with jittered exponential backoff.

    Bounded: ``attempts`` calls in all (``SLIPWAY_RETRY_ATTEMPTS``, default 5), waiting about
    ``base`` (``SLIPWAY_RETRY_BASE_S``, default 1 s) doubled each time, at most ``cap``; the last
    ``Transient`` is re-raised.
    """
    attempts = attempts if attempts is not None else max(1, int(_env_number("SLIPWAY_RETRY_ATTEMPTS", 5)))
    base = base if base is not None else _env_number("SLIPWAY_RETRY_BASE_S", 1.0)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Transient as exc:
            if attempt == attempts:
                if log:
                    log(f"{what}: {exc}; giving up after {attempts} attempt(s)")
                raise
            delay = min(cap, base * 2 ** (attempt - 1)) * (0.5 + random.random())
            if log:
                log(f"{what}: {exc}; retrying in {delay:.1f}s (attempt {attempt + 1}/{attempts})")
            time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Container registries (the distribution API v2)


def split_ref(image: str) -> tuple[str, str]:
    """``127.0.0.1:5000/slipway/name`` -> (``127.0.0.1:5000``, ``slipway/name``)."""
    host, _, repo = image.partition("/")
    return host, repo


def _scheme(host: str) -> str:
    # Loopback registries speak plain HTTP, as docker itself assumes for 127.0.0.0/8.
    return "http" if is_loopback_host(host) else "https"


def is_loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    return name == "localhost" or name.startswith("127.") or name == "::1"


def is_loopback(image: str) -> bool:
    return is_loopback_host(split_ref(image)[0])


def _credentials(host: str) -> tuple[str, str] | None:
    """Registry credentials from the environment; on GitHub, the job's token for ghcr.io."""
    user = os.environ.get("SLIPWAY_REGISTRY_USERNAME")
    password = os.environ.get("SLIPWAY_REGISTRY_PASSWORD")
    if user and password:
        return user, password
    if host == "ghcr.io" and os.environ.get("GITHUB_TOKEN"):
        return os.environ.get("GITHUB_ACTOR", "github-actions"), os.environ["GITHUB_TOKEN"]
    return None


_TOKENS: dict[tuple[str, str], str] = {}


def _bearer_token(challenge: str, host: str, repo: str) -> str | None:
    """Answer a ``WWW-Authenticate: Bearer realm=...,service=...`` challenge with a pull token."""
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.get("realm")
    if not realm:
        return None
    query = {"scope": params.get("scope") or f"repository:{repo}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    creds = _credentials(host)
    try:
        r = httpx.get(realm, params=query, auth=creds, timeout=15)
    except httpx.TransportError as exc:
        raise Transient(f"{type(exc).__name__} from {realm}: {exc}") from exc
    if r.status_code >= 500:
        raise Transient(f"{realm} answered {r.status_code}")
    if r.status_code != 200:
        return None
    body = r.json()
    return body.get("token") or body.get("access_token")


def _registry_get(image: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    host, repo = split_ref(image)
    url = f"{_scheme(host)}://{host}/v2/{repo}/{path}"
    headers = dict(headers or {})
    token = _TOKENS.get((host, repo))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        r = httpx.get(url, headers=headers, timeout=15)
        if r.status_code == 401 and "bearer" in r.headers.get("WWW-Authenticate", "").lower():
            token = _bearer_token(r.headers["WWW-Authenticate"], host, repo)
            if token:
                _TOKENS[(host, repo)] = token
                r = httpx.get(url, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=15)
    except httpx.TransportError as exc:
        raise Transient(f"{type(exc).__name__} from {host}: {exc}") from exc
    if r.status_code >= 500:
        raise Transient(f"{host} answered {r.status_code}")
    return r


def manifest(image: str, tag: str) -> dict[str, Any] | None:
    """What ``image:tag`` holds, or None when the tag (or the repository) does not exist.

    ``{"digest": manifest digest, "config": config digest (the local image ID for a docker
    build), "media_type": ..., "index": True for a multi-platform index, "body": ...}``
    """
    r = _registry_get(image, f"manifests/{tag}", {"Accept": MANIFEST_TYPES})
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise RegistryError(
            f"{image}:{tag}: the registry answered {r.status_code}: {answer(r)}", status=r.status_code
        )
    body = r.json()
    media_type = body.get("mediaType") or r.headers.get("Content-Type", "")
    return {
        "digest": r.headers.get("Docker-Content-Digest", ""),
        "config": (body.get("config") or {}).get("digest"),
        "media_type": media_type,
        "index": media_type in INDEX_TYPES,
        "body": body,
    }


def tags(image: str) -> list[str]:
    r = _registry_get(image, "tags/list")
    if r.status_code == 404:
        return []
    if r.status_code != 200:
        raise RegistryError(f"{image}: listing tags answered {r.status_code}: {answer(r)}", status=r.status_code)
    return sorted(r.json().get("tags") or [])


def same_image(existing: dict[str, Any] | None, image_id: str) -> bool:
    """Whether a registry manifest holds the local image ``image_id``.

    Docker's classic store names an image by its config digest; the containerd store names it by
    its manifest digest. Either identifies the content, whatever compression a push used.
    """
    if existing is None:
        return False
    return image_id in (existing.get("config"), existing.get("digest"))


# --------------------------------------------------------------------------------------------
# Package indexes (PEP 503 simple API)


def normalize_project(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def simple_url(upload_url: str, override: str | None = None) -> str:
    """The simple index that shows what ``upload_url`` received.

    PyPI and TestPyPI upload to ``upload.*/legacy/`` and list under ``/simple/`` of the main host;
    pypiserver (the local index) does both at one address.
    """
    if override:
        return override.rstrip("/") + "/"
    parts = urlsplit(upload_url)
    host = parts.netloc
    if host.startswith("upload."):
        host = host.removeprefix("upload.")
        return urlunsplit((parts.scheme, host, "/simple/", "", ""))
    path = parts.path.rstrip("/")
    path = path.removesuffix("/legacy")
    return urlunsplit((parts.scheme, host, f"{path}/simple/", "", ""))


_LINK = re.compile(r'<a\s[^>]*href="([^"]+)"[^>]*>([^<]+)</a>', re.IGNORECASE)


def index_files(simple: str, project: str) -> dict[str, tuple[str, str | None]]:
    """Files the index lists for ``project``: file name -> (absolute URL, sha256 or None when not listed)."""
    url = f"{simple.rstrip('/')}/{normalize_project(project)}/"
    try:
        r = httpx.get(url, timeout=15, follow_redirects=True)
    except httpx.TransportError as exc:
        raise Transient(f"{type(exc).__name__} from {urlsplit(url).netloc}: {exc}") from exc
    if r.status_code == 404:
        return {}
    if r.status_code >= 500:
        raise Transient(f"{urlsplit(url).netloc} answered {r.status_code}")
    if r.status_code != 200:
        raise RegistryError(f"{url} answered {r.status_code}: {answer(r)}", status=r.status_code)
    files: dict[str, tuple[str, str | None]] = {}
    for href, text in _LINK.findall(r.text):
        link, _, fragment = href.partition("#")
        digest = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        files[text.strip()] = (urljoin(str(r.url), link), digest)
    return files


def download_sha256(url: str) -> str:
    """The sha256 of a file on an index, for indexes that list no hashes."""
    h = hashlib.sha256()
    try:
        with httpx.stream("GET", url, timeout=60, follow_redirects=True) as r:
            if r.status_code >= 500:
                raise Transient(f"{urlsplit(url).netloc} answered {r.status_code}")
            if r.status_code != 200:
                raise RegistryError(f"{url} answered {r.status_code}", status=r.status_code)
            for chunk in r.iter_bytes():
                h.update(chunk)
    except httpx.TransportError as exc:
        raise Transient(f"{type(exc).__name__} from {urlsplit(url).netloc}: {exc}") from exc
    return h.hexdigest()
