"""The gate: nothing is published that the smoke stage did not prove, for the very bytes going out.

- ``check_smoke``: every planned artifact has a green smoke result, and the export it came from
  is not stale (``check_exports``); a wheel changed since its test is refused.
- ``local_images``: the image going out of the local engine is the one that was smoke-tested
  (by image ID), and one built on a base carrying this host's CA certificates goes to a loopback
  registry only.
- ``image_gate``: a digest pushed by the images job on GitHub was smoke-tested on every planned
  platform, and passed.

Every refusal is a ``PublishError`` naming each failure; nothing has been pushed when it is raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slipway import records, registry
from slipway.baseimage import HOST_CA_LABEL
from slipway.context import StageContext
from slipway.errors import PublishError
from slipway.fsutil import sha256_file
from slipway.outputs import SmokeVerdict, image_records, primary_smoke, smoke_artifacts, smoke_platforms
from slipway.stages.publish import engine_calls
from slipway.stages.publish.jobs import ImageJob, release_tags


@dataclass(frozen=True)
class SmokeGate:
    """What the gate let through: every smoke result (key -> result, ``outputs.smoke_key``), the
    verdict over all of them, and whether a GPU was present where they ran."""

    artifacts: dict[str, SmokeVerdict]
    ok: bool
    gpu_present: bool | None

    def primary(self, artifact: str) -> SmokeVerdict | None:
        return primary_smoke(self.artifacts, artifact)


def check_exports(ctx: StageContext, artifacts: Mapping[str, SmokeVerdict]) -> None:
    """Refuse a stale export, and a smoke result of another export than the one in the folder.

    The design: ``slipway export`` records in each ``model.json`` the hash of every input that
    shaped it (``export.export_inputs``: config, weights, the project's model code, golden data,
    exporter code, Slipway's version). Here the same hashes are taken again from the checkout
    being released; any difference means the model files, and the wheels, images and smoke
    results made from them, are not what the sources describe now, so nothing is published.
    Every image record and smoke result names the export it was built from or checked against
    (``export_inputs``), so an image or a result kept from before a re-export does not pass for
    the new one either.
    """
    from slipway.smoketest import export_digest
    from slipway.stages.export import stale_parts

    problems = []
    digests: dict[str, str | None] = {}
    exported = {e.model for e in ctx.plan.matrix.export}
    configured = {m.name for m in ctx.config.models}
    smoked = {a.model for a in artifacts.values() if a.model is not None and a.model in configured}
    for name in sorted(exported | smoked):
        model_dir = ctx.out / "models" / name
        stale = stale_parts(ctx, ctx.config.model(name), model_dir)
        if stale:
            problems.append(f"model '{name}' ({model_dir}): the export is stale, changed since it was "
                            f"exported: {', '.join(stale)}; run 'slipway export' and the later stages again")
            continue
        digests[name] = export_digest(records.read(model_dir / "model.json", records.ModelManifest))
    for variant, rec in sorted(image_records(ctx.out).items()):
        model = rec.model
        if model in digests and rec.export_inputs and rec.export_inputs != digests[model]:
            problems.append(f"image of variant '{variant}': built from another export of model '{model}' than "
                            f"the one in {ctx.out / 'models' / model}; run 'slipway images' and smoke again")
    for key, a in sorted(artifacts.items()):
        model = a.model
        if model in digests and "export_inputs" in a.model_fields_set and a.export_inputs != digests[model]:
            problems.append(f"{key}: smoke-tested against another export of model '{model}' than the one in "
                            f"{ctx.out / 'models' / model}; run 'slipway smoke' again")
    if problems:
        raise PublishError("refusing to publish (" + " | ".join(problems) + "); nothing was published")


def check_smoke(ctx: StageContext, variants: list[str] | None) -> SmokeGate:
    """The smoke summary (rebuilt from the per-artifact results) once every planned artifact passed."""
    path = ctx.out / "smoke" / "summary.json"
    # Rebuilt from the per-artifact files: on GitHub each smoke job wrote its own.
    artifacts = smoke_artifacts(ctx.out)
    # First: whatever the smoke results say, they are worthless for an export that is stale.
    check_exports(ctx, artifacts)
    if not artifacts:
        raise PublishError(
            f"no smoke results in {path.parent}: run 'slipway smoke' first; nothing was published"
        )
    recorded = records.read(path, records.SmokeSummary, None)
    gpu_present = (
        recorded.gpu_present
        if recorded is not None and "gpu_present" in recorded.model_fields_set
        else any(a.gpu is not None and a.gpu.available for a in artifacts.values())
    )
    summary = SmokeGate(artifacts=artifacts, ok=all(a.ok for a in artifacts.values()), gpu_present=gpu_present)
    wanted = [
        e.artifact for e in ctx.plan.matrix.smoke if e.kind != "image" or not variants or e.variant in variants
    ]
    wheels = sorted((ctx.out / "wheels").glob("*.whl"))
    if wheels and "wheels" not in wanted:
        wanted.append("wheels")
    wanted += [f"wheel:{w.name}" for w in wheels]
    # An image is smoke-tested once per platform (``image:<v>``, ``image:<v>@arm64``): every one
    # of its results must pass. Which platforms must be there is image_gate's question.
    tested = {a: smoke_platforms(artifacts, a) for a in wanted}
    missing = [a for a in wanted if not tested[a]]
    failed = [
        f"{a}{'' if arch == 'amd64' else f' on {arch}'} ({result.error or 'failed'})"
        for a in wanted
        for arch, result in sorted(tested[a].items())
        if not result.ok
    ]
    stale = []
    for w in wheels:
        entry = artifacts.get(f"wheel:{w.name}")
        if entry and entry.ok and entry.sha256 != sha256_file(w):
            stale.append(f"wheel:{w.name} (changed since it was smoke-tested)")
    if failed or missing or stale:
        parts = []
        if failed:
            parts.append("smoke test failed: " + "; ".join(failed))
        if missing:
            parts.append("not smoke-tested: " + ", ".join(missing))
        if stale:
            parts.append("stale: " + ", ".join(stale))
        raise PublishError(f"refusing to publish ({' | '.join(parts)}); nothing was published")
    return summary


def local_images(ctx: StageContext, variants: list[str] | None, summary: SmokeGate) -> list[ImageJob]:
    """The images of the local engine to publish: each the very one its smoke test ran."""
    images = image_records(ctx.out)
    jobs = []
    for entry in ctx.plan.matrix.images:
        variant = entry.variant
        if variants and variant not in variants:
            continue
        if variant not in images:
            raise PublishError(
                f"variant '{variant}' has no built image in images.json; nothing was published"
            )
        built = images[variant]
        if built.digest and not built.id:
            raise PublishError(
                f"image:{variant} was pushed by digest ({built.digest}): tag it with "
                f"'slipway publish --kind images --variant {variant}'; nothing was published"
            )
        smoked = summary.primary(f"image:{variant}")
        smoke_id = smoked.image_id if smoked is not None else None
        if not smoke_id or built.id != smoke_id:
            raise PublishError(
                f"image:{variant} was rebuilt after its smoke test ({str(built.id)[:19]} built, "
                f"{str(smoke_id)[:19]} smoke-tested): smoke-test the image you mean to publish; "
                "nothing was published"
            )
        # By ID, not by tag: another run of the same version on this engine may have moved the tag.
        info = engine_calls.inspect_image(smoke_id)
        if info is None:
            raise PublishError(
                f"the smoke-tested image {smoke_id[:19]} of {variant} is no longer in the local engine "
                "(rebuild and smoke-test it); nothing was published"
            )
        tagged = engine_calls.inspect_image(built.tag) if built.tag else None
        if (tagged or {}).get("Id") != smoke_id:
            ctx.log(f"{built.tag} now names another image; publishing the smoke-tested {smoke_id[:19]}")
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(HOST_CA_LABEL) == "true" and not registry.is_loopback(entry.image):
            raise PublishError(
                f"{built.tag} was built on a local base image carrying this host's CA certificates; "
                f"it may go to a loopback registry only, not {entry.image}; nothing was published"
            )
        jobs.append(ImageJob(variant=variant, local=smoke_id, image=entry.image, image_id=info["Id"],
                             labels=labels, tags=release_tags(ctx.plan)))
    return jobs


def image_gate(
    ctx: StageContext, variant: str, digest: str | None, artifacts: Mapping[str, SmokeVerdict]
) -> None:
    """A pushed ``digest`` is published only when every platform the plan built of it (the smoke
    matrix's ``arches``) was smoke-tested on its own architecture, passed, and ran that digest."""
    artifact = f"image:{variant}"
    planned = next((e for e in ctx.plan.matrix.smoke if e.artifact == artifact), None)
    arches = [a for a in ((planned.arches if planned else "") or "amd64").split(",") if a]
    tested = smoke_platforms(artifacts, artifact)
    for arch in arches:
        where = "" if arch == "amd64" else f" on {arch}"
        result = tested.get(arch)
        if result is None:
            raise PublishError(f"{artifact} was not smoke-tested{where}; nothing was published")
        if not result.ok:
            raise PublishError(
                f"smoke test failed: {artifact}{where} ({result.error or 'failed'}); nothing was published"
            )
        if result.digest != digest:
            raise PublishError(
                f"{artifact}: the smoke test{where} ran on {result.digest or result.image_id}, "
                f"the record names {digest}: smoke-test the digest you mean to publish; "
                "nothing was published"
            )


def smoke_numbers(result: SmokeVerdict | None) -> records.ImageSmokeNumbers:
    """The numbers of an image's (amd64) smoke test the release record keeps."""
    if result is None:
        return records.ImageSmokeNumbers(min_iou=None, max_score_diff=None, model_server=None, gpu=None)
    return records.ImageSmokeNumbers(
        min_iou=result.min_iou, max_score_diff=result.max_score_diff, model_server=result.model_server, gpu=result.gpu
    )
