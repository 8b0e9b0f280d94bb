"""The one client for every HTTP call Slipway makes to an OCI registry or a package index.

Reads (what a repository or an index already holds, by digest) and writes (the manifest PUT that
adds a tag to a pushed digest, the upload of a wheel) go through here, with one way to
authenticate (a ``WWW-Authenticate`` challenge answered with basic credentials or a bearer token
of pull or pull+push scope) and one way to fail:

- ``TransientError`` (exported here as ``Transient``): another attempt may cure it (connection
  refused or reset, a timeout, a 5xx answer); ``retry`` retries only these.
- ``RegistryError``: a final answer that is neither success nor "absent" (401, 403, 400, 409...),
  carrying the HTTP ``status`` and the registry's own message.

Both are ``PublishError``s (exit 6). A 404 means "absent" and is answered as such (None, [], {}).
Outcomes are decided on status codes and error classes, never on message text. Image content is
pushed by the Docker engine; when a push fails, ``check_push_access`` asks the registry itself
whether the failure is one another attempt may cure.

Credentials: ``SLIPWAY_REGISTRY_USERNAME``/``SLIPWAY_REGISTRY_PASSWORD``, ``GITHUB_TOKEN`` for
ghcr.io, else what ``docker login`` stored in plain form; for an index ``TWINE_USERNAME``/
``TWINE_PASSWORD`` (any pair for a loopback index, which takes any).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from packaging.utils import canonicalize_name

from slipway.errors import PublishError, RegistryError, TransientError
from slipway.settings import get_settings

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
    attempts = attempts if attempts is not None else get_settings().retry_attempts
    base = base if base is not None else get_settings().retry_base_s
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


def _transport(exc: httpx.TransportError, where: str) -> TransientError:
    return Transient(f"{type(exc).__name__} from {where}: {exc}")


def _final_or_transient(r: httpx.Response, where: str) -> None:
    """Raise ``Transient`` for a 5xx answer (another attempt may cure it)."""
    if r.status_code >= 500:
        raise Transient(f"{where} answered {r.status_code}: {answer(r)}")


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


def _docker_config_auth(host: str) -> tuple[str, str] | None:
    """Credentials that ``docker login`` (docker/login-action on GitHub) stored in plain form."""
    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        auths = json.loads((folder / "config.json").read_text()).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    for key in (host, f"https://{host}", f"http://{host}"):
        entry = auths.get(key)
        encoded = entry.get("auth") if isinstance(entry, dict) else None
        if encoded:
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                continue
            return user, password
    return None


def credentials(host: str) -> tuple[str, str] | None:
    """Registry credentials: the environment, on GitHub the job's token for ghcr.io, else docker's login."""
    settings = get_settings()
    user, password = settings.registry_username, settings.registry_password
    if user and password and password.get_secret_value():
        return user, password.get_secret_value()
    if host == "ghcr.io" and os.environ.get("GITHUB_TOKEN"):
        return os.environ.get("GITHUB_ACTOR", "github-actions"), os.environ["GITHUB_TOKEN"]
    return _docker_config_auth(host)


# What answered a challenge, per (host, repository, push scope): reused until the registry asks again.
_AUTH: dict[tuple[str, str, bool], dict[str, str]] = {}


def _authorize(refused: httpx.Response, host: str, repo: str, push: bool) -> dict[str, str]:
    """Answer a 401's ``WWW-Authenticate`` challenge: basic credentials, or a bearer token for
    ``repo`` with pull (``push``: pull and push) scope from the challenge's realm."""
    challenge = refused.headers.get("WWW-Authenticate", "")
    said = answer(refused)
    creds = credentials(host)
    scheme = challenge.split(" ", 1)[0].lower()
    if scheme == "basic":
        if not creds:
            raise RegistryError(
                f"{host} answered 401: {said}; it wants credentials: log in (docker login) or set "
                "SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD",
                status=refused.status_code,
            )
        return {"Authorization": "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()}
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if scheme != "bearer" or not params.get("realm"):
        raise RegistryError(
            f"{host} answered 401: {said}; it named no way to authenticate ({challenge!r})",
            status=refused.status_code,
        )
    realm = params["realm"]
    scope = f"repository:{repo}:pull,push" if push else (params.get("scope") or f"repository:{repo}:pull")
    query = {"scope": scope}
    if params.get("service"):
        query["service"] = params["service"]
    try:
        r = httpx.get(realm, params=query, auth=creds, timeout=15)
    except httpx.TransportError as exc:
        raise _transport(exc, realm) from exc
    _final_or_transient(r, realm)
    if r.status_code != 200:
        raise RegistryError(
            f"{host} asked for a token and {realm} refused one for {scope}: {r.status_code} {answer(r)}",
            status=r.status_code,
        )
    try:
        body = r.json()
        token = body.get("token") or body.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not token:
        raise RegistryError(f"{realm} answered no token for {scope}: {r.text.strip()[:200]!r}", status=r.status_code)
    return {"Authorization": f"Bearer {token}"}


def _request(
    method: str,
    image: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    push: bool = False,
    timeout: float = 60,
) -> httpx.Response:
    """One call to ``/v2/<repository>/<path>``, authenticated on demand; 5xx and transport
    failures are ``Transient``, every other answer is the caller's to judge."""
    host, repo = split_ref(image)
    url = f"{_scheme(host)}://{host}/v2/{repo}/{path}"
    key = (host, repo, push)
    headers = dict(headers or {})
    try:
        r = httpx.request(method, url, headers={**headers, **_AUTH.get(key, {})}, content=content, timeout=timeout)
        if r.status_code == 401:
            _AUTH[key] = _authorize(r, host, repo, push)
            r = httpx.request(method, url, headers={**headers, **_AUTH[key]}, content=content, timeout=timeout)
    except httpx.TransportError as exc:
        raise _transport(exc, host) from exc
    _final_or_transient(r, host)
    return r


def _refused(r: httpx.Response, what: str) -> RegistryError:
    return RegistryError(f"{what}: the registry answered {r.status_code}: {answer(r)}", status=r.status_code)


def manifest(image: str, tag: str) -> dict[str, Any] | None:
    """What ``image:tag`` holds, or None when the tag (or the repository) does not exist.

    ``{"digest": manifest digest, "config": config digest (the local image ID for a docker
    build), "media_type": ..., "index": True for a multi-platform index, "body": ...}``
    """
    r = _request("GET", image, f"manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=15)
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise _refused(r, f"{image}:{tag}")
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
    r = _request("GET", image, "tags/list", timeout=15)
    if r.status_code == 404:
        return []
    if r.status_code != 200:
        raise _refused(r, f"{image}: listing tags")
    return sorted(r.json().get("tags") or [])


def tag_digest(image: str, digest: str, tag: str) -> None:
    """Point ``image:tag`` at the manifest ``digest`` of the same repository.

    The manifest's own bytes are PUT under the tag, so the tag names exactly the digest that was
    smoke-tested (an index keeps its platforms and attestations), and nothing is pulled or rebuilt.
    """
    r = _request("GET", image, f"manifests/{digest}", headers={"Accept": MANIFEST_TYPES}, push=True)
    if r.status_code != 200:
        raise _refused(r, f"{image}@{digest}")
    if hashlib.sha256(r.content).hexdigest() != digest.removeprefix("sha256:"):
        raise PublishError(f"{image}@{digest}: the registry answered a manifest of another digest")
    try:
        media_type = r.headers.get("Content-Type") or json.loads(r.content).get("mediaType", "")
    except (ValueError, AttributeError) as exc:
        raise PublishError(f"{image}@{digest}: the registry answered a manifest that is not JSON") from exc
    put = _request(
        "PUT", image, f"manifests/{tag}", headers={"Content-Type": media_type}, content=r.content, push=True
    )
    if put.status_code not in (200, 201):
        raise _refused(put, f"tagging {image}:{tag}")


def check_push_access(image: str) -> None:
    """Ask the registry whether it takes a push to ``image`` now, the way a push begins: a blob
    upload is opened (and cancelled at once). ``Transient`` when the registry is down or failing
    (5xx, connection refused), ``RegistryError`` with its own words when it refuses (401, 403...);
    returns when it would take the push."""
    r = _request("POST", image, "blobs/uploads/", push=True, timeout=15)
    if r.status_code != 202:
        raise _refused(r, f"{image}: opening an upload")
    location = r.headers.get("Location")
    if location:
        host, repo = split_ref(image)
        url = urljoin(f"{_scheme(host)}://{host}/v2/{repo}/blobs/uploads/", location)
        with contextlib.suppress(httpx.TransportError):  # an upload left open expires on its own
            httpx.delete(url, headers=_AUTH.get((host, repo, True), {}), timeout=15)


def same_image(existing: dict[str, Any] | None, image_id: str) -> bool:
    """Whether a registry manifest holds the local image ``image_id``.

    Docker's classic store names an image by its config digest; the containerd store names it by
    its manifest digest. Either identifies the content, whatever compression a push used.
    """
    if existing is None:
        return False
    return image_id in (existing.get("config"), existing.get("digest"))


# --------------------------------------------------------------------------------------------
# Package indexes (PEP 503 simple API, the legacy upload API)


def normalize_project(name: str) -> str:
    return canonicalize_name(name)


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
    where = urlsplit(url).netloc
    try:
        r = httpx.get(url, timeout=15, follow_redirects=True)
    except httpx.TransportError as exc:
        raise _transport(exc, where) from exc
    if r.status_code == 404:
        return {}
    _final_or_transient(r, where)
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
    where = urlsplit(url).netloc
    try:
        with httpx.stream("GET", url, timeout=60, follow_redirects=True) as r:
            if r.status_code >= 500:
                raise Transient(f"{where} answered {r.status_code}")
            if r.status_code != 200:
                raise RegistryError(f"{url} answered {r.status_code}", status=r.status_code)
            for chunk in r.iter_bytes():
                h.update(chunk)
    except httpx.TransportError as exc:
        raise _transport(exc, where) from exc
    return h.hexdigest()


def index_file(simple: str, project: str, filename: str) -> tuple[bool, str | None]:
    """(present, sha256) of the index's file ``filename``; the file is fetched when no hash is listed."""
    files = index_files(simple, project)
    if filename not in files:
        return False, None
    href, digest = files[filename]
    return True, digest or download_sha256(href)


def index_credentials(upload_url: str) -> tuple[str, str] | None:
    """``TWINE_USERNAME``/``TWINE_PASSWORD``; a loopback index (pypiserver) takes any pair."""
    user, password = os.environ.get("TWINE_USERNAME"), os.environ.get("TWINE_PASSWORD")
    if user and password:
        return user, password
    if is_loopback_host(urlsplit(upload_url).netloc):
        return "slipway", "local"
    return None


def upload_wheel(upload_url: str, path: Path) -> None:
    """Upload one distribution with the index's legacy upload API (what twine speaks); the
    form fields are the file's own metadata, read by twine's ``PackageFile``."""
    from twine.exceptions import TwineException
    from twine.package import PackageFile

    try:
        package = PackageFile.from_filename(str(path), None)
        metadata = package.metadata_dictionary()
    except (TwineException, OSError, ValueError) as exc:
        raise PublishError(f"{path}: cannot read its metadata for the upload: {exc}") from exc
    fields: list[tuple[str, str]] = [(":action", "file_upload"), ("protocol_version", "1")]
    for key, value in metadata.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        fields += [(key, str(v)) for v in values if v is not None]
    data: dict[str, list[str]] = {}
    for key, value in fields:
        data.setdefault(key, []).append(value)
    where = urlsplit(upload_url).netloc
    try:
        with open(path, "rb") as fh:
            r = httpx.post(
                upload_url,
                data=data,
                files={"content": (path.name, fh, "application/octet-stream")},
                auth=index_credentials(upload_url),
                timeout=3600,
            )
    except httpx.TransportError as exc:
        raise _transport(exc, where) from exc
    _final_or_transient(r, where)
    if r.status_code not in (200, 201):
        raise RegistryError(
            f"uploading {path.name} to {upload_url}: the index answered {r.status_code}: {answer(r)}",
            status=r.status_code,
        )
