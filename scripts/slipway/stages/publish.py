"""``slipway publish``: ship what the smoke gate proved, and nothing else.

Images are pushed under ``<version>``, ``<major>.<minor>``, ``latest`` (not for prereleases) and
``sha-<short>``. An immutable tag that already holds different content is refused, never
overwritten; one that holds the same content is left alone, so a publish interrupted half-way
is completed by running it again. Transient registry and index errors are retried.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from slipway import registry, services
from slipway.baseimage import HOST_CA_LABEL
from slipway.context import StageContext
from slipway.errors import PublishError, ServiceError
from slipway.fsutil import sha256_file
from slipway.version import parse_version


def image_tags(plan: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(immutable tags, moving tags) for this release."""
    v = parse_version(plan["version"])
    immutable = [plan["version"], f"sha-{plan['short_sha']}"]
    moving = [] if v.prerelease else [v.major_minor, "latest"]
    return immutable, moving


def _check_smoke(ctx: StageContext, variants: list[str] | None) -> dict[str, Any]:
    path = ctx.out / "smoke" / "summary.json"
    if not path.exists():
        raise PublishError(f"no smoke results in {path.parent}: run 'slipway smoke' first; nothing was published")
    summary = json.loads(path.read_text())
    wanted = [e["artifact"] for e in ctx.plan["matrix"]["smoke"]
              if not variants or e.get("variant") in variants or e["kind"] != "image"]
    missing = [a for a in wanted if a not in summary["artifacts"]]
    failed = [a for a in wanted if a in summary["artifacts"] and not summary["artifacts"][a]["ok"]]
    if failed or missing:
        parts = []
        if failed:
            parts.append("failed: " + ", ".join(failed))
        if missing:
            parts.append("not smoke-tested: " + ", ".join(missing))
        raise PublishError(f"refusing to publish ({'; '.join(parts)}); nothing was published")
    return summary


def _push_image(ctx: StageContext, entry: dict[str, Any], smoke_id: str | None, dry_run: bool) -> dict[str, Any]:
    local = entry["tag"]
    image = entry["image"]
    info = json.loads(services.docker("image", "inspect", local, timeout=60).stdout)[0]
    if smoke_id and info["Id"] != smoke_id:
        raise PublishError(
            f"{local} is {info['Id'][:19]}, but the smoke test proved {smoke_id[:19]}: rebuild and smoke-test again"
        )
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(HOST_CA_LABEL) == "true" and not registry.is_loopback(image):
        raise PublishError(
            f"{local} was built on a local base image carrying this host's CA certificates; "
            f"it may go to a loopback registry only, not {image}"
        )
    immutable, moving = image_tags(ctx.plan)
    record: dict[str, Any] = {"image": image, "image_id": info["Id"], "tags": {}}
    for tag in immutable + moving:
        existing = registry.retry(lambda t=tag: registry.manifest(image, t), what=f"look up {image}:{tag}", log=ctx.log)
        same = existing is not None and existing["config"] == info["Id"]
        if existing is not None and not same and tag in immutable:
            raise PublishError(
                f"{image}:{tag} already exists with different content (digest {existing['digest']}); "
                "a published version is never overwritten: release a new version"
            )
        if same:
            ctx.log(f"{image}:{tag} already published ({existing['digest'][:19]}), leaving it")
            record["tags"][tag] = existing["digest"]
            continue
        if dry_run:
            ctx.log(f"dry run: would push {local} as {image}:{tag}")
            record["tags"][tag] = None
            continue
        services.docker("tag", local, f"{image}:{tag}", timeout=60)

        def push(t: str = tag) -> None:
            res = services.docker("push", f"{image}:{t}", check=False, timeout=1800)
            if res.returncode != 0:
                raise registry.Transient(f"docker push failed: {(res.stderr or res.stdout).strip()[-300:]}")

        ctx.log(f"pushing {image}:{tag}")
        registry.retry(push, what=f"push {image}:{tag}", log=ctx.log)
        pushed = registry.retry(lambda t=tag: registry.manifest(image, t), what="read back digest", log=ctx.log)
        if pushed is None or pushed["config"] != info["Id"]:
            raise PublishError(f"{image}:{tag} is not what was pushed: the registry holds {pushed}")
        record["tags"][tag] = pushed["digest"]
    digests = {d for d in record["tags"].values() if d}
    record["digest"] = digests.pop() if len(digests) == 1 else None
    return record


def _write_checksums(ctx: StageContext) -> Path:
    lines = []
    for path in sorted(p for p in ctx.out.rglob("*") if p.is_file()):
        rel = path.relative_to(ctx.out)
        if rel.parts[0] in ("models", "wheels", "sbom") and not any(part.startswith(".") for part in rel.parts):
            lines.append(f"{sha256_file(path)}  {rel.as_posix()}")
    out = ctx.out / "SHA256SUMS"
    out.write_text("\n".join(lines) + "\n")
    return out


