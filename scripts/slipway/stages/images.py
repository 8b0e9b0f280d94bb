"""``slipway images``: build one image per variant from the shared multi-stage Dockerfiles.

Each variant gets a build context of its own under ``build/<variant>/`` (service code, shared
pre/postprocessing, requirements, its model export, a wheelhouse of local wheels), so the engine
receives only what that image needs and unchanged variants rebuild from cache.

On GitHub the build itself is docker/build-push-action's (Buildx, ``type=gha`` cache, several
platforms, push by digest), so this stage splits in two around it:

- ``--prepare`` stages the same build context and writes what the build step needs to
  ``GITHUB_OUTPUT``: ``context``, ``dockerfile``, ``build-args``, ``labels`` and ``archive`` (where
  a dry run saves its tar). There the base image is the variant's official one (the local
  debootstrap base exists only on a developer's engine), and the CPU variants get PyTorch's CPU
  index as ``PIP_EXTRA_INDEX_URL`` (``CPU_TORCH_INDEX``): the runner's pip would otherwise fetch
  the CUDA build of torch from PyPI, and no local wheel cache is there to prefer. A variant's own
  ``build-args`` in release.toml override both.
- ``--record --digest D`` writes ``images/<variant>.json``, the per-variant record that the smoke
  and publish jobs download (``images.json`` is the local, all-variants file).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from slipway import baseimage, engine, records, services
from slipway.context import StageContext, StageResult
from slipway.errors import BuildError, ConfigError
from slipway.fsutil import link_or_copy, sync_tree
from slipway.github import on_github, set_outputs
from slipway.paths import resolve, resource

# The service's requirements: always Slipway's own (its pins are what the service was tested with).
CONTEXT_FILES = ("requirements.txt", "requirements-pytorch.txt", "requirements-tensorflow.txt")
CONTEXT_PACKAGES = ("serving", "model_export")
# A project's extra requirements (requirements.txt beside its release.toml), installed on top of the
# service's and constrained by them; staged under this name, empty when the project has none.
PROJECT_REQUIREMENTS = "requirements-project.txt"
# Printed by the Dockerfiles when the project's requirements cannot be installed with the service's pins.
PROJECT_REQUIREMENTS_FAILED = "SLIPWAY-PROJECT-REQUIREMENTS-FAILED"
# Weights, training code and the example models stay out of images: the export is what runs.
PACKAGE_IGNORE = ("__pycache__", "*.pyc", "weights", "train.py", "examples")
# CPU-only torch wheels for the image builds on GitHub (a fraction of the CUDA build's size).
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def _pinned(requirements: Path, package: str) -> str | None:
    for line in requirements.read_text().splitlines():
        m = re.match(rf"^\s*{re.escape(package)}\s*==\s*([^\s;#]+)", line)
        if m:
            return m.group(1)
    return None


def torch_wheel(ctx: StageContext) -> Path | None:
    """The torch CPU wheel, fetched once by the host's pip into slipway's wheel cache.

    pip inside an image build cannot see the host's local wheel folders; the wheelhouse can.
    """
    version = _pinned(resource("requirements-pytorch.txt"), "torch")
    if not version:
        return None
    cache = services.state_dir() / "wheelhouse"
    cache.mkdir(parents=True, exist_ok=True)
    # The CPU build carries a local version label (+cpu) on some indexes; accept both.
    pattern = f"torch-{version}*-cp{sys.version_info.major}*manylinux*x86_64.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[-1]
    ctx.log(f"fetching the torch {version} CPU wheel into the wheel cache (one time)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache),
           f"torch=={version}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if res.returncode != 0 or not found:
        ctx.log(f"no local torch wheel ({res.stderr.strip().splitlines()[-1:] if res.stderr else ''}); "
                "the image build will use the index")
        return None
    return found[-1]


def project_requirements(root: Path) -> Path | None:
    """The project's own requirements.txt beside its release.toml; None when it has none.

    Slipway's own release.toml sits beside the service's requirements.txt: that is not a project's.
    """
    path = root / "requirements.txt"
    if not path.is_file():
        return None
    own = resource("requirements.txt")
    if path.resolve() == own.resolve():
        return None
    return path


def stage_project_requirements(ctx: StageContext, build: Path) -> Path | None:
    """Write ``requirements-project.txt`` into the build context (empty without a project file)."""
    src = project_requirements(ctx.root)
    dest = build / PROJECT_REQUIREMENTS
    if src is None:
        dest.write_text("# the project has no requirements.txt beside its release.toml\n")
        return None
    shutil.copy2(src, dest)
    return src


def stage_context(ctx: StageContext, entry: records.ImageEntry, *, local_torch: bool = True) -> Path:
    """Assemble the build context of one variant; return its folder.

    ``local_torch``: put the host's cached torch CPU wheel in the wheelhouse (a local engine's
    builds may not reach an index); a build with the CPU index in its arguments needs none.
    """
    build = ctx.out / "build" / entry.variant
    build.mkdir(parents=True, exist_ok=True)
    # The service (code and requirements) is always Slipway's; the project's requirements add to it.
    for name in CONTEXT_FILES:
        shutil.copy2(resource(name), build / name)
    stage_project_requirements(ctx, build)
    for package in CONTEXT_PACKAGES:
        sync_tree(resource(package), build / package, ignore=PACKAGE_IGNORE)
    model_dir = ctx.out / "models" / entry.model
    if not (model_dir / "model.json").exists():
        raise BuildError(
            f"variant '{entry.variant}' needs the export of model '{entry.model}' in {model_dir}: "
            "run 'slipway export' first"
        )
    sync_tree(model_dir, build / "model", ignore=("__pycache__", ".fingerprint"))
    wheelhouse = build / "wheelhouse"
    if wheelhouse.exists():
        shutil.rmtree(wheelhouse)
    wheelhouse.mkdir()
    wanted: list[Path] = []
    if local_torch and entry.runtime == "torchscript" and entry.device == "cpu":
        wheel = torch_wheel(ctx)
        if wheel:
            wanted.append(wheel)
    if entry.runtime == "cpp":
        from slipway.stages.wheels import runtime_wheels

        # Slipway's self-contained runtime, from wheels/ (Slipway's own release) or runtime/.
        wheels = [w for w in runtime_wheels(ctx.out) if w.name.startswith("slipway_runtime-")]
        if not wheels:
            raise BuildError(
                f"variant '{entry.variant}' needs the C++ runtime wheel in {ctx.out / 'runtime'} or "
                f"{ctx.out / 'wheels'}: run 'slipway wheels' first"
            )
        wanted.extend(w for w in wheels if f"cp{sys.version_info.major}{sys.version_info.minor}" in w.name)
    for wheel in wanted:
        link_or_copy(wheel, wheelhouse / wheel.name)
    (wheelhouse / ".keep").touch()
    return build


def build_failure(ctx: StageContext, variant: str, log_path: Path) -> str:
    """The message of a failed build; one that failed on the project's requirements names its file."""
    text = log_path.read_text()
    lines = text.splitlines()
    if PROJECT_REQUIREMENTS_FAILED in text:
        src = project_requirements(ctx.root) or ctx.root / "requirements.txt"
        # pip's own lines, from its first error to the marker the failed step printed (the builder
        # also echoes the step's command, which holds the marker too: not that line).
        marks = [i for i, line in enumerate(lines) if PROJECT_REQUIREMENTS_FAILED in line and "echo" not in line]
        end = marks[0] if marks else len(lines)
        start = next((i for i, line in enumerate(lines[:end]) if "ERROR" in line), max(0, end - 25))
        pip = "\n".join(lines[start:end][-30:])
        return (f"image build of variant '{variant}' failed: the project's requirements ({src}) cannot be "
                f"installed on top of the service's pinned requirements (log: {log_path}):\n{pip}")
    tail = "\n".join(lines[-25:])
    return f"image build of variant '{variant}' failed (log: {log_path}):\n{tail}"


