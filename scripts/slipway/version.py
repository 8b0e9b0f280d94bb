"""Release versions: what a tag means, and which versions are prereleases."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion
from packaging.version import Version as _Pep440


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: str | None = None
    pre_n: int | None = None

    @property
    def prerelease(self) -> bool:
        return self.pre is not None

    @property
    def major_minor(self) -> str:
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        # Normalised to PEP 440 so wheels and images carry the same string.
        base = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre is None:
            return base
        pre = {"alpha": "a", "beta": "b"}.get(self.pre, self.pre)
        return f"{base}{'.' if pre == 'dev' else ''}{pre}{self.pre_n}"


def parse_version(text: str) -> Version:
    """A release version: MAJOR.MINOR.PATCH as PEP 440 reads it (packaging), with at most one
    prerelease part (aN, bN, rcN or devN; 1.2.3-rc.1 is 1.2.3rc1); no epoch, post or local part."""
    error = ValueError(
        f"'{text}' is not a release version: expected MAJOR.MINOR.PATCH with an optional "
        "prerelease such as 1.2.3, 1.2.3rc1 or 1.2.3-rc.1"
    )
    try:
        v = _Pep440(text.strip())
    except InvalidVersion:
        raise error from None
    release = ".".join(map(str, v.release))
    # Written as it normalises (no leading zeros, no 'v'), so a tag and its version read alike.
    if len(v.release) != 3 or not text.strip().startswith(release) or v.epoch or v.post is not None or v.local:
        raise error
    if v.pre is not None and v.dev is not None:
        raise error
    pre, pre_n = v.pre if v.pre is not None else ("dev", v.dev) if v.dev is not None else (None, None)
    return Version(v.major, v.minor, v.micro, pre, pre_n)


def version_from_tag(ref: str) -> Version:
    """``v1.2.3`` or ``refs/tags/v1.2.3`` -> Version; anything else is an error naming the ref."""
    tag = ref.removeprefix("refs/tags/")
    if not tag.startswith("v"):
        raise ValueError(f"tag '{ref}' does not start with 'v' (expected e.g. v1.2.3)")
    try:
        return parse_version(tag[1:])
    except ValueError as exc:
        raise ValueError(f"tag '{ref}': {exc}") from None
