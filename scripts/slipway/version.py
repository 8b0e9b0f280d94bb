"""Release versions: what a tag means, and which versions are prereleases."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Semantic versions as PEP 440 also reads them: 1.2.3, 1.2.3rc1, 1.2.3-rc.1, 1.2.3.dev4.
_VERSION = re.compile(
    r"^(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:[-.]?(?P<pre>a|b|rc|alpha|beta|dev)[-.]?(?P<pre_n>\d+))?$"
)


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
    m = _VERSION.match(text.strip())
    if not m:
        raise ValueError(
            f"'{text}' is not a release version: expected MAJOR.MINOR.PATCH with an optional "
            "prerelease such as 1.2.3, 1.2.3rc1 or 1.2.3-rc.1"
        )
    return Version(
        int(m["major"]),
        int(m["minor"]),
        int(m["patch"]),
        m["pre"],
        int(m["pre_n"]) if m["pre_n"] is not None else None,
    )


def version_from_tag(ref: str) -> Version:
    """``v1.2.3`` or ``refs/tags/v1.2.3`` -> Version; anything else is an error naming the ref."""
    tag = ref.removeprefix("refs/tags/")
    if not tag.startswith("v"):
        raise ValueError(f"tag '{ref}' does not start with 'v' (expected e.g. v1.2.3)")
    try:
        return parse_version(tag[1:])
    except ValueError as exc:
        raise ValueError(f"tag '{ref}': {exc}") from None
