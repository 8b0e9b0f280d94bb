"""``slipway plan``: one JSON document that decides what a run builds and whether it publishes.

GitHub workflows take every matrix from it (``fromJSON``), so no matrix is written twice, and the
same plan drives a local release.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from pydantic import ValidationError

import slipway
from slipway import records
from slipway.config import ReleaseConfig, file_problems, image_repository_problem, index_url_problem
from slipway.errors import MISSING, ConfigError, ConfigProblem
from slipway.version import Version, parse_version, version_from_tag

SCHEMA_VERSION = 1
# The revision of a project folder that is not a git checkout: said plainly, never a made-up commit.
UNKNOWN_REVISION = "unknown"
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")
EVENTS = ("tag", "dispatch", "pull_request", "call", "local")

# Runner labels per wheel architecture; GitHub's hosted arm runners build aarch64 natively.
WHEEL_RUNNERS = {"x86_64": "ubuntu-24.04", "aarch64": "ubuntu-24.04-arm"}
# GitHub event names, as in GITHUB_EVENT_NAME, mapped to ours.
GITHUB_EVENTS = {
    "push": "tag",
    "workflow_dispatch": "dispatch",
    "pull_request": "pull_request",
    "pull_request_target": "pull_request",
    "workflow_call": "call",
}


@dataclass(frozen=True, kw_only=True)
class Trigger:
    event: str
    ref: str = ""
    sha: str = ""
    dry_run: bool | None = None
    variants: tuple[str, ...] = ()
    image_registry: str | None = None
    package_index: str | None = None
    # The repository owner on GitHub (GITHUB_REPOSITORY_OWNER); set only when planning on GitHub,
    # where it decides the default registries (GitHub's defaults below).
    github_owner: str | None = None
    # Running on a GitHub runner (GITHUB_ACTIONS=true): a real release there refuses loopback
    # registries. A GitHub plan replayed on a machine (tests, --github-event) may use them.
    on_github_runner: bool = False
    # Whether this machine has a GPU; a local release without one leaves GPU variants out
    # unless they are named in ``variants``.
    gpu: bool = True


# Where a real release on GitHub publishes unless release.toml or the caller names another
# registry that is not a loopback address (the local defaults are loopback addresses).
GITHUB_IMAGE_REGISTRY = "ghcr.io/{owner}"
GITHUB_PACKAGE_INDEX = "https://upload.pypi.org/legacy/"


def trigger_from_github(
    event_name: str, ref: str, sha: str, payload: dict[str, Any], override: str | None = None,
    owner: str | None = None,
) -> Trigger:
    """Read a GitHub event (name, ref, payload) the way the release workflow receives it.

    A called run (``override`` 'call') sees the *caller's* event, whose payload may hold the
    caller's own workflow_dispatch inputs: those never reach the plan. Its inputs come from the
    called workflow's ``inputs`` only, which the workflow passes as options."""
    event = GITHUB_EVENTS.get(event_name)
    if event is None and override:
        # The caller says what this run is (e.g. a release triggered by 'schedule' or 'release').
        event = override
    if event is None:
        raise ConfigError(
            [ConfigProblem("GITHUB_EVENT_NAME", "event", event_name, f"expected one of {sorted(GITHUB_EVENTS)}")]
        )
    if override:
        event = override
    elif event == "tag" and not ref.startswith("refs/tags/"):
        # A push to a branch is CI, not a release: plan it as a dry run.
        event = "pull_request"
    inputs = (payload.get("inputs") or {}) if event == "dispatch" and event_name == "workflow_dispatch" else {}
    dry_run = _bool_input(inputs.get("dry-run")) if "dry-run" in inputs else None
    variants = tuple(v.strip() for v in str(inputs.get("variants") or "").split(",") if v.strip())
    return Trigger(event=event, ref=ref, sha=sha, dry_run=dry_run, variants=variants, github_owner=owner or "")


def is_loopback(address: str) -> bool:
    """True for an image registry (``host[:port]/path``) or index URL on a loopback address."""
    from urllib.parse import urlsplit

    host = urlsplit(address if "://" in address else f"//{address}").hostname or ""
    return host == "localhost" or host.startswith("127.") or host in ("::1", "0.0.0.0")