def _created(ctx: StageContext) -> str:
    """The commit time, not the build time: a rebuild of the same commit gives the same image."""
    res = subprocess.run(["git", "log", "-1", "--format=%cI"], cwd=ctx.root, capture_output=True, text=True)
    return res.stdout.strip() or "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Inspected:
    """What the engine says about a built image."""

    id: str
    size: int
    layers: list[records.ImageLayer]
    labels: dict[str, str]


def inspect_image(ref: str) -> Inspected:
    info = engine.image_inspect(ref)
    layers = []
    for row in engine.image_history(ref):
        size = int(row.get("Size") or 0)
        if size:
            layers.append(records.ImageLayer(size=size, created_by=(row.get("CreatedBy") or "")[:200]))
    return Inspected(
        id=info["Id"],
        size=int(info["Size"]),
        layers=sorted(layers, key=lambda layer: -layer.size),
        labels=(info.get("Config") or {}).get("Labels") or {},
    )


def select(ctx: StageContext, variants: list[str] | None) -> list[records.ImageEntry]:
    entries = ctx.plan.matrix.images
    if variants:
        unknown = sorted(set(variants) - {e.variant for e in entries})
        if unknown:
            raise ConfigError(f"--variant {', '.join(unknown)}: not in the plan")
        entries = [e for e in entries if e.variant in variants]
    return entries


