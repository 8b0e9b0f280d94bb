"""``slipway publish``: ship what the smoke gate proved, and nothing else, exactly once.

1. The gate: every planned artifact must have a green smoke result, for the very image ID and
   wheel sha256 that is about to go out; otherwise publish refuses, naming each failure.
2. Preflight, before anything is pushed: ``twine check``, SBOMs and release assets are written,
   and the registry and index are asked what they already hold. An immutable image tag
   (``<version>``, ``sha-<short>``) holding other content, a wheel file on the index with other
   content, or a release asset of this version with other content is a conflict: publish refuses
   and pushes nothing. Moving tags (``<major>.<minor>``, ``latest``; never for a prerelease) follow
   the newest release: they are not moved back by publishing an older version.
3. Then only what is missing is pushed or uploaded; what is there is left. A publish interrupted
   half-way is completed by running it again. Transient failures (connection refused or reset,
   5xx) are retried with backoff, a bounded number of times.

A dry run (the default outside a tag or ``--local``) does steps 1 and 2 and prints the actions it
would take. Release assets (model archives, SBOMs, SHA256SUMS, release.json) are staged in
``release/assets/``; with ``--local`` they are copied under the state folder.

On GitHub publishing is split over the jobs of ``_publish.yml`` (``--kind``):

- ``--kind images --variant V``: the image was pushed by digest, untagged, by the images job.
  The gate checks that the smoke test ran on that very digest; the release tags are then added
  to it in the registry (a manifest PUT of the same bytes: no pull, no rebuild, no new digest),
  with the same preflight as above. ``image`` and ``digest`` go to ``GITHUB_OUTPUT`` for the
  attestations; ``publish/<variant>.json`` records what was tagged.
- ``--kind github-release``: the gate over every planned artifact, then ``release/assets/``
  (model archives, wheels, their CycloneDX SBOMs, the images' SBOMs from ``sbom/``, the smoke
  table, release.json, SHA256SUMS) and ``release/notes.md`` for ``gh release create``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from slipway import registry, sbom, services
from slipway.baseimage import HOST_CA_LABEL
from slipway.context import StageContext
from slipway.errors import BuildError, PublishError, ServiceError
from slipway.fsutil import read_record, sha256_file
from slipway.github import image_records, primary_smoke, set_outputs, smoke_artifacts, smoke_platforms
from slipway.plan import known_revision
from slipway.version import parse_version

ASSETS = "release/assets"
KINDS = ("images", "github-release")
# Records that describe a publish and are rewritten by each one; everything else is content
# that, once released under a version, never changes.
RECORDS = ("release.json", "SHA256SUMS", "smoke-table.md")


def image_tags(plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(immutable tags, moving tags) for this release."""
    v = parse_version(plan["version"])
    immutable = [plan["version"]]
    # A project folder that is not a git checkout has no commit to name (plan: sha 'unknown').
    if known_revision(plan.get("short_sha", "")):
        immutable.append(f"sha-{plan['short_sha']}")
    moving = [] if v.prerelease else [v.major_minor, "latest"]
    return immutable, moving


# --------------------------------------------------------------------------------------------
# 1. The smoke gate


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
    # of its results must pass. Which platforms must be there is _image_gate's question.
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


# --------------------------------------------------------------------------------------------
# What goes out


@dataclass
class ImageJob:
    variant: str
    local: str
    image: str
    image_id: str
    labels: dict[str, str]
    tags: list[tuple[str, bool]] = field(default_factory=list)  # (tag, immutable)
    state: dict[str, str] = field(default_factory=dict)  # tag -> absent|same|different|unknown|skip
    digests: dict[str, str | None] = field(default_factory=dict)


@dataclass
class WheelJob:
    path: Path
    sha256: str
    project: str
    state: str = "unknown"  # absent|same|different|unknown


def collect_images(ctx: StageContext, variants: list[str] | None, summary: dict[str, Any]) -> list[ImageJob]:
    images = image_records(ctx.out)
    immutable, moving = image_tags(ctx.plan)
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
        res = services.docker("image", "inspect", smoke_id, check=False, timeout=60)
        if res.returncode != 0:
            raise PublishError(
                f"the smoke-tested image {smoke_id[:19]} of {variant} is no longer in the local engine "
                "(rebuild and smoke-test it); nothing was published"
            )
        info = json.loads(res.stdout)[0]
        tagged = services.docker("image", "inspect", "-f", "{{.Id}}", built["tag"], check=False, timeout=60)
        if tagged.stdout.strip() != smoke_id:
            ctx.log(f"{built['tag']} now names another image; publishing the smoke-tested {smoke_id[:19]}")
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(HOST_CA_LABEL) == "true" and not registry.is_loopback(entry["image"]):
            raise PublishError(
                f"{built['tag']} was built on a local base image carrying this host's CA certificates; "
                f"it may go to a loopback registry only, not {entry['image']}; nothing was published"
            )
        job = ImageJob(
            variant=variant, local=smoke_id, image=entry["image"], image_id=info["Id"], labels=labels
        )
        job.tags = [(t, True) for t in immutable] + [(t, False) for t in moving]
        jobs.append(job)
    return jobs


