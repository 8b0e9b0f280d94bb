"""Readers of the output folder that rebuild the views several jobs share.

On GitHub every stage job runs on its own runner and sees only the artifacts it downloads, so a
file that several jobs would write (``images.json``, ``smoke/summary.json``) is never trusted to
be complete: these readers rebuild it from the per-artifact records (``images/<variant>.json``,
``smoke/<artifact>.json``). Locally the same functions read what one machine wrote, so a local
release and a GitHub one take the same decisions from the same files. Every record is read
through its model (``slipway.records``): a damaged one is a ``RecordError`` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from slipway import records
from slipway.errors import RecordError

# The platform every plan builds; its smoke result keeps the plain name and key.
PRIMARY_ARCH = "amd64"

# What is known of one artifact's smoke test on one platform: its own result file when this job
# has it, else its entry in smoke/summary.json.
SmokeVerdict = records.SmokeResult | records.SmokeSummaryEntry
V = TypeVar("V", records.SmokeResult, records.SmokeSummaryEntry, SmokeVerdict)


def image_records(out: Path) -> dict[str, records.ImageRecord]:
    """variant -> image record: ``images.json`` (a local build) overlaid by ``images/<variant>.json``."""
    found = dict(records.read(out / "images.json", records.ImagesIndex, records.ImagesIndex({})).root)
    for path in sorted((out / "images").glob("*.json")):
        record = records.read(path, records.ImageRecord)
        if not record.variant:
            raise RecordError(path, "names no variant")
        found[record.variant] = record
    return found


def smoke_key(artifact: str, arch: str | None) -> str:
    """The key of one platform's smoke result: ``image:<variant>`` for amd64 (or a result that
    names no platform), ``image:<variant>@<arch>`` for any other, so that the arm64 job's result
    sits beside the amd64 job's instead of replacing it."""
    return artifact if not arch or arch == PRIMARY_ARCH else f"{artifact}@{arch}"


def smoke_file_stem(stem: str, arch: str | None) -> str:
    """``image-<variant>`` for amd64, ``image-<variant>.<arch>`` for any other platform."""
    return stem if not arch or arch == PRIMARY_ARCH else f"{stem}.{arch}"


def smoke_platforms(artifacts: Mapping[str, V], artifact: str) -> dict[str, V]:
    """arch -> result of every platform on which ``artifact`` was smoke-tested."""
    found = {}
    for key, result in artifacts.items():
        if key == artifact or key.startswith(artifact + "@"):
            found[result.arch or (key.split("@", 1)[1] if "@" in key else PRIMARY_ARCH)] = result
    return found


def primary_smoke(artifacts: Mapping[str, V], artifact: str) -> V | None:
    """The amd64 result of ``artifact``; on a machine of another architecture, its own."""
    platforms = smoke_platforms(artifacts, artifact)
    return platforms.get(PRIMARY_ARCH) or next(iter(platforms.values()), None)


def smoke_result_files(out: Path) -> dict[str, records.SmokeResult]:
    """key -> result, from the per-artifact files ``smoke/*.json`` (all but the summary); one key per
    artifact and platform (``smoke_key``)."""
    results: dict[str, records.SmokeResult] = {}
    for path in sorted((out / "smoke").glob("*.json")):
        if path.name == "summary.json":
            continue
        result = records.read(path, records.SmokeResult)
        if not result.artifact:
            raise RecordError(path, "names no artifact")
        results[smoke_key(result.artifact, result.arch)] = result
    return results


def smoke_summary(out: Path) -> records.SmokeSummary | None:
    """``smoke/summary.json``; None when there is none."""
    return records.read(out / "smoke" / "summary.json", records.SmokeSummary, None)


def smoke_artifacts(out: Path) -> dict[str, SmokeVerdict]:
    """key (``smoke_key``) -> result: ``smoke/summary.json`` overlaid by the per-artifact files.

    A summary downloaded from several smoke jobs is whichever job's came last; the per-artifact
    files are each job's own and never collide (one per artifact and platform).
    """
    summary = smoke_summary(out)
    artifacts: dict[str, SmokeVerdict] = dict(summary.artifacts) if summary else {}
    artifacts.update(smoke_result_files(out))
    return artifacts


__all__ = [
    "PRIMARY_ARCH",
    "SmokeVerdict",
    "image_records",
    "primary_smoke",
    "smoke_artifacts",
    "smoke_file_stem",
    "smoke_key",
    "smoke_platforms",
    "smoke_result_files",
    "smoke_summary",
]
