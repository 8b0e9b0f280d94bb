"""Preflight, before anything is pushed: what would go out, what is already there, what conflicts.

An immutable image tag (``<version>``, ``sha-<short>``) holding other content, a wheel file on the
index with other content, or a release asset of this version with other content is a conflict:
publish refuses and pushes nothing. Moving tags (``<major>.<minor>``, ``latest``; never for a
prerelease) follow the newest release: they are not moved back by publishing an older version.
``print_actions`` lists what publish will do (or, in a dry run, would do).

In a dry run the registry and index are asked once: a failure to reach them leaves the state
``unknown`` and the listing says so; otherwise it is an error before anything is pushed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from slipway import records, registry
from slipway.context import StageContext
from slipway.errors import PublishError
from slipway.fsutil import sha256_file
from slipway.stages.publish.assets import StagedAssets
from slipway.stages.publish.jobs import ASSETS, UNKNOWN, ImageJob, TagState, WheelJob
from slipway.version import parse_version


def twine_check(wheels: list[WheelJob]) -> None:
    if not wheels:
        return
    res = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *(str(w.path) for w in wheels)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise PublishError(f"twine check failed; nothing was published:\n{(res.stdout + res.stderr)[-2000:]}")


def _released_versions(tag_list: list[str]) -> list[Any]:
    found = []
    for t in tag_list:
        try:
            v = parse_version(t)
        except ValueError:
            continue
        if not v.prerelease:
            found.append(v)
    return found


def _key(v: Any) -> tuple[int, int, int]:
    return (v.major, v.minor, v.patch)


def preflight_images(ctx: StageContext, jobs: list[ImageJob], *, dry_run: bool) -> list[str]:
    """Fill each job's tag states; return the conflicts."""
    conflicts: list[str] = []
    this = parse_version(ctx.plan.version)
    attempts = 1 if dry_run else None
    for job in jobs:
        try:
            existing_tags = registry.retry(
                lambda j=job: registry.tags(j.image),
                what=f"list tags of {job.image}",
                attempts=attempts,
                log=ctx.log,
            )
        except (registry.Transient, registry.RegistryError) as exc:
            if not dry_run:
                raise type(exc)(f"cannot read {job.image}: {exc}; nothing was published", **_status(exc)) from exc
            ctx.log(f"{job.image}: cannot tell what is there ({exc}); listing every push")
            job.state = {tag: UNKNOWN for tag, _ in job.tags}
            continue
        released = _released_versions(existing_tags)
        for tag, immutable in job.tags:
            if tag == "latest" and any(_key(v) > _key(this) for v in released):
                job.state[tag] = TagState("skip", "a newer release holds it")
                continue
            if (
                not immutable
                and tag != "latest"
                and any(
                    (v.major, v.minor) == (this.major, this.minor) and v.patch > this.patch for v in released
                )
            ):
                job.state[tag] = TagState("skip", "a newer patch release holds it")
                continue
            if tag not in existing_tags:
                job.state[tag] = TagState("absent")
                continue
            found = registry.retry(
                lambda t=tag, j=job: registry.manifest(j.image, t),
                what=f"look up {job.image}:{tag}",
                attempts=attempts,
                log=ctx.log,
            )
            if found is not None and registry.same_image(found, job.image_id):
                job.state[tag] = TagState("same")
                job.digests[tag] = found["digest"]
            elif found is None:
                job.state[tag] = TagState("absent")
            else:
                job.state[tag] = TagState("different")
                if immutable:
                    what = "a multi-platform index" if found.get("index") else f"image {found.get('config')}"
                    conflicts.append(
                        f"{job.image}:{tag} already holds other content ({what}, digest {found['digest']}); "
                        f"this release's image is {job.image_id}"
                    )
    return conflicts


def _status(exc: PublishError) -> dict[str, Any]:
    """The keyword arguments that rebuild ``exc``'s class with another message."""
    return {"status": exc.status} if isinstance(exc, registry.RegistryError) else {}


