"""The local images the tests make, and their removal when the test session ends.

The engine is often the user's own (``slipway services up`` starts one that outlives ``make
test``), shared with other work. Every image a test builds, pulls, loads or tags carries a name
that is new to this session (``swt<random>``, ``e2e-<random>``...) and registered here with
``owns``. When the session ends, conftest.py removes every local image reference (tag or digest)
that contains a registered name, and only those: an image the session did not name is never
touched, however it looks. A test that removes its images itself is welcome to; this is the net
under it (a failed assertion, a fixture torn down early).
"""

from __future__ import annotations

# Names (parts of an image reference) that this session's images carry.
OWNED: set[str] = set()


def owns(name: str) -> str:
    """Register ``name`` as this session's: local images whose reference contains it are removed at
    the end of the session. Returns it unchanged."""
    if len(name) < 8:
        raise ValueError(f"{name!r}: too short to name only this session's images")
    OWNED.add(name)
    return name


def owned_references(images: list[dict], names: set[str] | None = None) -> list[str]:
    """The tags and digests of ``images`` (the engine's image list) that contain one of ``names``."""
    names = OWNED if names is None else names
    refs: list[str] = []
    for image in images:
        for ref in [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]:
            if ref != "<none>:<none>" and any(n in ref for n in names) and ref not in refs:
                refs.append(ref)
    return refs


def remove_owned() -> tuple[list[str], list[str]]:
    """Remove every local image reference this session named; (removed, problems)."""
    if not OWNED:
        return [], []
    from slipway import engine
    from slipway.errors import SlipwayError

    if not engine.reachable():
        return [], []  # no engine: the session made no images
    try:
        refs = owned_references(engine.images())
    except SlipwayError as exc:
        return [], [f"cannot list the engine's images: {exc}"]
    removed, problems = [], []
    for ref in refs:
        try:
            engine.remove_image(ref)
            removed.append(ref)
        except SlipwayError as exc:
            problems.append(f"{ref}: {exc}")
    return removed, problems