def build_args(
    ctx: StageContext, entry: records.ImageEntry, base: str, created: str, defaults: dict[str, str] | None = None
) -> dict[str, str]:
    """The build arguments of one variant; the variant's own ``build-args`` win over ``defaults``."""
    variant = ctx.config.variant(entry.variant)
    return {
        "BASE_IMAGE": base,
        "DEVICE": entry.device,
        "VERSION": ctx.plan.version,
        "GIT_REVISION": ctx.plan.sha,
        "CREATED": created,
        "SOURCE": ctx.config.project.source,
        **(defaults or {}),
        **variant.build_args,
    }


def labels(ctx: StageContext, entry: records.ImageEntry, created: str) -> dict[str, str]:
    """OCI labels for a Buildx build; the Dockerfile sets the same from its arguments, these also
    reach every platform's manifest and the index."""
    return {
        "org.opencontainers.image.version": ctx.plan.version,
        "org.opencontainers.image.revision": ctx.plan.sha,
        "org.opencontainers.image.source": ctx.config.project.source,
        "org.opencontainers.image.created": created,
        "dev.slipway.variant": entry.variant,
        "dev.slipway.model": entry.model,
        "dev.slipway.runtime": entry.runtime,
        "dev.slipway.device": entry.device,
    }


def _dockerfile(ctx: StageContext, entry: records.ImageEntry) -> Path:
    dockerfile = resolve(entry.dockerfile, ctx.root)
    if dockerfile is None:
        raise BuildError(f"variant '{entry.variant}': Dockerfile {entry.dockerfile} not found")
    return dockerfile


def archive_path(ctx: StageContext, variant: str) -> Path:
    """Where a dry run's build saves the image (``type=docker,dest=``); uploaded with the record."""
    return ctx.out / "images" / f"{variant}.tar"


def prepare(
    ctx: StageContext,
    variants: list[str] | None = None,
    base_image: str | None = None,
    host_ca: str = "auto",
    official_base: bool | None = None,
) -> StageResult:
    """Stage the build context of each variant and hand the build's inputs to the workflow."""
    official = on_github() if official_base is None else official_base
    entries = select(ctx, variants)
    if len(entries) != 1 and os.environ.get("GITHUB_OUTPUT"):
        # Step outputs are one value per name: one variant per step.
        raise ConfigError(f"--prepare writes one variant's outputs; name one with --variant ({len(entries)} selected)")
    created = _created(ctx)
    prepared = {}
    for entry in entries:
        variant = ctx.config.variant(entry.variant)
        requested = base_image or variant.base_image
        if official:
            base = requested
        else:
            base = baseimage.resolve_base_image(requested, host_ca=host_ca, log=ctx.log)
        defaults = {"PIP_EXTRA_INDEX_URL": CPU_TORCH_INDEX} if official and entry.device == "cpu" else {}
        build = stage_context(ctx, entry, local_torch=not official)
        args = build_args(ctx, entry, base, created, defaults)
        archive = archive_path(ctx, entry.variant)
        archive.parent.mkdir(parents=True, exist_ok=True)
        outputs = {
            "context": str(build),
            "dockerfile": str(_dockerfile(ctx, entry)),
            "build-args": "\n".join(f"{k}={v}" for k, v in args.items()),
            "labels": "\n".join(f"{k}={v}" for k, v in labels(ctx, entry, created).items()),
            "archive": str(archive),
        }
        set_outputs(outputs)
        ctx.log(f"{entry.variant}: build context in {build} (base {base})")
        prepared[entry.variant] = outputs
    return {"summary": f"prepared {', '.join(prepared)}", "prepared": prepared}


DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _export_inputs(ctx: StageContext, model: str) -> str | None:
    """The export an image is built from (its recorded inputs, hashed): publish refuses an image of
    another export than the one the release ships."""
    from slipway.smoketest import export_digest

    path = ctx.out / "models" / model / "model.json"
    manifest = records.read(path, records.ModelManifest, None)
    return export_digest(manifest) if manifest is not None else None