def preflight_wheels(ctx: StageContext, jobs: list[WheelJob], simple: str, *, dry_run: bool) -> list[str]:
    conflicts = []
    attempts = 1 if dry_run else None
    for job in jobs:
        try:
            present, digest = registry.retry(
                lambda j=job: registry.index_file(simple, j.project, j.path.name),
                what=f"look up {job.path.name}",
                attempts=attempts,
                log=ctx.log,
            )
        except (registry.Transient, registry.RegistryError) as exc:
            if not dry_run:
                raise type(exc)(
                    f"cannot read the index {simple}: {exc}; nothing was published", **_status(exc)
                ) from exc
            job.state = "unknown"
            continue
        if not present:
            job.state = "absent"
        elif digest == job.sha256:
            job.state = "same"
        else:
            job.state = "different"
            conflicts.append(
                f"{job.path.name} is already on {simple} with other content (sha256 {digest}, "
                f"this one {job.sha256}); a released file is never replaced"
            )
    return conflicts


def preflight_assets(assets: StagedAssets, dest: Path | None) -> list[str]:
    if dest is None or not (dest / "SHA256SUMS").exists():
        return []
    conflicts = []
    for line in (dest / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name in assets.files and assets.files[name] != digest:
            conflicts.append(
                f"release asset {name} of this version already exists in {dest} with other content"
            )
    return conflicts


def refuse_conflicts(conflicts: list[str]) -> None:
    if conflicts:
        raise PublishError(
            "refusing to publish: this version already exists with other content; nothing was "
            "published:\n  " + "\n  ".join(conflicts)
        )


def _image_action(state: TagState, immutable: bool) -> Literal["keep", "skip", "refuse", "push"]:
    if state.left:
        return "keep" if state.kind == "same" else "skip"
    if state.kind == "different" and immutable:
        return "refuse"
    return "push"


def print_actions(
    ctx: StageContext,
    images: list[ImageJob],
    wheels: list[WheelJob],
    assets: StagedAssets,
    index: str,
    dest: Path | None,
    dry_run: bool,
) -> list[records.PublishAction]:
    """Print, and return for ``publish-plan.json``, every push, upload and asset of this publish."""
    actions: list[records.PublishAction] = []
    for job in images:
        for tag, immutable in job.tags:
            state = job.state.get(tag, UNKNOWN)
            actions.append(
                records.PublishAction(
                    action=_image_action(state, immutable),
                    what="image",
                    ref=f"{job.image}:{tag}",
                    image_id=job.image_id,
                    state=str(state),
                    immutable=immutable,
                )
            )
    for wheel in wheels:
        act = "keep" if wheel.state == "same" else "refuse" if wheel.state == "different" else "upload"
        actions.append(
            records.PublishAction(
                action=act, what="wheel", ref=wheel.path.name, sha256=wheel.sha256, index=index, state=wheel.state
            )
        )
    target = str(dest) if dest else f"{ASSETS}/ (the workflow attaches it to the GitHub release)"
    for path in sorted(p for p in assets.folder.iterdir() if p.is_file()):
        digest = assets.files.get(path.name) or sha256_file(path)
        actions.append(
            records.PublishAction(action="asset", what="release asset", ref=path.name, sha256=digest, to=target)
        )
    actions.append(
        records.PublishAction(action="asset", what="release asset", ref="release.json", sha256="", to=target)
    )
    head = "dry run: publish would do this; nothing was pushed" if dry_run else "publish will do this"
    lines = [f"{head} ({ctx.plan.project} {ctx.plan.version}):"]
    for a in actions:
        if a.what == "image":
            detail = f"image {(a.image_id or '')[:19]}"
        elif a.what == "wheel":
            detail = f"sha256 {(a.sha256 or '')[:12]} -> {a.index}"
        else:
            detail = f"sha256 {(a.sha256 or '')[:12] or '(written last)'} -> {a.to}"
        verb = {
            "push": "would push" if dry_run else "push",
            "upload": "would upload" if dry_run else "upload",
            "keep": "keep",
            "skip": "skip",
            "refuse": "REFUSE",
            "asset": "would attach" if dry_run else "attach",
        }[a.action]
        state = f" [{a.state}]" if a.state is not None else ""
        lines.append(f"  {verb:<13} {a.ref}  ({detail}){state}")
    print("\n".join(lines), flush=True)
    return actions