def wheel_project(path: Path) -> str:
    return registry.normalize_project(path.name.split("-")[0])


def collect_wheels(ctx: StageContext) -> list[WheelJob]:
    return [
        WheelJob(path=w, sha256=sha256_file(w), project=wheel_project(w))
        for w in sorted((ctx.out / "wheels").glob("*.whl"))
    ]


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


# --------------------------------------------------------------------------------------------
# 2. SBOMs and release assets (written locally, deterministic: the same release gives the same files)


def write_sboms(
    ctx: StageContext, images: list[ImageJob], wheels: list[WheelJob]
) -> dict[str, dict[str, Any]]:
    """One CycloneDX SBOM per image and per wheel under ``sbom/``; artifact -> {file, sha256, components}."""
    folder = ctx.out / "sbom"
    folder.mkdir(parents=True, exist_ok=True)
    created = None
    out: dict[str, dict[str, Any]] = {}
    for job in images:
        name = job.image.rsplit("/", 1)[-1]
        path = folder / f"{name}-{ctx.plan['version']}.cdx.json"
        if not _sbom_current(path, job.image_id):
            ctx.log(f"{job.variant}: SBOM of {job.local}")
            try:
                bom = sbom.image_sbom(
                    job.local,
                    image_id=job.image_id,
                    name=name,
                    version=ctx.plan["version"],
                    labels=job.labels,
                )
            except BuildError as exc:
                raise PublishError(f"{exc}; nothing was published") from exc
            sbom.write(bom, path)
        created = created or job.labels.get("org.opencontainers.image.created")
        out[f"image:{job.variant}"] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "components": sbom.summary(json.loads(path.read_text())),
        }
    for job in wheels:
        path = folder / f"{job.path.name.removesuffix('.whl')}.cdx.json"
        bom = sbom.wheel_sbom(job.path, created=_commit_time(ctx) or created)
        sbom.write(bom, path)
        out[f"wheel:{job.path.name}"] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "components": sbom.summary(bom),
        }
    return out


def _sbom_current(path: Path, image_id: str) -> bool:
    """An image SBOM already written for this very image need not be read out of it again."""
    try:
        bom = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    props = {
        p["name"]: p["value"] for p in bom.get("metadata", {}).get("component", {}).get("properties", [])
    }
    return props.get("slipway:image-id") == image_id and not sbom.validate(bom)