def _registries(config: ReleaseConfig, trigger: Trigger, dry_run: bool) -> tuple[str, str]:
    """The image registry and package index of the plan.

    Locally: the caller's overrides, else release.toml. On GitHub (``github_owner`` set): the
    caller's, else release.toml's unless it is a loopback address, else GHCR under the owner and
    PyPI. A real release on GitHub never publishes to a loopback address."""
    key_images, key_packages = "registries.images", "registries.packages"
    images, packages = config.registries.images, config.registries.packages
    if trigger.image_registry:
        images, key_images = trigger.image_registry, "--image-registry (SLIPWAY_IMAGE_REGISTRY)"
    if trigger.package_index:
        packages, key_packages = trigger.package_index, "--package-index (SLIPWAY_PACKAGE_INDEX)"
    if trigger.github_owner is None:
        return images.rstrip("/"), packages
    owner = trigger.github_owner.strip().lower()
    if not trigger.image_registry and is_loopback(images) and owner:
        images, key_images = GITHUB_IMAGE_REGISTRY.format(owner=owner), "GITHUB_REPOSITORY_OWNER"
    if not trigger.package_index and is_loopback(packages):
        packages, key_packages = GITHUB_PACKAGE_INDEX, "the GitHub default"
    if not dry_run and trigger.on_github_runner:
        problems = [
            ConfigProblem(
                str(config.source_path) if key.startswith("registries.") else "plan --github", key, value,
                "a real release on GitHub cannot publish to a loopback address: name a registry the "
                "runners can reach, or leave it to the default (ghcr.io/<owner>, PyPI)"
                + ("" if owner else "; GITHUB_REPOSITORY_OWNER is empty, so there is no ghcr.io default"),
            )
            for key, value in ((key_images, images), (key_packages, packages))
            if is_loopback(value)
        ]
        if problems:
            raise ConfigError(problems)
    return images.rstrip("/"), packages


