"""Publishing on GitHub, split over the jobs of ``_publish.yml`` (``--kind``).

- ``--kind images --variant V`` (``publish_images``): the image was pushed by digest, untagged,
  by the images job. The gate checks that the smoke test ran on that very digest; the release
  tags are then added to it in the registry (a manifest PUT of the same bytes: no pull, no
  rebuild, no new digest), after the same preflight as a local publish. ``image`` and ``digest``
  go to ``GITHUB_OUTPUT`` for the attestations; ``publish/<variant>.json`` records what was tagged.
- ``--kind github-release`` (``github_release``): the gate over every planned artifact, then
  ``release/assets/`` (model archives, wheels, their CycloneDX SBOMs, the images' SBOMs from
  ``sbom/``, the smoke table, release.json, SHA256SUMS) and ``release/notes.md`` for
  ``gh release create``.
"""

from __future__ import annotations

import os
import shutil

from slipway import records, sbom
from slipway.context import StageContext, StageResult
from slipway.errors import PublishError
from slipway.fsutil import sha256_file
from slipway.github import set_outputs
from slipway.outputs import image_records, smoke_artifacts
from slipway.stages.publish import assets as release_assets
from slipway.stages.publish import gate, preflight, push
from slipway.stages.publish.jobs import ASSETS, ImageJob, collect_wheels, release_tags


def publish_images(ctx: StageContext, variants: list[str] | None) -> StageResult:
    """Add the release tags to each smoke-tested digest; one variant per GitHub job."""
    plan = ctx.plan
    dry_run = plan.dry_run
    entries = [e for e in plan.matrix.images if not variants or e.variant in variants]
    unknown = sorted(set(variants or ()) - {e.variant for e in entries})
    if unknown:
        raise PublishError(f"--variant {', '.join(unknown)}: not in the plan; nothing was published")
    if len(entries) != 1 and os.environ.get("GITHUB_OUTPUT"):
        raise PublishError(f"--kind images writes one image's outputs; name it with --variant ({len(entries)})")
    built = image_records(ctx.out)
    artifacts = smoke_artifacts(ctx.out)
    jobs = []
    for entry in entries:
        variant = entry.variant
        record = built.get(variant)
        if record is None:
            raise PublishError(f"no record of image {variant} in {ctx.out / 'images'}; nothing was published")
        if not record.digest:
            raise PublishError(
                f"image:{variant} has no pushed digest (built here: publish it with 'slipway publish'); "
                "nothing was published"
            )
        gate.image_gate(ctx, variant, record.digest, artifacts)
        if record.image != entry.image:
            raise PublishError(
                f"image:{variant} was pushed to {record.image}, the plan publishes to {entry.image}: "
                "tags are added in the repository that holds the digest; nothing was published"
            )
        jobs.append(ImageJob(variant=variant, local=f"{record.image}@{record.digest}", image=entry.image,
                             image_id=record.digest, labels={}, tags=release_tags(plan)))
    preflight.refuse_conflicts(preflight.preflight_images(ctx, jobs, dry_run=dry_run))
    push.push_tags(ctx, jobs, push.tag_in_registry, dry_run=dry_run, words=("tag", "tagging", "tagged"))
    for job in jobs:
        published = records.PublishedImage(
            variant=job.variant,
            image=job.image,
            digest=job.image_id,
            dry_run=dry_run,
            tags={t: _tag_outcome(job, t, dry_run) for t, _ in job.tags},
        )
        ctx.write(f"publish/{job.variant}.json", published)
        set_outputs({"image": job.image, "digest": job.image_id})
    word = "would tag" if dry_run else "tagged"
    return {"summary": f"{word} {', '.join(f'{j.image}@{j.image_id[:19]}' for j in jobs)}", "images": jobs}


def _tag_outcome(job: ImageJob, tag: str, dry_run: bool) -> str | None:
    """What ``publish/<variant>.json`` says of a tag: ``tagged`` (it names the digest now), else
    the state preflight found (a dry run; a moving tag a newer release holds)."""
    state = job.state.get(tag)
    if not dry_run and (state is None or state.kind != "skip"):
        return "tagged"
    return None if state is None else str(state)