def _commit_time(ctx: StageContext) -> str | None:
    res = subprocess.run(
        ["git", "log", "-1", "--format=%cI", ctx.plan["sha"]], cwd=ctx.root, capture_output=True, text=True
    )
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _deterministic_tar_gz(folder: Path, dest: Path, arcname: str) -> None:
    """A tar.gz whose bytes depend only on the files' names, modes and contents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(
            p
            for p in folder.rglob("*")
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        for path in [folder, *paths]:
            rel = path.relative_to(folder).as_posix()
            info = tar.gettarinfo(str(path), arcname=f"{arcname}/{rel}" if rel != "." else arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())
    tmp.replace(dest)


def stage_assets(
    ctx: StageContext, sboms: dict[str, dict[str, Any]], extra: list[Path] | None = None
) -> dict[str, Any]:
    """Fill ``release/assets/``: model archives, SBOMs, the smoke table, ``extra`` files, SHA256SUMS."""
    folder = ctx.out / ASSETS
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    models: dict[str, Any] = {}
    for manifest_path in sorted((ctx.out / "models").glob("*/model.json")):
        manifest = json.loads(manifest_path.read_text())
        name = f"{manifest['name']}-{ctx.plan['version']}.tar.gz"
        _deterministic_tar_gz(
            manifest_path.parent, folder / name, f"{manifest['name']}-{ctx.plan['version']}"
        )
        models[manifest["name"]] = {
            "asset": name,
            "sha256": sha256_file(folder / name),
            "manifest_sha256": sha256_file(manifest_path),
            "files": manifest.get("files", {}),
        }
    for entry in sboms.values():
        shutil.copy2(ctx.out / "sbom" / entry["file"], folder / entry["file"])
    if (ctx.out / "smoke" / "table.md").exists():
        shutil.copy2(ctx.out / "smoke" / "table.md", folder / "smoke-table.md")
    for path in extra or []:
        shutil.copy2(path, folder / path.name)
    sums = sorted((p.name, sha256_file(p)) for p in folder.iterdir() if p.is_file() and p.name not in RECORDS)
    (folder / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums))
    shutil.copy2(folder / "SHA256SUMS", ctx.out / "SHA256SUMS")
    return {"folder": folder, "models": models, "files": dict(sums)}


# --------------------------------------------------------------------------------------------
# Preflight: what is already there


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
    this = parse_version(ctx.plan["version"])
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
                raise PublishError(f"cannot read {job.image}: {exc}; nothing was published") from exc
            ctx.log(f"{job.image}: cannot tell what is there ({exc}); listing every push")
            job.state = {tag: "unknown" for tag, _ in job.tags}
            continue
        released = _released_versions(existing_tags)
        for tag, immutable in job.tags:
            if tag == "latest" and any(_key(v) > _key(this) for v in released):
                job.state[tag] = "skip: a newer release holds it"
                continue
            if (
                not immutable
                and tag != "latest"
                and any(
                    (v.major, v.minor) == (this.major, this.minor) and v.patch > this.patch for v in released
                )
            ):
                job.state[tag] = "skip: a newer patch release holds it"
                continue
            if tag not in existing_tags:
                job.state[tag] = "absent"
                continue
            found = registry.retry(
                lambda t=tag, j=job: registry.manifest(j.image, t),
                what=f"look up {job.image}:{tag}",
                attempts=attempts,
                log=ctx.log,
            )
            if registry.same_image(found, job.image_id):
                job.state[tag] = "same"
                job.digests[tag] = found["digest"]
            elif found is None:
                job.state[tag] = "absent"
            else:
                job.state[tag] = "different"
                if immutable:
                    what = "a multi-platform index" if found.get("index") else f"image {found.get('config')}"
                    conflicts.append(
                        f"{job.image}:{tag} already holds other content ({what}, digest {found['digest']}); "
                        f"this release's image is {job.image_id}"
                    )
    return conflicts


def _index_digest(simple: str, job: WheelJob) -> tuple[bool, str | None]:
    """(present, sha256) of the index's file of the same name; the file is fetched when no hash is listed."""
    files = registry.index_files(simple, job.project)
    if job.path.name not in files:
        return False, None
    href, digest = files[job.path.name]
    if digest:
        return True, digest
    return True, registry.download_sha256(href)


def preflight_wheels(ctx: StageContext, jobs: list[WheelJob], simple: str, *, dry_run: bool) -> list[str]:
    conflicts = []
    attempts = 1 if dry_run else None
    for job in jobs:
        try:
            present, digest = registry.retry(
                lambda j=job: _index_digest(simple, j),
                what=f"look up {job.path.name}",
                attempts=attempts,
                log=ctx.log,
            )
        except (registry.Transient, registry.RegistryError) as exc:
            if not dry_run:
                raise PublishError(f"cannot read the index {simple}: {exc}; nothing was published") from exc
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


