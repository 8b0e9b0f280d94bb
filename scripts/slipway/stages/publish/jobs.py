"""What a publish sends out: the image tags and wheels of one release, and the state of each.

Shared by every part of ``slipway.stages.publish``; nothing here talks to a registry or an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from packaging.utils import canonicalize_name, parse_wheel_filename

from slipway import records
from slipway.fsutil import sha256_file
from slipway.plan import known_revision
from slipway.version import parse_version

# Where release assets are staged, relative to the output folder.
ASSETS = "release/assets"
# Records that describe a publish and are rewritten by each one; everything else is content
# that, once released under a version, never changes.
RECORDS = ("release.json", "SHA256SUMS", "smoke-table.md")

TagKind = Literal["absent", "same", "different", "unknown", "skip"]


@dataclass(frozen=True)
class TagState:
    """What the registry holds under one tag, as preflight found it. ``skip``: a moving tag that a
    newer release holds (``reason`` says which), left where it is."""

    kind: TagKind
    reason: str = ""

    def __str__(self) -> str:
        return f"skip: {self.reason}" if self.kind == "skip" else self.kind

    @property
    def left(self) -> bool:
        """Nothing to push: the tag already holds this image, or a newer release holds it."""
        return self.kind in ("same", "skip")


UNKNOWN = TagState("unknown")


@dataclass
class ImageJob:
    variant: str
    local: str  # what the engine pushes (an image ID), or ``image@digest`` already in the registry
    image: str
    image_id: str  # the local image ID, or the pushed digest (GitHub)
    labels: dict[str, str]
    tags: list[tuple[str, bool]] = field(default_factory=list)  # (tag, immutable)
    state: dict[str, TagState] = field(default_factory=dict)
    digests: dict[str, str | None] = field(default_factory=dict)


WheelState = Literal["absent", "same", "different", "unknown"]


@dataclass
class WheelJob:
    path: Path
    sha256: str
    project: str
    state: WheelState = "unknown"


def image_tags(plan: records.Plan) -> tuple[list[str], list[str]]:
    """(immutable tags, moving tags) for this release."""
    v = parse_version(plan.version)
    immutable = [plan.version]
    # A project folder that is not a git checkout has no commit to name (plan: sha 'unknown').
    if known_revision(plan.short_sha):
        immutable.append(f"sha-{plan.short_sha}")
    moving = [] if v.prerelease else [v.major_minor, "latest"]
    return immutable, moving


def release_tags(plan: records.Plan) -> list[tuple[str, bool]]:
    immutable, moving = image_tags(plan)
    return [(t, True) for t in immutable] + [(t, False) for t in moving]


def wheel_project(path: Path) -> str:
    return canonicalize_name(parse_wheel_filename(path.name)[0])


def collect_wheels(out: Path) -> list[WheelJob]:
    return [
        WheelJob(path=w, sha256=sha256_file(w), project=wheel_project(w))
        for w in sorted((out / "wheels").glob("*.whl"))
    ]