def _bool_input(value: Any) -> bool:
    # workflow_dispatch delivers booleans as strings in some payloads.
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def git_sha(root: Path) -> str:
    """The commit checked out at ``root``; ``UNKNOWN_REVISION`` when it is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_REVISION
    sha = out.stdout.strip()
    return sha if _COMMIT.match(sha) else UNKNOWN_REVISION


def known_revision(sha: str) -> bool:
    return bool(_COMMIT.match(sha or ""))


def _resolve_version(config: ReleaseConfig, trigger: Trigger) -> Version:
    fixed = parse_version(config.project.version) if config.project.version else None
    is_tag = trigger.ref.startswith("refs/tags/") or (trigger.event == "tag")
    if is_tag:
        try:
            v = version_from_tag(trigger.ref)
        except ValueError as exc:
            raise ConfigError([ConfigProblem("--ref", "ref", trigger.ref, str(exc))]) from None
        if fixed is not None and str(v) != str(fixed):
            raise ConfigError(
                [
                    ConfigProblem(
                        str(config.source_path),
                        "project.version",
                        config.project.version,
                        f"the tag '{trigger.ref}' says {v}; the tag and the project version must agree",
                    )
                ]
            )
        return v
    if fixed is not None:
        return fixed
    # No tag and no fixed version: a development build that can never be mistaken for a release.
    return parse_version("0.0.0.dev0")


# Distribution names that belong to Slipway itself; a project's model package may not take them.
SLIPWAY_NAMES = ("slipway", "slipway-runtime", "slipway-runtime-torch")


def normalize_name(name: str) -> str:
    """A distribution name as indexes compare it (PEP 503)."""
    return canonicalize_name(name)


def import_name(distribution: str) -> str:
    """The import name of a model package: the distribution name normalised (street-detector -> street_detector)."""
    return normalize_name(distribution).replace("-", "_")


def _names_problems(config: ReleaseConfig, version: Version, *, publishing: bool) -> list[ConfigProblem]:
    """Names and versions: a project publishes under its own names; Slipway's runtime at Slipway's version
    (checked when the plan publishes: a dry run publishes nothing)."""
    file = str(config.source_path)
    problems = []
    if publishing and config.wheels.publish_runtime and str(version) != str(parse_version(slipway.__version__)):
        problems.append(ConfigProblem(
            file, "wheels.publish-runtime", True,
            f"publishes Slipway's C++ runtime, which carries Slipway's version {slipway.__version__}; this "
            f"release is {version} (only Slipway's own release, at its own version, publishes the runtime)",
        ))
    seen: dict[str, str] = {}
    for i, model in enumerate(config.models):
        if model not in config.packaged_models():
            if model.package:
                problems.append(ConfigProblem(file, f"models[{i}].package", model.package,
                                              "only a PyTorch model with a TorchScript export is released as a "
                                              "package (it runs on Slipway's C++ runtime)"))
            continue
        name = config.model_package(model)
        key = f"models[{i}].package" if model.package else f"models[{i}].name"
        if normalize_name(name) in SLIPWAY_NAMES:
            problems.append(ConfigProblem(file, key, name, f"the package name '{name}' is Slipway's own; choose "
                                          "a name of the project's (models[].package)"))
        elif normalize_name(name) in seen:
            problems.append(ConfigProblem(file, key, name, f"the same package name as model "
                                          f"'{seen[normalize_name(name)]}'; set models[].package"))
        seen.setdefault(normalize_name(name), model.name)
    return problems


def make_plan(config: ReleaseConfig, trigger: Trigger, *, config_path: str = "release.toml") -> records.Plan:
    if trigger.event not in EVENTS:
        raise ConfigError([ConfigProblem("--event", "event", trigger.event, f"expected one of {', '.join(EVENTS)}")])
    version = _resolve_version(config, trigger)

    known = [v.name for v in config.variants]
    unknown = [v for v in trigger.variants if v not in known]
    if unknown:
        raise ConfigError(
            [
                ConfigProblem("--variants", "variants", v, f"no variant of that name (variants: {', '.join(known)})")
                for v in unknown
            ]
        )
    selected = [
        v for v in config.variants if v.enabled and (not trigger.variants or v.name in trigger.variants)
    ]
    skipped = []
    if trigger.event == "local" and not trigger.gpu and not trigger.variants:
        skipped = [
            records.SkippedVariant(variant=v.name, reason=f"no GPU on this machine; build it with --variants {v.name}")
            for v in selected
            if v.device == "gpu"
        ]
        selected = [v for v in selected if v.device != "gpu"]

    # Pull requests never publish; tags and local releases do unless asked not to; dispatch and
    # calls default to a dry run, so a stray click cannot ship.
    if trigger.event == "pull_request":
        dry_run = True
    elif trigger.dry_run is not None:
        dry_run = trigger.dry_run
    else:
        dry_run = trigger.event not in ("tag", "local")
    is_tag_ref = trigger.ref.startswith("refs/tags/") or (trigger.event == "tag")
    if not dry_run and trigger.event in ("dispatch", "call") and not is_tag_ref:
        raise ConfigError(
            [
                ConfigProblem(
                    "--ref", "ref", trigger.ref or MISSING,
                    "a real (not dry-run) release must run on a version tag; dispatch it on a tag such as v1.2.3",
                )
            ]
        )

    overrides = []
    if trigger.image_registry and (why := image_repository_problem(trigger.image_registry)):
        overrides.append(ConfigProblem("--image-registry", "registries.images", trigger.image_registry, why))
    if trigger.package_index and (why := index_url_problem(trigger.package_index)):
        overrides.append(ConfigProblem("--package-index", "registries.packages", trigger.package_index, why))
    if overrides:
        raise ConfigError(overrides)

    problems = _names_problems(config, version, publishing=not dry_run)
    if problems:
        raise ConfigError(problems)

    images_registry, package_index = _registries(config, trigger, dry_run)

    want_wheels = config.wheels.enabled and (
        not trigger.variants or any(v.runtime == "cpp" for v in selected)
    )
    wheels_model = config.wheels_model() if want_wheels else None
    if want_wheels and wheels_model is None:
        want_wheels = False

    needed_models = [v.model for v in selected]
    if wheels_model is not None:
        needed_models.append(wheels_model.name)
    # Files the release reads first: refused now, before any stage does work.
    missing = file_problems(config, needed_models)
    if missing:
        raise ConfigError(missing)
    export = [
        records.ExportEntry(model=m.name, framework=m.framework, exporters=",".join(config.exporters_for(m)))
        for m in config.models
        if m.name in needed_models
    ]

    wheels: list[records.WheelTarget] = []
    if want_wheels:
        build = " ".join(f"cp{py.replace('.', '')}-*" for py in config.wheels.python)
        for platform in config.wheels.platforms:
            arch = platform.rsplit("_", 1)[-1] if not platform.endswith("x86_64") else "x86_64"
            wheels.append(
                records.WheelTarget(
                    arch=arch,
                    platform=platform,
                    runner=WHEEL_RUNNERS.get(arch, "ubuntu-24.04"),
                    build=build,
                    # The export whose golden outputs the wheel test checks.
                    model=wheels_model.name,
                )
            )

    # The project's model packages (built by 'slipway wheels' with the runtime it depends on).
    packages = [
        records.PlanPackage(model=m.name, package=config.model_package(m),
                            import_name=import_name(config.model_package(m)))
        for m in config.packaged_models()
        if want_wheels and any(e.model == m.name for e in export)
    ]

    images = [
        records.ImageEntry(
            variant=v.name,
            model=v.model,
            framework=config.model(v.model).framework,
            runtime=v.runtime,
            device=v.device,
            dockerfile=v.dockerfile.as_posix(),
            target=v.target,
            platforms=",".join(v.platforms),
            image=f"{images_registry}/{config.project.name}-{v.name}",
        )
        for v in selected
    ]
    # One build per variant and platform, each on a runner of its own architecture (no
    # emulation); a real release merges a variant's platforms into one index afterwards. A dry
    # run builds linux/amd64 only (it saves the image as a tar, which holds one platform).
    image_builds = [
        records.ImageBuild(**v.model_dump(), platform=platform, arch=platform.rsplit("/", 1)[-1])
        for v in images
        for platform in v.platforms.split(",")
        if not dry_run or platform == "linux/amd64"
    ]
    # Every platform built is smoke-tested on a runner of its own architecture: on GitHub,
    # _smoke.yml runs one job per entry and arch in ``arches``; a local release tests its own.
    smoke = [
        records.SmokeEntry(artifact=f"image:{v.variant}", kind="image", variant=v.variant, device=v.device,
                           arches=",".join(b.arch for b in image_builds if b.variant == v.variant))
        for v in images
    ]
    if wheels:
        smoke.append(records.SmokeEntry(artifact="wheels", kind="wheel", variant="", device="cpu", arches="amd64"))
    publish = [records.PublishEntry(kind="models")]
    if images:
        publish.insert(0, records.PublishEntry(kind="images"))
    if wheels:
        publish.insert(1 if images else 0, records.PublishEntry(kind="wheels"))

    sha = trigger.sha or UNKNOWN_REVISION
    notes = []
    if not known_revision(sha):
        sha = UNKNOWN_REVISION
        notes.append(
            f"revision unknown: {config.root} is not a git checkout, so images get no sha- tag and their "
            "revision label says 'unknown'"
        )
    return records.Plan(
        schema_version=SCHEMA_VERSION,
        project=config.project.name,
        version=str(version),
        prerelease=version.prerelease,
        dry_run=dry_run,
        event=trigger.event,
        ref=trigger.ref,
        sha=sha,
        short_sha=sha[:7] if sha != UNKNOWN_REVISION else UNKNOWN_REVISION,
        output_dir=f"dist/{version}",
        config=config_path,
        registries=records.PlanRegistries(images=images_registry, packages=package_index),
        # Slipway's C++ runtime: always Slipway's version; published only by Slipway's own release.
        runtime=records.PlanRuntime(version=str(parse_version(slipway.__version__)),
                                    publish=config.wheels.publish_runtime),
        packages=packages,
        matrix=records.PlanMatrix(export=export, wheels=wheels, images=images, image_builds=image_builds,
                                  smoke=smoke, publish=publish),
        stages=planned_stages(export, wheels, images, smoke, dry_run),
        skipped=skipped,
        notes=notes,
    )


def planned_stages(
    export: Sequence[object], wheels: Sequence[object], images: Sequence[object], smoke: Sequence[object],
    dry_run: bool,
) -> list[str]:
    """The stages this plan runs, named as the jobs of release.yml: the workflow's final gate
    fails the run unless each of them succeeded (a skipped planned stage is a failure)."""
    stages = {
        "export": bool(export), "wheels": bool(wheels), "images": bool(images), "smoke": bool(smoke),
        # The bench measures the exported models (and the CPU images); it runs whenever export does.
        "bench": bool(export), "publish": not dry_run,
    }
    return [name for name, planned in stages.items() if planned]


def load_plan(path: Path) -> records.Plan:
    """The plan a stage runs by (``--plan``). It is the stage's input, as release.toml is: a plan that
    is missing, not JSON or not a plan is a configuration error naming the file and the field."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), "", MISSING, "plan file not found; run 'slipway plan' first")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), "", MISSING, f"cannot be read: {exc}")]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", MISSING, f"not valid JSON: {exc}")]) from None
    version = data.get("schema_version", MISSING) if isinstance(data, dict) else MISSING
    if version != SCHEMA_VERSION:
        raise ConfigError([ConfigProblem(str(path), "schema_version", version, f"expected {SCHEMA_VERSION}")])
    try:
        return records.Plan.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([
            ConfigProblem(str(path), records.location(err["loc"]), err.get("input", MISSING)
                          if err["type"] != "missing" else MISSING, err["msg"])
            for err in exc.errors()
        ]) from None
