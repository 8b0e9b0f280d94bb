"""What the tests push to the local registry, and its removal when the test session ends.

The tests push to the registry at 127.0.0.1:5000, which is often the user's own (``slipway
services up`` starts one that outlives ``make test``). Every repository a test pushes to is named
under a prefix that is new to this session (``swt<random>``, ``slipway-e2e/e2e-<random>``) and
registered here with ``pushes_to``. At the end of the session conftest.py deletes, through the
registry's API, every manifest of each repository under a registered prefix that was not in the
catalog when the session began; repositories that existed before are never touched. Where the
registry is the one slipway started from this state folder, the emptied repository's folder goes
too, so the catalog no longer lists it (the layers stay until the registry's garbage collection,
which needs the registry stopped).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx

# Repository name prefixes (without the registry host) that this session pushes to.
PREFIXES: set[str] = set()

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def pushes_to(prefix: str) -> str:
    """Register ``prefix`` (a repository name or the start of one, with or without the registry
    host) as this session's; returns it unchanged."""
    name = prefix.split("/", 1)[1] if re.match(r"^[^/]+[:.][^/]*/", prefix) else prefix
    if name.strip("/"):
        PREFIXES.add(name.strip("/"))
    return prefix


def owned(repository: str, prefixes: set[str] | None = None) -> bool:
    return any(repository.startswith(p) for p in (PREFIXES if prefixes is None else prefixes))


def catalog(addr: str) -> set[str] | None:
    """Every repository of the registry at ``addr``; None when no registry answers there."""
    repositories: set[str] = set()
    url: str | None = f"http://{addr}/v2/_catalog?n=1000"
    try:
        while url:
            res = httpx.get(url, timeout=10)
            if res.status_code != 200:
                return None
            repositories.update(res.json().get("repositories") or [])
            link = res.headers.get("link", "")
            url = f"http://{addr}{link.split(';')[0].strip(' <>')}" if 'rel="next"' in link else None
    except (httpx.HTTPError, ValueError):
        return None
    return repositories


def _digests(addr: str, repository: str) -> list[str]:
    """The digest of every tagged manifest of ``repository``, an index before its platforms."""
    res = httpx.get(f"http://{addr}/v2/{repository}/tags/list", timeout=10)
    if res.status_code != 200:
        return []
    digests: list[str] = []
    for tag in res.json().get("tags") or []:
        found = httpx.get(f"http://{addr}/v2/{repository}/manifests/{tag}", timeout=30,
                          headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if found.status_code != 200:
            continue
        digest = found.headers.get("docker-content-digest")
        children = [m["digest"] for m in found.json().get("manifests") or [] if m.get("digest")]
        for d in [digest, *children]:
            if d and d not in digests:
                digests.append(d)
    return digests


def _data_root(addr: str) -> Path | None:
    """The storage folder of the registry slipway runs at ``addr`` from this state folder, if it does."""
    from slipway import services

    root = services.state_dir() / "registry"
    if services.PidFile(root / "registry.pid").read() is None:
        return None
    try:
        config = (root / "config.yml").read_text()
    except OSError:
        return None
    found = re.search(r"^\s*rootdirectory:\s*(\S+)\s*$", config, re.M)
    if f"addr: {addr}" not in config or not found:
        return None
    return Path(found.group(1)) / "docker" / "registry" / "v2" / "repositories"


def remove(addr: str, repositories: list[str]) -> list[str]:
    """Delete every manifest of each repository (and its folder, where the registry is slipway's);
    returns the problems met, one line each."""
    problems = []
    data = _data_root(addr)
    for repository in repositories:
        for digest in _digests(addr, repository):
            res = httpx.delete(f"http://{addr}/v2/{repository}/manifests/{digest}", timeout=30)
            if res.status_code not in (202, 404):
                problems.append(f"{repository}@{digest}: DELETE answered {res.status_code} {res.text[:200]}")
        if data is not None and not problems:
            folder = data / repository
            if folder.is_dir() and folder.resolve().is_relative_to(data.resolve()):
                shutil.rmtree(folder, ignore_errors=True)
                # Namespace folders the repository leaves empty (swt1234/ of swt1234/swt1234-alpha).
                for parent in folder.parents:
                    if parent == data or not parent.is_relative_to(data):
                        break
                    try:
                        parent.rmdir()
                    except OSError:
                        break
    return problems


def clean(addr: str, before: set[str] | None, prefixes: set[str] | None = None) -> tuple[list[str], list[str]]:
    """Remove this session's repositories: under a registered prefix and absent from ``before``.
    Returns (removed, problems)."""
    now = catalog(addr)
    if not now:
        return [], []
    mine = sorted(r for r in now if owned(r, prefixes) and r not in (before or set()))
    return mine, remove(addr, mine)
