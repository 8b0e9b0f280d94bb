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
``release-assets/``; with ``--local`` they are copied under the state folder, on GitHub the
workflow makes the GitHub release from that folder.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slipway import registry, sbom, services
from slipway.baseimage import HOST_CA_LABEL
from slipway.context import StageContext
from slipway.errors import BuildError, PublishError, ServiceError
from slipway.fsutil import sha256_file
from slipway.version import parse_version

ASSETS = "release-assets"
# Records that describe a publish and are rewritten by each one; everything else is content
# that, once released under a version, never changes.
RECORDS = ("release.json", "SHA256SUMS", "smoke-table.md")


def image_tags(plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(immutable tags, moving tags) for this release."""
    v = parse_version(plan["version"])
    immutable = [plan["version"], f"sha-{plan['short_sha']}"]
    moving = [] if v.prerelease else [v.major_minor, "latest"]
    return immutable, moving


# --------------------------------------------------------------------------------------------
# 1. The smoke gate


def check_smoke(ctx: StageContext, variants: list[str] | None) -> dict[str, Any]:
    path = ctx.out / "smoke" / "summary.json"
    if not path.exists():
        raise PublishError(
            f"no smoke results in {path.parent}: run 'slipway smoke' first; nothing was published"
        )
    summary = json.loads(path.read_text())
    artifacts = summary.get("artifacts", {})
    wanted = [
        e["artifact"]
        for e in ctx.plan["matrix"]["smoke"]
        if e["kind"] != "image" or not variants or e.get("variant") in variants
    ]
    wheels = sorted((ctx.out / "wheels").glob("*.whl"))
    if wheels and "wheels" not in wanted:
        wanted.append("wheels")
    wanted += [f"wheel:{w.name}" for w in wheels]
    missing = [a for a in wanted if a not in artifacts]
    failed = [
        f"{a} ({artifacts[a].get('error') or 'failed'})"
        for a in wanted
        if a in artifacts and not artifacts[a]["ok"]
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
    images = ctx.read_json("images.json") if (ctx.out / "images.json").exists() else {}
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
        smoke_id = summary["artifacts"].get(f"image:{variant}", {}).get("image_id")
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


def stage_assets(ctx: StageContext, sboms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Fill ``release-assets/``: model archives, SBOMs, the smoke table, SHA256SUMS."""
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
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if res.returncode == 0:
            return
        text = (res.stdout + res.stderr).strip()
        if "409" in text or "already exists" in text.lower():
            # An earlier attempt may have landed before its answer was lost; the check below decides.
            return
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


def run(ctx: StageContext, variants: list[str] | None = None, local: bool = False) -> dict[str, Any]:
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
    try:
        return json.loads(path.read_text()).get("dry_run") is False
    except (OSError, ValueError):
        return False


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
                k: summary["artifacts"].get(f"image:{job.variant}", {}).get(k)
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
