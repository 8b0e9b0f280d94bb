"""SBOMs and release assets, written locally and deterministically: the same release gives the
same bytes (model archives with fixed times and owners, sorted SHA256SUMS).

- ``write_sboms``: one CycloneDX SBOM per image (read out of the local image) and per wheel,
  under ``sbom/``.
- ``stage_assets``: ``release/assets/`` filled with the model archives, the SBOMs, the smoke
  table, any extra files (the wheels on GitHub) and ``SHA256SUMS``.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from slipway import records, sbom
from slipway.context import StageContext
from slipway.errors import BuildError, PublishError
from slipway.fsutil import sha256_file
from slipway.stages.publish.jobs import ASSETS, RECORDS, ImageJob, WheelJob


@dataclass(frozen=True)
class StagedAssets:
    """``release/assets/`` as ``stage_assets`` left it: the model archives, and file -> sha256 of
    every asset but the records rewritten by each publish (what ``SHA256SUMS`` lists)."""

    folder: Path
    models: dict[str, records.ReleaseModel]
    files: dict[str, str]


def write_sboms(ctx: StageContext, images: list[ImageJob], wheels: list[WheelJob]) -> dict[str, records.SbomRef]:
    """One CycloneDX SBOM per image and per wheel under ``sbom/``; artifact -> file, sha256, components."""
    folder = ctx.out / "sbom"
    folder.mkdir(parents=True, exist_ok=True)
    created = None
    out: dict[str, records.SbomRef] = {}
    for job in images:
        name = job.image.rsplit("/", 1)[-1]
        path = folder / f"{name}-{ctx.plan.version}.cdx.json"
        if not _sbom_current(path, job.image_id):
            ctx.log(f"{job.variant}: SBOM of {job.local}")
            try:
                bom = sbom.image_sbom(
                    job.local,
                    image_id=job.image_id,
                    name=name,
                    version=ctx.plan.version,
                    labels=job.labels,
                )
            except BuildError as exc:
                raise PublishError(f"{exc}; nothing was published") from exc
            sbom.write(bom, path)
        created = created or job.labels.get("org.opencontainers.image.created")
        out[f"image:{job.variant}"] = sbom_ref(path)
    for job in wheels:
        path = folder / f"{job.path.name.removesuffix('.whl')}.cdx.json"
        bom = sbom.wheel_sbom(job.path, created=_commit_time(ctx) or created)
        sbom.write(bom, path)
        out[f"wheel:{job.path.name}"] = records.SbomRef(
            file=path.name, sha256=sha256_file(path), components=sbom.summary(bom)
        )
    return out


def sbom_ref(path: Path) -> records.SbomRef:
    """An SBOM written under ``sbom/`` as the release record names it: file, sha256, components.
    A CycloneDX document that cannot be read is an error naming it."""
    try:
        bom = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PublishError(f"{path}: not a readable CycloneDX SBOM ({exc}); nothing was published") from None
    return records.SbomRef(file=path.name, sha256=sha256_file(path), components=sbom.summary(bom))


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
        ["git", "log", "-1", "--format=%cI", ctx.plan.sha], cwd=ctx.root, capture_output=True, text=True
    )
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def deterministic_tar_gz(folder: Path, dest: Path, arcname: str) -> None:
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
    ctx: StageContext, sboms: dict[str, records.SbomRef], extra: list[Path] | None = None
) -> StagedAssets:
    """Fill ``release/assets/``: model archives, SBOMs, the smoke table, ``extra`` files, SHA256SUMS."""
    folder = ctx.out / ASSETS
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    models: dict[str, records.ReleaseModel] = {}
    for manifest_path in sorted((ctx.out / "models").glob("*/model.json")):
        manifest = records.read(manifest_path, records.ModelManifest)
        stem = f"{manifest.name}-{ctx.plan.version}"
        deterministic_tar_gz(manifest_path.parent, folder / f"{stem}.tar.gz", stem)
        models[manifest.name] = records.ReleaseModel(
            asset=f"{stem}.tar.gz",
            sha256=sha256_file(folder / f"{stem}.tar.gz"),
            manifest_sha256=sha256_file(manifest_path),
            files=manifest.files,
        )
    for entry in sboms.values():
        shutil.copy2(ctx.out / "sbom" / entry.file, folder / entry.file)
    if (ctx.out / "smoke" / "table.md").exists():
        shutil.copy2(ctx.out / "smoke" / "table.md", folder / "smoke-table.md")
    for path in extra or []:
        shutil.copy2(path, folder / path.name)
    sums = sorted((p.name, sha256_file(p)) for p in folder.iterdir() if p.is_file() and p.name not in RECORDS)
    (folder / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums))
    shutil.copy2(folder / "SHA256SUMS", ctx.out / "SHA256SUMS")
    return StagedAssets(folder=folder, models=models, files=dict(sums))
