"""``slipway publish`` (and ``--local``): publish from this machine, in one go.

The gate, then SBOMs and release assets, then preflight over every image tag, wheel and asset;
only then, and only what is missing, is pushed from the local engine and uploaded to the index.
A dry run (the default outside a tag or ``--local``) stops after printing what it would do.
``release.json`` records what was published where; with ``--local`` the release assets are
copied under the state folder (``releases/<project>/<version>/``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slipway import records, registry, sbom, services
from slipway.context import StageContext, StageResult
from slipway.errors import PublishError, ServiceError
from slipway.fsutil import sha256_file
from slipway.stages.publish import assets as release_assets
from slipway.stages.publish import gate, preflight, push
from slipway.stages.publish.jobs import ASSETS, RECORDS, ImageJob, WheelJob, collect_wheels


def run(ctx: StageContext, variants: list[str] | None, *, local: bool) -> StageResult:
    plan = ctx.plan
    dry_run = plan.dry_run and not local
    if local:
        ctx.log("publishing to the local registry and index")
    elif dry_run:
        ctx.log("dry run: nothing will be pushed (publish for real on a tag, with --no-dry-run, or --local)")
    # Decided first: a damaged release.json stops publish before it does anything.
    record = "release.json"
    if dry_run and published_before(ctx.out / record):
        # The record of a real publish stays; a later dry run must not pass for it.
        record = "release.dry-run.json"
        ctx.log(f"{ctx.out / 'release.json'} records a real publish; this dry run's record is {record}")
    summary = gate.check_smoke(ctx, variants)
    index = plan.registries.packages
    simple = registry.simple_url(index, ctx.config.registries.packages_simple)
    if not dry_run:
        _ensure_local_services(ctx, plan)
    images = gate.local_images(ctx, variants, summary)
    wheels = collect_wheels(ctx.out)
    preflight.twine_check(wheels)
    sboms = release_assets.write_sboms(ctx, images, wheels)
    assets = release_assets.stage_assets(ctx, sboms)
    dest = services.state_dir() / "releases" / plan.project / plan.version if local else None

    conflicts = preflight.preflight_images(ctx, images, dry_run=dry_run)
    conflicts += preflight.preflight_wheels(ctx, wheels, simple, dry_run=dry_run)
    conflicts += preflight.preflight_assets(assets, dest)
    actions = preflight.print_actions(ctx, images, wheels, assets, index, dest, dry_run)
    ctx.write("publish-plan.json", records.PublishPlan(dry_run=dry_run, actions=actions, conflicts=conflicts))
    preflight.refuse_conflicts(conflicts)

    if not dry_run:
        push.push_tags(ctx, images, push.push_from_engine, dry_run=False, words=("push", "pushing", "pushed"))
        push.upload_wheels(ctx, wheels, index, simple)

    release = _release_record(ctx, images, wheels, sboms, assets, summary, index, dry_run)
    ctx.write(record, release)
    shutil.copy2(ctx.out / record, assets.folder / "release.json")
    if dest is not None and not dry_run:
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted(assets.folder.iterdir()):
            target = dest / path.name
            if path.name in RECORDS or not target.exists():
                shutil.copy2(path, target)
        ctx.log(f"release assets in {dest}")
    elif not dry_run:
        ctx.log(f"release assets staged in {assets.folder} for the GitHub release")
    pushed = sum(1 for a in actions if a.action == "push")
    uploaded = sum(1 for a in actions if a.action == "upload")
    word = "would push" if dry_run else "pushed"
    text = f"{word} {pushed} image tag(s) of {len(images)} image(s), {uploaded} of {len(wheels)} wheel(s)"
    return {"summary": text + (" (dry run)" if dry_run else ""), "release": release}


def published_before(path: Path) -> bool:
    # A damaged release.json is an error (RecordError), never "not published": a dry run must not
    # overwrite what may be the record of a real publish.
    recorded = records.read(path, records.ReleaseRecord, None)
    return recorded is not None and recorded.dry_run is False


def _ensure_local_services(ctx: StageContext, plan: records.Plan) -> None:
    """Start the local registry and index when the plan publishes to them (and only then)."""
    try:
        if plan.matrix.images and registry.split_ref(plan.registries.images)[0] == services.REGISTRY_ADDR:
            services.ensure_registry(ctx.log)
        if plan.registries.packages.rstrip("/").endswith(services.INDEX_ADDR):
            services.ensure_index(ctx.log)
    except ServiceError as exc:
        raise PublishError(f"local services are not available: {exc}") from exc


def _release_record(
    ctx: StageContext,
    images: list[ImageJob],
    wheels: list[WheelJob],
    sboms: dict[str, records.SbomRef],
    assets: release_assets.StagedAssets,
    summary: gate.SmokeGate,
    index: str,
    dry_run: bool,
) -> records.ReleaseRecord:
    plan = ctx.plan
    released: dict[str, records.ReleaseImage] = {}
    for job in images:
        digests = {t: job.digests.get(t) for t, _ in job.tags}
        distinct = {d for d in digests.values() if d}
        released[job.variant] = records.ReleaseImage(
            image=job.image,
            image_id=job.image_id,
            digest=distinct.pop() if len(distinct) == 1 else None,
            tags=digests,
            sbom=sboms.get(f"image:{job.variant}"),
            smoke=gate.smoke_numbers(summary.primary(f"image:{job.variant}")),
        )
    return records.ReleaseRecord(
        project=plan.project,
        version=plan.version,
        sha=plan.sha,
        prerelease=plan.prerelease,
        dry_run=dry_run,
        images=released,
        wheels=[
            records.ReleaseWheel(file=job.path.name, sha256=job.sha256, index=index,
                                 sbom=sboms.get(f"wheel:{job.path.name}"))
            for job in wheels
        ],
        models=assets.models,
        sboms=[
            records.ReleaseSbom(artifact=artifact, file=entry.file, sha256=entry.sha256,
                                format=f"CycloneDX {sbom.SPEC_VERSION} JSON", components=entry.components)
            for artifact, entry in sorted(sboms.items())
        ],
        smoke=records.ReleaseSmoke(ok=summary.ok, gpu_present=summary.gpu_present),
        assets=records.ReleaseAssets(folder=ASSETS, files=assets.files),
        checksums=records.ReleaseChecksums(file="SHA256SUMS", sha256=sha256_file(assets.folder / "SHA256SUMS")),
    )