def _upload_wheels(ctx: StageContext, dry_run: bool) -> list[dict[str, Any]]:
    wheels = sorted((ctx.out / "wheels").glob("*.whl"))
    if not wheels:
        return []
    index = ctx.plan["registries"]["packages"]
    res = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise PublishError(f"twine check failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    records = []
    for wheel in wheels:
        digest = sha256_file(wheel)
        records.append({"file": wheel.name, "sha256": digest, "index": index})
        if dry_run:
            ctx.log(f"dry run: would upload {wheel.name} to {index}")
            continue

        def upload(w: Path = wheel) -> subprocess.CompletedProcess:
            r = subprocess.run(
                [sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar",
                 "--repository-url", index, "-u", "slipway", "-p", "local", str(w)],
                capture_output=True, text=True,
            )
            text = r.stdout + r.stderr
            if r.returncode != 0 and any(code in text for code in ("500", "502", "503", "Connection", "reset")):
                raise registry.Transient(text.strip().splitlines()[-1] if text.strip() else "upload failed")
            return r

        r = registry.retry(upload, what=f"upload {wheel.name}", log=ctx.log)
        if r.returncode != 0:
            text = r.stdout + r.stderr
            if "409" in text or "already exists" in text.lower():
                if not _index_has_same(index, wheel.name, digest):
                    raise PublishError(f"{wheel.name} is already on {index} with different content; refusing")
                ctx.log(f"{wheel.name} already on the index with the same content, leaving it")
                continue
            raise PublishError(f"uploading {wheel.name} to {index} failed:\n{text[-1500:]}")
        ctx.log(f"uploaded {wheel.name}")
    return records


def _index_has_same(index: str, filename: str, digest: str) -> bool:
    import httpx

    project = filename.split("-")[0].replace("_", "-").lower()
    base = index.rstrip("/")
    try:
        page = httpx.get(f"{base}/simple/{project}/", timeout=15, follow_redirects=True).text
    except httpx.HTTPError:
        return False
    return f"{filename}#sha256={digest}" in page


def run(ctx: StageContext, variants: list[str] | None = None, local: bool = False) -> dict[str, Any]:
    plan = ctx.plan
    dry_run = plan["dry_run"] and not local
    if local:
        ctx.log("publishing to the local registry and index")
    elif dry_run:
        ctx.log("dry run: nothing will be pushed (publish for real on a tag, with --no-dry-run, or --local)")
    smoke = _check_smoke(ctx, variants)
    images = ctx.read_json("images.json") if (ctx.out / "images.json").exists() else {}
    release: dict[str, Any] = {
        "project": plan["project"], "version": plan["version"], "sha": plan["sha"], "dry_run": dry_run,
        "images": {}, "wheels": [], "models": {},
    }
    if local or not dry_run:
        try:
            services.ensure_registry(ctx.log) if local else None
            services.ensure_index(ctx.log) if local else None
        except ServiceError as exc:
            raise PublishError(f"local services are not available: {exc}") from exc
    for entry in plan["matrix"]["images"]:
        variant = entry["variant"]
        if variants and variant not in variants:
            continue
        if variant not in images:
            raise PublishError(f"variant '{variant}' has no built image in images.json; nothing more was published")
        smoke_id = smoke["artifacts"].get(f"image:{variant}", {}).get("image_id")
        release["images"][variant] = _push_image(ctx, images[variant], smoke_id, dry_run)
    release["wheels"] = _upload_wheels(ctx, dry_run)
    for model_dir in sorted((ctx.out / "models").glob("*/model.json")):
        manifest = json.loads(model_dir.read_text())
        release["models"][manifest["name"]] = {
            "manifest_sha256": sha256_file(model_dir), "files": manifest.get("files", {}),
        }
    sums = _write_checksums(ctx)
    release["checksums"] = {"file": sums.name, "sha256": sha256_file(sums)}
    ctx.write_json("release.json", release)
    if local and not dry_run:
        dest = services.state_dir() / "releases" / plan["project"] / plan["version"]
        dest.mkdir(parents=True, exist_ok=True)
        for item in ("release.json", "SHA256SUMS"):
            shutil.copy2(ctx.out / item, dest / item)
        if (ctx.out / "models").exists():
            shutil.copytree(ctx.out / "models", dest / "models", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".*"))
        release["assets"] = str(dest)
        ctx.log(f"release assets in {dest}")
    pushed = sum(1 for r in release["images"].values() for d in r["tags"].values() if d)
    word = "would publish" if dry_run else "published"
    return {"summary": f"{word} {len(release['images'])} image(s) ({pushed} tags), {len(release['wheels'])} wheel(s)",
            "release": release}