def record(ctx: StageContext, variants: list[str] | None = None, digest: str | None = None) -> StageResult:
    """Write ``images/<variant>.json`` for an image built outside this stage (Buildx on GitHub).

    A real release records the digest it pushed; a dry run records the saved tar (``archive``,
    relative to ``images/``) and the digest if the build gave one.
    """
    entries = select(ctx, variants)
    if len(entries) != 1:
        raise ConfigError(f"--record records one variant; name it with --variant ({len(entries)} selected)")
    entry = entries[0]
    digest = (digest or "").strip() or None
    if digest is not None and not DIGEST.match(digest):
        raise ConfigError(f"--digest {digest!r}: expected sha256:<64 hex digits>")
    archive = archive_path(ctx, entry.variant)
    dry_run = ctx.plan.dry_run
    if not dry_run and digest is None:
        raise BuildError(f"variant '{entry.variant}': a real release records the pushed digest; --digest is empty")
    if digest is None and not archive.exists():
        raise BuildError(f"variant '{entry.variant}': no --digest and no saved image at {archive}")
    rec = records.ImageRecord(
        variant=entry.variant,
        model=entry.model,
        runtime=entry.runtime,
        device=entry.device,
        platforms=entry.platforms,
        image=entry.image,
        # The name a dry run's tar carries (build-push-action's name=<image>:<version>).
        tag=f"{entry.image}:{ctx.plan.version}",
        digest=digest,
        version=ctx.plan.version,
        sha=ctx.plan.sha,
        dry_run=dry_run,
        export_inputs=_export_inputs(ctx, entry.model),
    )
    if archive.exists():
        rec.archive = archive.name
        rec.archive_size = archive.stat().st_size
    ctx.write(f"images/{entry.variant}.json", rec)
    what = digest or f"the saved image {archive.name}"
    ctx.log(f"{entry.variant}: recorded {entry.image} ({what}) in images/{entry.variant}.json")
    return {"summary": f"recorded {entry.variant}", "record": rec}


def run(ctx: StageContext, variants: list[str] | None = None, base_image: str | None = None,
        host_ca: str = "auto", step: str | None = None, official_base: bool | None = None,
        digest: str | None = None) -> StageResult:
    """Build every selected variant here; ``step`` runs only one half of a build done elsewhere."""
    if step == "prepare":
        return prepare(ctx, variants, base_image=base_image, host_ca=host_ca, official_base=official_base)
    if step == "record":
        return record(ctx, variants, digest=digest)
    entries = select(ctx, variants)
    services.ensure_docker(ctx.log)
    images = ctx.read("images.json", records.ImagesIndex, records.ImagesIndex({})).root
    created = _created(ctx)
    bases: dict[str, str] = {}
    for entry in entries:
        variant = ctx.config.variant(entry.variant)
        requested = base_image or variant.base_image
        if requested not in bases:
            bases[requested] = baseimage.resolve_base_image(requested, host_ca=host_ca, log=ctx.log)
        build = stage_context(ctx, entry)
        tag = f"{entry.image}:{ctx.plan.version}"
        args = build_args(ctx, entry, bases[requested], created)
        dockerfile = _dockerfile(ctx, entry)
        ctx.log(f"{entry.variant}: building {tag} (target {entry.target}, base {bases[requested]})")
        started = time.monotonic()
        log_path = ctx.out / "build" / f"{entry.variant}.log"
        last = time.monotonic()

        def progress(line: str, variant: str = entry.variant) -> None:
            nonlocal last
            # Progress without flooding: the build's step lines, at most every few seconds.
            if ctx.verbose or (line.startswith(("#", "Step ")) and time.monotonic() - last > 5):
                ctx.log(f"{variant}: {line.rstrip()[:150]}")
                last = time.monotonic()

        with open(log_path, "w") as log:
            try:
                engine.build(build, tag, dockerfile=dockerfile, target=entry.target, build_args=args,
                             log_to=log, on_line=progress)
            except engine.BuildFailed as exc:
                log.flush()
                raise BuildError(build_failure(ctx, entry.variant, log_path)) from exc
        seconds = time.monotonic() - started
        info = inspect_image(tag)
        images[entry.variant] = records.ImageRecord(
            variant=entry.variant,
            model=entry.model,
            runtime=entry.runtime,
            device=entry.device,
            image=entry.image,
            tag=tag,
            base_image=bases[requested],
            build_seconds=round(seconds, 1),
            export_inputs=_export_inputs(ctx, entry.model),
            id=info.id,
            size=info.size,
            layers=info.layers,
            labels=info.labels,
        )
        ctx.write("images.json", records.ImagesIndex(images))
        # The per-variant record too, so a reader that overlays images/ never sees an older one.
        ctx.write(f"images/{entry.variant}.json", images[entry.variant])
        ctx.log(f"{entry.variant}: built in {seconds:.1f}s, {info.size / 1e6:.0f} MB")
    sizes = ", ".join(f"{v}: {(images[v].size or 0) / 1e6:.0f} MB" for v in (e.variant for e in entries))
    return {"summary": sizes, "images": images}