def _notes(ctx: StageContext, release: records.ReleaseRecord) -> str:
    plan = ctx.plan
    lines = [f"# {plan.project} {plan.version}", "", f"Commit `{plan.sha}`.", ""]
    if release.images:
        lines += ["## Images", "", "| variant | image | digest | tags |", "|---|---|---|---|"]
        for variant, img in sorted(release.images.items()):
            tags = ", ".join(f"`{t}`" for t, state in img.tags.items() if state == "tagged")
            lines.append(f"| {variant} | `{img.image}` | `{img.digest}` | {tags or '-'} |")
        lines.append("")
    if release.wheels:
        lines += ["## Wheels", "", "| file | sha256 |", "|---|---|"]
        lines += [f"| `{w.file}` | `{w.sha256}` |" for w in release.wheels]
        lines.append("")
    if release.models:
        lines += ["## Models", "", "| model | archive | sha256 |", "|---|---|---|"]
        lines += [f"| {m} | `{a.asset}` | `{a.sha256}` |" for m, a in sorted(release.models.items())]
        lines.append("")
    for title, path in (("Smoke tests", ctx.out / "smoke" / "table.md"), ("Benchmarks", ctx.out / "bench" / "table.md")):
        if path.exists():
            body = path.read_text().strip()
            # The tables carry their own level-1 title; the notes have one already.
            body = "\n".join(line for line in body.splitlines() if not line.startswith("# "))
            lines += [f"## {title}", "", body.strip(), ""]
    lines += ["Every asset's sha256 is in `SHA256SUMS`; `release.json` records what was published where.", ""]
    return "\n".join(lines)


def github_release(ctx: StageContext) -> StageResult:
    """Fill ``release/assets/`` and write ``release/notes.md``; the workflow creates the release."""
    plan = ctx.plan
    summary = gate.check_smoke(ctx, None)
    built = image_records(ctx.out)
    images: dict[str, records.ReleaseImage] = {}
    for entry in plan.matrix.images:
        variant = entry.variant
        record = built.get(variant)
        if record is None:
            raise PublishError(f"no record of image {variant} in {ctx.out / 'images'}; nothing was published")
        if record.digest:
            gate.image_gate(ctx, variant, record.digest, summary.artifacts)
        path = ctx.out / "publish" / f"{variant}.json"
        published = records.read(path, records.PublishedImage, None)
        if not plan.dry_run and (published is None or published.digest != record.digest):
            raise PublishError(
                f"image:{variant} was not tagged ({path} missing or for another digest): "
                "run 'slipway publish --kind images' first; nothing was published"
            )
        images[variant] = records.ReleaseImage(
            image=entry.image,
            digest=record.digest,
            tags=published.tags if published is not None else {},
            platforms=record.platforms,
            smoke=gate.smoke_numbers(summary.primary(f"image:{variant}")),
        )
    wheels = collect_wheels(ctx.out)
    sboms = release_assets.write_sboms(ctx, [], wheels)
    for variant, image in sorted(images.items()):
        # The images' SBOMs, made from the pushed digest by the images job of _publish.yml
        # (python -m slipway.sbom), named as a local publish names them.
        path = ctx.out / "sbom" / sbom.image_file_name(image.image, plan.version)
        if path.is_file():
            sboms[f"image:{variant}"] = release_assets.sbom_ref(path)
    assets = release_assets.stage_assets(ctx, sboms, extra=[w.path for w in wheels])
    release = records.ReleaseRecord(
        project=plan.project,
        version=plan.version,
        sha=plan.sha,
        ref=plan.ref,
        prerelease=plan.prerelease,
        dry_run=plan.dry_run,
        images=images,
        wheels=[
            records.ReleaseWheel(file=w.path.name, sha256=w.sha256, index=plan.registries.packages,
                                 sbom=sboms.get(f"wheel:{w.path.name}"))
            for w in wheels
        ],
        models=assets.models,
        sboms=[records.ReleaseSbom(artifact=a, file=e.file, sha256=e.sha256) for a, e in sorted(sboms.items())],
        smoke=records.ReleaseSmoke(ok=summary.ok, gpu_present=summary.gpu_present),
        assets=records.ReleaseAssets(folder=ASSETS, files=assets.files),
        checksums=records.ReleaseChecksums(file="SHA256SUMS", sha256=sha256_file(assets.folder / "SHA256SUMS")),
    )
    ctx.write("release.json", release)
    shutil.copy2(ctx.out / "release.json", assets.folder / "release.json")
    notes = ctx.out / "release" / "notes.md"
    notes.write_text(_notes(ctx, release))
    count = sum(1 for p in assets.folder.iterdir() if p.is_file())
    ctx.log(f"release assets: {count} file(s) in {assets.folder}; notes in {notes}")
    return {"summary": f"{count} release asset(s) staged, notes written", "release": release}

