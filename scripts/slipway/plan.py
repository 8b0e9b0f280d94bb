"""``slipway plan``: one JSON document that decides what a run builds and whether it publishes.

GitHub workflows take every matrix from it (``fromJSON``), so no matrix is written twice, and the
same plan drives a local release.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slipway.config import ReleaseConfig, file_problems, image_repository_problem, index_url_problem
from slipway.errors import MISSING, ConfigError, ConfigProblem
from slipway.version import Version, parse_version, version_from_tag

SCHEMA_VERSION = 1
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
    # Whether this machine has a GPU; a local release without one leaves GPU variants out
    # unless they are named in ``variants``.
    gpu: bool = True


def trigger_from_github(
    event_name: str, ref: str, sha: str, payload: dict[str, Any], override: str | None = None
) -> Trigger:
    """Read a GitHub event (name, ref, payload) the way the release workflow receives it."""
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
    inputs = payload.get("inputs") or {}
    dry_run = _bool_input(inputs.get("dry-run")) if "dry-run" in inputs else None
    variants = tuple(v.strip() for v in str(inputs.get("variants") or "").split(",") if v.strip())
    return Trigger(event=event, ref=ref, sha=sha, dry_run=dry_run, variants=variants)


def _bool_input(value: Any) -> bool:
    # workflow_dispatch delivers booleans as strings in some payloads.
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "0" * 40


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


def make_plan(config: ReleaseConfig, trigger: Trigger, *, config_path: str = "release.toml") -> dict[str, Any]:
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
            {"variant": v.name, "reason": f"no GPU on this machine; build it with --variants {v.name}"}
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

    images_registry = (trigger.image_registry or config.registries.images).rstrip("/")
    package_index = trigger.package_index or config.registries.packages
    overrides = []
    if trigger.image_registry and (why := image_repository_problem(trigger.image_registry)):
        overrides.append(ConfigProblem("--image-registry", "registries.images", trigger.image_registry, why))
    if trigger.package_index and (why := index_url_problem(trigger.package_index)):
        overrides.append(ConfigProblem("--package-index", "registries.packages", trigger.package_index, why))
    if overrides:
        raise ConfigError(overrides)

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
        {"model": m.name, "framework": m.framework, "exporters": ",".join(config.exporters_for(m))}
        for m in config.models
        if m.name in needed_models
    ]

    wheels = []
    if want_wheels:
        build = " ".join(f"cp{py.replace('.', '')}-*" for py in config.wheels.python)
        for platform in config.wheels.platforms:
            arch = platform.rsplit("_", 1)[-1] if not platform.endswith("x86_64") else "x86_64"
            wheels.append(
                {
                    "arch": arch,
                    "platform": platform,
                    "runner": WHEEL_RUNNERS.get(arch, "ubuntu-24.04"),
                    "build": build,
                    # The export whose golden outputs the wheel test checks.
                    "model": wheels_model.name,
                }
            )

    images = [
        {
            "variant": v.name,
            "model": v.model,
            "framework": config.model(v.model).framework,
            "runtime": v.runtime,
            "device": v.device,
            "dockerfile": v.dockerfile.as_posix(),
            "target": v.target,
            "platforms": ",".join(v.platforms),
            "image": f"{images_registry}/{config.project.name}-{v.name}",
        }
        for v in selected
    ]
    smoke: list[dict[str, Any]] = [
        {"artifact": f"image:{v['variant']}", "kind": "image", "variant": v["variant"], "device": v["device"]}
        for v in images
    ]
    if wheels:
        smoke.append({"artifact": "wheels", "kind": "wheel", "variant": "", "device": "cpu"})
    publish = [{"kind": "models"}]
    if images:
        publish.insert(0, {"kind": "images"})
    if wheels:
        publish.insert(1 if images else 0, {"kind": "wheels"})

    sha = trigger.sha or "0" * 40
    return {
        "schema_version": SCHEMA_VERSION,
        "project": config.project.name,
        "version": str(version),
        "prerelease": version.prerelease,
        "dry_run": dry_run,
        "event": trigger.event,
        "ref": trigger.ref,
        "sha": sha,
        "short_sha": sha[:7],
        "output_dir": f"dist/{version}",
        "config": config_path,
        "registries": {"images": images_registry, "packages": package_index},
        "matrix": {"export": export, "wheels": wheels, "images": images, "smoke": smoke, "publish": publish},
        "skipped": skipped,
    }


def load_plan(path: Path) -> dict[str, Any]:
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), "", MISSING, "plan file not found; run 'slipway plan' first")]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", MISSING, f"not valid JSON: {exc}")]) from None
    if plan.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            [ConfigProblem(str(path), "schema_version", plan.get("schema_version", MISSING), f"expected {SCHEMA_VERSION}")]
        )
    return plan