def preflight_assets(assets: dict[str, Any], dest: Path | None) -> list[str]:
    if dest is None or not (dest / "SHA256SUMS").exists():
        return []
    conflicts = []
    for line in (dest / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name in assets["files"] and assets["files"][name] != digest:
            conflicts.append(
                f"release asset {name} of this version already exists in {dest} with other content"
            )
    return conflicts


# --------------------------------------------------------------------------------------------
# 3. Doing it


def _push(ctx: StageContext, job: ImageJob, tag: str) -> str:
    ref = f"{job.image}:{tag}"
    services.docker("tag", job.local, ref, timeout=60)

    def push() -> None:
        res = services.docker("push", ref, check=False, timeout=3600)
        if res.returncode != 0:
            text = (res.stderr or res.stdout or "").strip()
            if registry.is_transient_text(text):
                raise registry.Transient(f"docker push: {text.splitlines()[-1] if text else 'failed'}")
            raise PublishError(f"docker push {ref} failed: {text[-800:]}")

    ctx.log(f"pushing {ref}")
    try:
        registry.retry(push, what=f"push {ref}", log=ctx.log)
        found = registry.retry(
            lambda: registry.manifest(job.image, tag), what=f"read back {ref}", log=ctx.log
        )
    except registry.Transient as exc:
        raise PublishError(
            f"pushing {ref} failed after retries: {exc}; run publish again to complete it"
        ) from exc
    if not registry.same_image(found, job.image_id):
        raise PublishError(f"{ref} does not hold what was pushed ({found and found.get('digest')})")
    ctx.log(f"pushed {ref} ({found['digest']})")
    return found["digest"]


def _upload(ctx: StageContext, job: WheelJob, index: str, simple: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        index,
    ]
    if registry.is_loopback_host(index.split("://", 1)[-1].split("/", 1)[0]) and not os.environ.get(
        "TWINE_USERNAME"
    ):
        # The local pypiserver takes any credentials; twine refuses to run without some.
        cmd += ["-u", "slipway", "-p", "local"]
    cmd.append(str(job.path))

    def upload() -> None:
        # An earlier attempt may have landed before its answer was lost: the index's own listing
        # says whether the file is there (twine's --skip-existing works with PyPI only), and the
        # read-back below decides whether what is there is this file.
        if _index_digest(simple, job)[0]:
            return
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if res.returncode == 0:
            return
        text = (res.stdout + res.stderr).strip()
        if registry.is_transient_text(text):
            raise registry.Transient(f"twine: {text.splitlines()[-1] if text else 'failed'}")
        raise PublishError(f"uploading {job.path.name} to {index} failed:\n{text[-1500:]}")

    ctx.log(f"uploading {job.path.name} to {index}")
    try:
        registry.retry(upload, what=f"upload {job.path.name}", log=ctx.log)
        present, digest = registry.retry(
            lambda: _index_digest(simple, job), what=f"read back {job.path.name}", log=ctx.log
        )
    except registry.Transient as exc:
        raise PublishError(
            f"uploading {job.path.name} failed after retries: {exc}; run publish again"
        ) from exc
    if not present or digest != job.sha256:
        raise PublishError(
            f"{job.path.name} on {simple} is not the file uploaded (sha256 {digest}); refusing to go on"
        )
    ctx.log(f"uploaded {job.path.name}")


def _print_actions(
    ctx: StageContext,
    images: list[ImageJob],
    wheels: list[WheelJob],
    assets: dict[str, Any],
    index: str,
    dest: Path | None,
    dry_run: bool,
) -> list[dict[str, Any]]:
    actions: list[dict[str, Any]] = []
    for job in images:
        for tag, immutable in job.tags:
            state = job.state.get(tag, "unknown")
            if state.startswith("skip"):
                act = "skip"
            elif state == "same":
                act = "keep"
            elif state == "different" and immutable:
                act = "refuse"
            else:
                act = "push"
            actions.append(
                {
                    "action": act,
                    "what": "image",
                    "ref": f"{job.image}:{tag}",
                    "image_id": job.image_id,
                    "state": state,
                    "immutable": immutable,
                }
            )
    for job in wheels:
        act = {"same": "keep", "different": "refuse"}.get(job.state, "upload")
        actions.append(
            {
                "action": act,
                "what": "wheel",
                "ref": job.path.name,
                "sha256": job.sha256,
                "index": index,
                "state": job.state,
            }
        )
    target = str(dest) if dest else f"{ASSETS}/ (the workflow attaches it to the GitHub release)"
    for path in sorted(p for p in assets["folder"].iterdir() if p.is_file()):
        digest = assets["files"].get(path.name) or sha256_file(path)
        actions.append(
            {"action": "asset", "what": "release asset", "ref": path.name, "sha256": digest, "to": target}
        )
    actions.append(
        {
            "action": "asset",
            "what": "release asset",
            "ref": "release.json",
            "sha256": "",
            "to": target,
        }
    )
    head = "dry run: publish would do this; nothing was pushed" if dry_run else "publish will do this"
    lines = [f"{head} ({ctx.plan['project']} {ctx.plan['version']}):"]
    for a in actions:
        detail = {
            "image": lambda a: f"image {a['image_id'][:19]}",
            "wheel": lambda a: f"sha256 {a['sha256'][:12]} -> {a['index']}",
            "release asset": lambda a: f"sha256 {a['sha256'][:12] or '(written last)'} -> {a['to']}",
        }[a["what"]](a)
        verb = {
            "push": "would push" if dry_run else "push",
            "upload": "would upload" if dry_run else "upload",
            "keep": "keep",
            "skip": "skip",
            "refuse": "REFUSE",
            "asset": "would attach" if dry_run else "attach",
        }[a["action"]]
        state = f" [{a['state']}]" if "state" in a else ""
        lines.append(f"  {verb:<13} {a['ref']}  ({detail}){state}")
    print("\n".join(lines), flush=True)
    return actions


# --------------------------------------------------------------------------------------------
# GitHub: tag a digest pushed by the images job (--kind images)


def _docker_config_auth(host: str) -> tuple[str, str] | None:
    """Credentials that ``docker login`` (docker/login-action on GitHub) stored in plain form."""
    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        auths = json.loads((folder / "config.json").read_text()).get("auths") or {}
    except (OSError, ValueError):
        return None
    for key in (host, f"https://{host}", f"http://{host}"):
        encoded = (auths.get(key) or {}).get("auth")
        if encoded:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            return user, password
    return None


def _credentials(host: str) -> tuple[str, str] | None:
    return registry._credentials(host) or _docker_config_auth(host)


def _authorize(refused: httpx.Response, host: str, repo: str) -> dict[str, str]:
    """Answer a 401 for pushing to ``repo``: a bearer token with pull and push scope, or basic auth."""
    challenge = refused.headers.get("WWW-Authenticate", "")
    said = registry.answer(refused)
    creds = _credentials(host)
    if challenge.lower().startswith("basic"):
        if not creds:
            raise registry.RegistryError(
                f"{host} answered 401: {said}; it wants credentials: log in (docker login) or set "
                "SLIPWAY_REGISTRY_USERNAME and SLIPWAY_REGISTRY_PASSWORD",
                status=refused.status_code,
            )
        return {"Authorization": "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()}
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    if not params.get("realm"):
        raise registry.RegistryError(
            f"{host} answered 401: {said}; it named no way to authenticate ({challenge!r})",
            status=refused.status_code,
        )
    query = {"scope": f"repository:{repo}:pull,push"}
    if params.get("service"):
        query["service"] = params["service"]
    try:
        r = httpx.get(params["realm"], params=query, auth=creds, timeout=15)
    except httpx.TransportError as exc:
        raise registry.Transient(f"{type(exc).__name__} from {params['realm']}: {exc}") from exc
    if r.status_code >= 500:
        raise registry.Transient(f"{params['realm']} answered {r.status_code}")
    if r.status_code != 200:
        raise registry.RegistryError(
            f"{params['realm']} refused a push token for {repo}: {r.status_code} {registry.answer(r)}",
            status=r.status_code,
        )
    body = r.json()
    return {"Authorization": f"Bearer {body.get('token') or body.get('access_token')}"}


def _registry_call(method: str, image: str, path: str, headers: dict[str, str], content: bytes | None = None):
    host, repo = registry.split_ref(image)
    url = f"{registry._scheme(host)}://{host}/v2/{repo}/{path}"
    try:
        r = httpx.request(method, url, headers=headers, content=content, timeout=60)
        if r.status_code == 401:
            auth = _authorize(r, host, repo)
            r = httpx.request(method, url, headers={**headers, **auth}, content=content, timeout=60)
    except httpx.TransportError as exc:
        raise registry.Transient(f"{type(exc).__name__} from {host}: {exc}") from exc
    if r.status_code >= 500:
        raise registry.Transient(f"{host} answered {r.status_code}")
    return r


def tag_digest(image: str, digest: str, tag: str) -> None:
    """Point ``image:tag`` at the manifest ``digest`` of the same repository.

    The manifest's own bytes are PUT under the tag, so the tag names exactly the digest that was
    smoke-tested (an index keeps its platforms and attestations), and nothing is pulled or rebuilt.
    """
    r = _registry_call("GET", image, f"manifests/{digest}", {"Accept": registry.MANIFEST_TYPES})
    if r.status_code != 200:
        raise registry.RegistryError(
            f"{image}@{digest}: the registry answered {r.status_code}: {registry.answer(r)}", status=r.status_code
        )
    if hashlib.sha256(r.content).hexdigest() != digest.removeprefix("sha256:"):
        raise PublishError(f"{image}@{digest}: the registry answered a manifest of another digest")
    media_type = r.headers.get("Content-Type") or json.loads(r.content).get("mediaType", "")
    put = _registry_call(
        "PUT", image, f"manifests/{tag}", {"Content-Type": media_type}, content=r.content
    )
    if put.status_code not in (200, 201):
        raise registry.RegistryError(
            f"tagging {image}:{tag} answered {put.status_code}: {registry.answer(put)}", status=put.status_code
        )


def _image_gate(ctx: StageContext, variant: str, record: dict[str, Any], artifacts: dict[str, Any]) -> None:
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


def publish_images(ctx: StageContext, variants: list[str] | None) -> dict[str, Any]:
    """Add the release tags to each smoke-tested digest; one variant per GitHub job."""
    plan = ctx.plan
    dry_run = plan["dry_run"]
    entries = [e for e in plan["matrix"]["images"] if not variants or e["variant"] in variants]
    unknown = sorted(set(variants or ()) - {e["variant"] for e in entries})
    if unknown:
        raise PublishError(f"--variant {', '.join(unknown)}: not in the plan; nothing was published")
    if len(entries) != 1 and os.environ.get("GITHUB_OUTPUT"):
        raise PublishError(f"--kind images writes one image's outputs; name it with --variant ({len(entries)})")
    records = image_records(ctx.out)
    artifacts = smoke_artifacts(ctx.out)
    immutable, moving = image_tags(plan)
    jobs = []
    for entry in entries:
        variant = entry["variant"]
        record = records.get(variant)
        if record is None:
            raise PublishError(f"no record of image {variant} in {ctx.out / 'images'}; nothing was published")
        if not record.get("digest"):
            raise PublishError(
                f"image:{variant} has no pushed digest (built here: publish it with 'slipway publish'); "
                "nothing was published"
            )
        _image_gate(ctx, variant, record, artifacts)
        if record["image"] != entry["image"]:
            raise PublishError(
                f"image:{variant} was pushed to {record['image']}, the plan publishes to {entry['image']}: "
                "tags are added in the repository that holds the digest; nothing was published"
            )
        job = ImageJob(
            variant=variant, local=f"{record['image']}@{record['digest']}", image=entry["image"],
            image_id=record["digest"], labels={},
        )
        job.tags = [(t, True) for t in immutable] + [(t, False) for t in moving]
        jobs.append(job)
    conflicts = preflight_images(ctx, jobs, dry_run=dry_run)
    if conflicts:
        raise PublishError(
            "refusing to publish: this version already exists with other content; nothing was "
            "published:\n  " + "\n  ".join(conflicts)
        )
    for job in jobs:
        for tag, _ in job.tags:
            state = job.state.get(tag, "unknown")
            ref = f"{job.image}:{tag}"
            if state == "same" or state.startswith("skip"):
                ctx.log(f"{ref}: {state}, leaving it")
                continue
            if dry_run:
                ctx.log(f"dry run: would tag {ref} -> {job.image_id}")
                continue
            ctx.log(f"tagging {ref} -> {job.image_id}")
            try:
                registry.retry(lambda j=job, t=tag: tag_digest(j.image, j.image_id, t), what=f"tag {ref}", log=ctx.log)
                found = registry.retry(
                    lambda j=job, t=tag: registry.manifest(j.image, t), what=f"read back {ref}", log=ctx.log
                )
            except registry.Transient as exc:
                raise PublishError(f"tagging {ref} failed after retries: {exc}; run publish again") from exc
            if not found or found["digest"] != job.image_id:
                raise PublishError(f"{ref} does not name {job.image_id} after tagging ({found and found['digest']})")
            job.digests[tag] = found["digest"]
        published = {
            "variant": job.variant,
            "image": job.image,
            "digest": job.image_id,
            "dry_run": dry_run,
            "tags": {t: ("tagged" if not dry_run and not job.state.get(t, "").startswith("skip") else job.state.get(t))
                     for t, _ in job.tags},
        }
        ctx.write_json(f"publish/{job.variant}.json", published)
        set_outputs({"image": job.image, "digest": job.image_id})
    word = "would tag" if dry_run else "tagged"
    return {"summary": f"{word} {', '.join(f'{j.image}@{j.image_id[:19]}' for j in jobs)}", "images": jobs}


# --------------------------------------------------------------------------------------------
# GitHub: assemble the release (--kind github-release)


def _notes(ctx: StageContext, release: dict[str, Any]) -> str:
    plan = ctx.plan
    lines = [f"# {plan['project']} {plan['version']}", "", f"Commit `{plan['sha']}`.", ""]
    if release["images"]:
        lines += ["## Images", "", "| variant | image | digest | tags |", "|---|---|---|---|"]
        for variant, img in sorted(release["images"].items()):
            tags = ", ".join(f"`{t}`" for t, state in (img.get("tags") or {}).items() if state == "tagged")
            lines.append(f"| {variant} | `{img['image']}` | `{img['digest']}` | {tags or '-'} |")
        lines.append("")
    if release["wheels"]:
        lines += ["## Wheels", "", "| file | sha256 |", "|---|---|"]
        lines += [f"| `{w['file']}` | `{w['sha256']}` |" for w in release["wheels"]]
        lines.append("")
    if release["models"]:
        lines += ["## Models", "", "| model | archive | sha256 |", "|---|---|---|"]
        lines += [f"| {m} | `{a['asset']}` | `{a['sha256']}` |" for m, a in sorted(release["models"].items())]
        lines.append("")
    for title, path in (("Smoke tests", ctx.out / "smoke" / "table.md"), ("Benchmarks", ctx.out / "bench" / "table.md")):
        if path.exists():
            body = path.read_text().strip()
            # The tables carry their own level-1 title; the notes have one already.
            body = "\n".join(line for line in body.splitlines() if not line.startswith("# "))
            lines += [f"## {title}", "", body.strip(), ""]
    lines += ["Every asset's sha256 is in `SHA256SUMS`; `release.json` records what was published where.", ""]
    return "\n".join(lines)


def github_release(ctx: StageContext) -> dict[str, Any]:
    """Fill ``release/assets/`` and write ``release/notes.md``; the workflow creates the release."""
    plan = ctx.plan
    summary = check_smoke(ctx, None)
    records = image_records(ctx.out)
    images: dict[str, Any] = {}
    for entry in plan["matrix"]["images"]:
        variant = entry["variant"]
        record = records.get(variant)
        if record is None:
            raise PublishError(f"no record of image {variant} in {ctx.out / 'images'}; nothing was published")
        if record.get("digest"):
            _image_gate(ctx, variant, record, summary["artifacts"])
        path = ctx.out / "publish" / f"{variant}.json"
        published = read_record(path, {})
        if not plan["dry_run"] and published.get("digest") != record.get("digest"):
            raise PublishError(
                f"image:{variant} was not tagged ({path} missing or for another digest): "
                "run 'slipway publish --kind images' first; nothing was published"
            )
        images[variant] = {
            "image": entry["image"],
            "digest": record.get("digest"),
            "tags": published.get("tags", {}),
            "platforms": record.get("platforms"),
            "smoke": {
                k: primary_smoke(summary["artifacts"], f"image:{variant}").get(k)
                for k in ("min_iou", "max_score_diff", "model_server", "gpu")
            },
        }
    wheels = collect_wheels(ctx)
    sboms = write_sboms(ctx, [], wheels)
    for path in sorted((ctx.out / "sbom").glob("*.spdx.json")):
        # The images' SBOMs, generated from the registry by the images job of _publish.yml.
        sboms[f"image:{path.name.removesuffix('.spdx.json')}"] = {
            "file": path.name, "sha256": sha256_file(path), "components": None
        }
    assets = stage_assets(ctx, sboms, extra=[w.path for w in wheels])
    release = {
        "project": plan["project"],
        "version": plan["version"],
        "sha": plan["sha"],
        "ref": plan.get("ref"),
        "prerelease": plan["prerelease"],
        "dry_run": plan["dry_run"],
        "images": images,
        "wheels": [{"file": w.path.name, "sha256": w.sha256, "index": plan["registries"]["packages"],
                    "sbom": sboms.get(f"wheel:{w.path.name}")} for w in wheels],
        "models": assets["models"],
        "sboms": [{"artifact": a, "file": e["file"], "sha256": e["sha256"]} for a, e in sorted(sboms.items())],
        "smoke": {"ok": summary["ok"], "gpu_present": summary.get("gpu_present")},
        "assets": {"folder": ASSETS, "files": assets["files"]},
        "checksums": {"file": "SHA256SUMS", "sha256": sha256_file(assets["folder"] / "SHA256SUMS")},
    }
    ctx.write_json("release.json", release)
    shutil.copy2(ctx.out / "release.json", assets["folder"] / "release.json")
    notes = ctx.out / "release" / "notes.md"
    notes.write_text(_notes(ctx, release))
    count = sum(1 for p in assets["folder"].iterdir() if p.is_file())
    ctx.log(f"release assets: {count} file(s) in {assets['folder']}; notes in {notes}")
    return {"summary": f"{count} release asset(s) staged, notes written", "release": release}


def run(
    ctx: StageContext, variants: list[str] | None = None, local: bool = False, kind: str | None = None
) -> dict[str, Any]:
    if kind == "images":
        return publish_images(ctx, variants)
    if kind == "github-release":
        return github_release(ctx)
    if kind is not None:
        raise PublishError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    plan = ctx.plan
    dry_run = plan["dry_run"] and not local
    if local:
        ctx.log("publishing to the local registry and index")
    elif dry_run:
        ctx.log("dry run: nothing will be pushed (publish for real on a tag, with --no-dry-run, or --local)")
    summary = check_smoke(ctx, variants)
    index = plan["registries"]["packages"]
    simple = registry.simple_url(index, ctx.config.registries.packages_simple)
    if not dry_run:
        _ensure_local_services(ctx, plan)
    images = collect_images(ctx, variants, summary)
    wheels = collect_wheels(ctx)
    twine_check(wheels)
    sboms = write_sboms(ctx, images, wheels)
    assets = stage_assets(ctx, sboms)
    dest = services.state_dir() / "releases" / plan["project"] / plan["version"] if local else None

    conflicts = preflight_images(ctx, images, dry_run=dry_run)
    conflicts += preflight_wheels(ctx, wheels, simple, dry_run=dry_run)
    conflicts += preflight_assets(assets, dest)
    actions = _print_actions(ctx, images, wheels, assets, index, dest, dry_run)
    ctx.write_json("publish-plan.json", {"dry_run": dry_run, "actions": actions, "conflicts": conflicts})
    if conflicts:
        raise PublishError(
            "refusing to publish: this version already exists with other content; nothing was "
            "published:\n  " + "\n  ".join(conflicts)
        )

    if not dry_run:
        for job in images:
            for tag, immutable in job.tags:
                state = job.state.get(tag, "unknown")
                if state == "same" or state.startswith("skip"):
                    if state == "same":
                        ctx.log(f"{job.image}:{tag} already published ({job.digests[tag][:19]}), leaving it")
                    continue
                if state == "different" and immutable:  # preflight refused these already
                    raise AssertionError(tag)
                job.digests[tag] = _push(ctx, job, tag)
        for job in wheels:
            if job.state == "same":
                ctx.log(f"{job.path.name} already on the index with the same content, leaving it")
                continue
            _upload(ctx, job, index, simple)

    release = _release_record(ctx, images, wheels, sboms, assets, summary, index, dry_run)
    record = "release.json"
    if dry_run and _published_before(ctx.out / record):
        # The record of a real publish stays; a later dry run must not pass for it.
        record = "release.dry-run.json"
        ctx.log(f"{ctx.out / 'release.json'} records a real publish; this dry run's record is {record}")
    ctx.write_json(record, release)
    shutil.copy2(ctx.out / record, assets["folder"] / "release.json")
    if dest is not None and not dry_run:
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted(assets["folder"].iterdir()):
            target = dest / path.name
            if path.name in RECORDS or not target.exists():
                shutil.copy2(path, target)
        ctx.log(f"release assets in {dest}")
    elif not dry_run:
        ctx.log(f"release assets staged in {assets['folder']} for the GitHub release")
    pushed = sum(1 for a in actions if a["action"] == "push")
    uploaded = sum(1 for a in actions if a["action"] == "upload")
    word = "would push" if dry_run else "pushed"
    text = f"{word} {pushed} image tag(s) of {len(images)} image(s), {uploaded} of {len(wheels)} wheel(s)"
    return {"summary": text + (" (dry run)" if dry_run else ""), "release": release}


def _published_before(path: Path) -> bool:
    # A damaged release.json is an error (RecordError), never "not published": a dry run must not
    # overwrite what may be the record of a real publish.
    return read_record(path, {}).get("dry_run") is False


def _ensure_local_services(ctx: StageContext, plan: dict[str, Any]) -> None:
    """Start the local registry and index when the plan publishes to them (and only then)."""
    try:
        if (
            plan["matrix"]["images"]
            and registry.split_ref(plan["registries"]["images"])[0] == services.REGISTRY_ADDR
        ):
            services.ensure_registry(ctx.log)
        if plan["registries"]["packages"].rstrip("/").endswith(services.INDEX_ADDR):
            services.ensure_index(ctx.log)
    except ServiceError as exc:
        raise PublishError(f"local services are not available: {exc}") from exc


def _release_record(
    ctx: StageContext,
    images: list[ImageJob],
    wheels: list[WheelJob],
    sboms: dict[str, Any],
    assets: dict[str, Any],
    summary: dict[str, Any],
    index: str,
    dry_run: bool,
) -> dict[str, Any]:
    plan = ctx.plan
    record: dict[str, Any] = {
        "project": plan["project"],
        "version": plan["version"],
        "sha": plan["sha"],
        "prerelease": plan["prerelease"],
        "dry_run": dry_run,
        "images": {},
        "wheels": [],
        "models": assets["models"],
        "sboms": [],
        "smoke": {"ok": summary["ok"], "gpu_present": summary.get("gpu_present")},
    }
    for job in images:
        digests = {t: job.digests.get(t) for t, _ in job.tags}
        distinct = {d for d in digests.values() if d}
        record["images"][job.variant] = {
            "image": job.image,
            "image_id": job.image_id,
            "digest": distinct.pop() if len(distinct) == 1 else None,
            "tags": digests,
            "sbom": sboms.get(f"image:{job.variant}"),
            "smoke": {
                k: primary_smoke(summary["artifacts"], f"image:{job.variant}").get(k)
                for k in ("min_iou", "max_score_diff", "model_server", "gpu")
            },
        }
    for job in wheels:
        record["wheels"].append(
            {
                "file": job.path.name,
                "sha256": job.sha256,
                "index": index,
                "sbom": sboms.get(f"wheel:{job.path.name}"),
            }
        )
    for artifact, entry in sorted(sboms.items()):
        record["sboms"].append(
            {
                "artifact": artifact,
                "file": entry["file"],
                "sha256": entry["sha256"],
                "format": f"CycloneDX {sbom.SPEC_VERSION} JSON",
                "components": entry["components"],
            }
        )
    record["assets"] = {"folder": ASSETS, "files": assets["files"]}
    record["checksums"] = {"file": "SHA256SUMS", "sha256": sha256_file(assets["folder"] / "SHA256SUMS")}
    return record
