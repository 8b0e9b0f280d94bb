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

from typing import Any

from slipway import registry
from slipway.baseimage import HOST_CA_LABEL
from slipway.context import StageContext
from slipway.errors import PublishError
from slipway.fsutil import read_record, sha256_file
from slipway.github import image_records, primary_smoke, smoke_artifacts, smoke_platforms
from slipway.stages.publish import engine_calls
from slipway.stages.publish.jobs import ImageJob, release_tags


def check_exports(ctx: StageContext, artifacts: dict[str, Any]) -> None:
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
    exported = {e["model"] for e in ctx.plan.get("matrix", {}).get("export", [])}
    smoked = {a["model"] for a in artifacts.values() if a.get("model") in {m.name for m in ctx.config.models}}
    for name in sorted(exported | smoked):
        model_dir = ctx.out / "models" / name
        stale = stale_parts(ctx, ctx.config.model(name), model_dir)
        if stale:
            problems.append(f"model '{name}' ({model_dir}): the export is stale, changed since it was "
                            f"exported: {', '.join(stale)}; run 'slipway export' and the later stages again")
            continue
        digests[name] = export_digest(read_record(model_dir / "model.json"))
    for variant, rec in sorted(image_records(ctx.out).items()):
        model = rec.get("model")
        if model in digests and rec.get("export_inputs") and rec["export_inputs"] != digests[model]:
            problems.append(f"image of variant '{variant}': built from another export of model '{model}' than "
                            f"the one in {ctx.out / 'models' / model}; run 'slipway images' and smoke again")
    for key, a in sorted(artifacts.items()):
        model = a.get("model")
        if model in digests and "export_inputs" in a and a["export_inputs"] != digests[model]:
            problems.append(f"{key}: smoke-tested against another export of model '{model}' than the one in "
                            f"{ctx.out / 'models' / model}; run 'slipway smoke' again")
    if problems:
        raise PublishError("refusing to publish (" + " | ".join(problems) + "); nothing was published")


def check_smoke(ctx: StageContext, variants: list[str] | None) -> dict[str, Any]:
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
    summary = read_record(path, {})
    summary = {
        **summary,
        "artifacts": artifacts,
        "ok": all(a.get("ok") for a in artifacts.values()),
        "gpu_present": summary.get("gpu_present", any((a.get("gpu") or {}).get("available") for a in artifacts.values())),
    }
    wanted = [
        e["artifact"]
        for e in ctx.plan["matrix"]["smoke"]
        if e["kind"] != "image" or not variants or e.get("variant") in variants
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
        f"{a}{'' if arch == 'amd64' else f' on {arch}'} ({result.get('error') or 'failed'})"
        for a in wanted
        for arch, result in sorted(tested[a].items())
        if not result["ok"]
    ]
    stale = []
    for w in wheels:
        entry = artifacts.get(f"wheel:{w.name}")
        if entry and entry["ok"] and entry.get("sha256") != sha256_file(w):
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


def local_images(ctx: StageContext, variants: list[str] | None, summary: dict[str, Any]) -> list[ImageJob]:
    """The images of the local engine to publish: each the very one its smoke test ran."""
    images = image_records(ctx.out)
    jobs = []
    for entry in ctx.plan["matrix"]["images"]:
        variant = entry["variant"]
        if variants and variant not in variants:
            continue
        if variant not in images:
            raise PublishError(
                f"variant '{variant}' has no built image in images.json; nothing was published"
            )
        built = images[variant]
        if built.get("digest") and not built.get("id"):
            raise PublishError(
                f"image:{variant} was pushed by digest ({built['digest']}): tag it with "
                f"'slipway publish --kind images --variant {variant}'; nothing was published"
            )
        smoke_id = primary_smoke(summary["artifacts"], f"image:{variant}").get("image_id")
        if not smoke_id or built.get("id") != smoke_id:
            raise PublishError(
                f"image:{variant} was rebuilt after its smoke test ({str(built.get('id'))[:19]} built, "
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
        tagged = engine_calls.inspect_image(built["tag"])
        if (tagged or {}).get("Id") != smoke_id:
            ctx.log(f"{built['tag']} now names another image; publishing the smoke-tested {smoke_id[:19]}")
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(HOST_CA_LABEL) == "true" and not registry.is_loopback(entry["image"]):
            raise PublishError(
                f"{built['tag']} was built on a local base image carrying this host's CA certificates; "
                f"it may go to a loopback registry only, not {entry['image']}; nothing was published"
            )
        jobs.append(ImageJob(variant=variant, local=smoke_id, image=entry["image"], image_id=info["Id"],
                             labels=labels, tags=release_tags(ctx.plan)))
    return jobs


def image_gate(ctx: StageContext, variant: str, record: dict[str, Any], artifacts: dict[str, Any]) -> None:
    """A pushed digest is published only when every platform the plan built of it (the smoke
    matrix's ``arches``) was smoke-tested on its own architecture, passed, and ran that digest."""
    artifact = f"image:{variant}"
    planned = next((e for e in ctx.plan["matrix"]["smoke"] if e.get("artifact") == artifact), {})
    arches = [a for a in str(planned.get("arches") or "amd64").split(",") if a]
    tested = smoke_platforms(artifacts, artifact)
    for arch in arches:
        where = "" if arch == "amd64" else f" on {arch}"
        result = tested.get(arch)
        if result is None:
            raise PublishError(f"{artifact} was not smoke-tested{where}; nothing was published")
        if not result.get("ok"):
            raise PublishError(
                f"smoke test failed: {artifact}{where} ({result.get('error') or 'failed'}); nothing was published"
            )
        if result.get("digest") != record.get("digest"):
            raise PublishError(
                f"{artifact}: the smoke test{where} ran on {result.get('digest') or result.get('image_id')}, "
                f"the record names {record.get('digest')}: smoke-test the digest you mean to publish; "
                "nothing was published"
            )
