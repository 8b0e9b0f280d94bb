"""The CLI as the workflows call it: prepare/record around a build done elsewhere, per-artifact smoke
tests, tagging a pushed digest, assembling the GitHub release.

Each GitHub job runs on a fresh runner with only the artifacts it downloads, so the docker tests
give every step a folder of its own and copy into it just what the workflow's download steps
would (see _images.yml, _smoke.yml, _publish.yml). The build itself, Buildx's in the workflow,
is stood in for by the classic builder with the very outputs `--prepare` wrote; a real release's
"push by digest" by a push under a throw-away tag. Plans come from `slipway plan --github` on
the stored event payloads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_smoke_fixtures import base_image, make_project, remove_images, run_id, write_fake_export

from slipway import engine, records, registry, sbom
from slipway.github import read_outputs, set_outputs
from slipway.stages.images import CPU_TORCH_INDEX
from slipway.stages.publish import image_tags

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "tests" / "fixtures" / "events"
TAG_SHA = "9f2c4d1e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e"

MODEL = """[[models]]
name = "replay-model"
framework = "pytorch"
entry-point = "tests.replay:build"
weights = "replay.pt"
labels = ["circle", "square"]
golden = { hook = "tests.replay:golden", count = 4 }
input = { height = 32, width = 32 }
"""
# A stand-in for dockerfiles/*.Dockerfile: the replay server ships inside the model folder, so the
# staged context (model/) holds everything this image needs.
DOCKERFILE = """ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS replay
COPY model/ /model/
ARG VERSION=0.0.0
ARG GIT_REVISION=unknown
LABEL org.opencontainers.image.version="$VERSION" org.opencontainers.image.revision="$GIT_REVISION"
USER 65534:65534
CMD ["python3", "/model/replay.py"]
"""


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
    """``slipway`` run in ``cwd`` (the job's workspace), with only the environment a job step gives."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "SLIPWAY_"))}
    return subprocess.run(
        [sys.executable, "-m", "slipway.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )


def github_env(tmp: Path, step: str, **extra: str) -> dict[str, str]:
    (tmp / "runner").mkdir(exist_ok=True)
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp / "runner" / f"{step}.out"),
        "GITHUB_STEP_SUMMARY": str(tmp / "runner" / f"{step}.md"),
        **extra,
    }


def plan_step(
    workspace: Path, tmp: Path, fixture: str, event_name: str, ref: str, sha: str, variants: str = ""
) -> tuple[Path, dict]:
    """release.yml/ci.yml's plan job; returns the plan file setup-slipway saves and the plan."""
    plan_file = tmp / "runner" / f"slipway-plan{'-' + variants if variants else ''}.json"
    env = github_env(
        tmp,
        "plan",
        GITHUB_EVENT_NAME=event_name,
        GITHUB_EVENT_PATH=str(EVENTS / fixture),
        GITHUB_REF=ref,
        GITHUB_SHA=sha,
        SLIPWAY_CONFIG="release.toml",
        SLIPWAY_VARIANTS=variants,
    )
    # The run replayed here publishes to this machine's registry, a loopback address, which a
    # real runner (GITHUB_ACTIONS=true) refuses at the plan step (tests/test_plan.py); so the
    # plan step alone runs as a GitHub plan off a runner.
    del env["GITHUB_ACTIONS"]
    res = cli(workspace, "plan", "--github", "--output", str(plan_file), env=env)
    assert res.returncode == 0, res.stderr
    outputs = read_outputs(Path(env["GITHUB_OUTPUT"]))
    plan = json.loads(outputs["plan"])
    assert plan == json.loads(plan_file.read_text())
    return plan_file, plan


def new_job(tmp: Path, name: str, project: Path, plan: dict, downloads: dict[str, Path]) -> Path:
    """A fresh runner's workspace: the project checkout plus the downloaded artifacts."""
    workspace = tmp / name
    shutil.copytree(project, workspace, symlinks=True)
    shutil.rmtree(workspace / "dist", ignore_errors=True)
    out = workspace / plan["output_dir"]
    for relative, source in downloads.items():
        target = out / relative
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return workspace


def project(tmp: Path, uid: str, *, base: str = "python:3.11-slim-bookworm") -> Path:
    folder = tmp / "project"
    make_project(
        folder,
        name=uid,
        models=MODEL,
        variants=[
            {
                "name": "alpha",
                "model": "replay-model",
                "runtime": "torchscript",
                "dockerfile": "replay.Dockerfile",
                "target": "replay",
                "base-image": base,
            },
            {
                "name": "beta-gpu",
                "model": "replay-model",
                "runtime": "onnx",
                "device": "gpu",
                "dockerfile": "replay.Dockerfile",
                "target": "replay",
                "base-image": base,
            },
        ],
        registry=f"127.0.0.1:5000/{uid}",
        version=None,
        request_cases=False,
    )
    (folder / "replay.Dockerfile").write_text(DOCKERFILE)
    return folder


def export_job(workspace: Path, plan: dict) -> Path:
    """What _export.yml leaves in the artifact models-replay-model (a replay export here)."""
    from test_smoke_fixtures import REPLAY_SERVER

    model_dir = write_fake_export(workspace / plan["output_dir"] / "models" / "replay-model", name="replay-model",
                                  config=workspace / "release.toml", version=plan["version"])
    (model_dir / "replay.py").write_text(REPLAY_SERVER)
    return model_dir.parent


# --------------------------------------------------------------------------------------------
# Unit tests


def test_outputs_use_the_multiline_syntax_and_print_without_github(tmp_path, monkeypatch, capsys):
    path = tmp_path / "out"
    monkeypatch.setenv("GITHUB_OUTPUT", str(path))
    set_outputs({"context": "/a/b", "build-args": "A=1\nB=x=y", "empty": ""})
    set_outputs({"later": "z"})
    assert read_outputs(path) == {"context": "/a/b", "build-args": "A=1\nB=x=y", "empty": "", "later": "z"}
    text = path.read_text()
    assert text.startswith("context=/a/b\nbuild-args<<slipway_")
    monkeypatch.delenv("GITHUB_OUTPUT")
    set_outputs({"image": "r/i"})
    assert capsys.readouterr().out == "image=r/i\n"


def test_prepare_on_github_uses_the_official_base_and_the_cpu_index(tmp_path):
    uid = run_id()
    proj = project(tmp_path, uid)
    plan_file, plan = plan_step(proj, tmp_path, "tag_push.json", "push", "refs/tags/v0.1.0", TAG_SHA)
    assert plan["version"] == "0.1.0" and plan["dry_run"] is False
    export_job(proj, plan)
    outputs = {}
    for variant in ("alpha", "beta-gpu"):
        env = github_env(tmp_path, f"prepare-{variant}", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(proj, "images", "--variant", variant, "--prepare", env=env)
        assert res.returncode == 0, res.stderr
        outputs[variant] = read_outputs(Path(env["GITHUB_OUTPUT"]))
    out = proj / plan["output_dir"]
    alpha = outputs["alpha"]
    assert set(alpha) == {"context", "dockerfile", "build-args", "labels", "archive"}
    assert Path(alpha["context"]) == out / "build" / "alpha"
    assert (Path(alpha["context"]) / "model" / "model.json").exists()
    assert Path(alpha["dockerfile"]) == proj / "replay.Dockerfile"
    assert Path(alpha["archive"]) == out / "images" / "alpha.tar"
    args = dict(line.split("=", 1) for line in alpha["build-args"].splitlines())
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"  # as named: no local debootstrap base
    assert args["PIP_EXTRA_INDEX_URL"] == CPU_TORCH_INDEX
    assert (args["VERSION"], args["GIT_REVISION"], args["DEVICE"]) == ("0.1.0", TAG_SHA, "cpu")
    gpu_args = dict(line.split("=", 1) for line in outputs["beta-gpu"]["build-args"].splitlines())
    assert "PIP_EXTRA_INDEX_URL" not in gpu_args and gpu_args["DEVICE"] == "gpu"
    labels = dict(line.split("=", 1) for line in alpha["labels"].splitlines())
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["dev.slipway.variant"] == "alpha"
    # A host wheel cache is no business of a runner's build: the wheelhouse holds only its marker.
    assert [p.name for p in (Path(alpha["context"]) / "wheelhouse").iterdir()] == [".keep"]


def test_record_checks_its_inputs(tmp_path):
    uid = run_id()
    proj = project(tmp_path, uid)
    plan_file, plan = plan_step(proj, tmp_path, "tag_push.json", "push", "refs/tags/v0.1.0", TAG_SHA)
    env = github_env(tmp_path, "record", SLIPWAY_PLAN_FILE=str(plan_file))
    res = cli(proj, "images", "--variant", "alpha", "--record", "--digest", "", env=env)
    assert res.returncode == 3 and "--digest is empty" in res.stderr  # a real release pushed something
    res = cli(proj, "images", "--variant", "alpha", "--record", "--digest", "latest", env=env)
    assert res.returncode == 2 and "sha256:<64 hex digits>" in res.stderr
    res = cli(proj, "images", "--record", "--digest", "sha256:" + "a" * 64, env=env)
    assert res.returncode == 2 and "one variant" in res.stderr
    digest = "sha256:" + "a" * 64
    res = cli(proj, "images", "--variant", "alpha", "--record", "--digest", digest, env=env)
    assert res.returncode == 0, res.stderr
    rec = json.loads((proj / plan["output_dir"] / "images" / "alpha.json").read_text())
    assert rec["digest"] == digest and rec["image"] == f"127.0.0.1:5000/{uid}/{uid}-alpha"
    assert {"variant", "model", "runtime", "device", "platforms"} <= set(rec)
    assert "archive" not in rec


def test_smoke_artifact_must_be_in_the_plan(tmp_path):
    uid = run_id()
    proj = project(tmp_path, uid)
    plan_file, _ = plan_step(proj, tmp_path, "pull_request.json", "pull_request", "refs/pull/42/merge", "2" * 40)
    env = github_env(tmp_path, "smoke", SLIPWAY_PLAN_FILE=str(plan_file))
    res = cli(proj, "smoke", "--artifact", "image:gamma", env=env)
    assert res.returncode == 2 and "image:gamma: not in the plan" in res.stderr
    res = cli(proj, "smoke", "--tfserving", "docker", env=env)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_publish_images_refuses_a_digest_other_than_the_smoke_tested_one(tmp_path):
    uid = run_id()
    proj = project(tmp_path, uid)
    plan_file, plan = plan_step(proj, tmp_path, "tag_push.json", "push", "refs/tags/v0.1.0", TAG_SHA)
    out = proj / plan["output_dir"]
    env = github_env(tmp_path, "record", SLIPWAY_PLAN_FILE=str(plan_file))
    assert cli(proj, "images", "--variant", "alpha", "--record", "--digest", "sha256:" + "a" * 64, env=env).returncode == 0
    (out / "smoke").mkdir(parents=True)
    result = {"artifact": "image:alpha", "kind": "image", "variant": "alpha", "ok": True, "digest": "sha256:" + "b" * 64}
    (out / "smoke" / "image-alpha.json").write_text(json.dumps(result))
    env = github_env(tmp_path, "publish", SLIPWAY_PLAN_FILE=str(plan_file))
    res = cli(proj, "publish", "--kind", "images", "--variant", "alpha", env=env)
    assert res.returncode == 6
    assert "smoke test ran on sha256:bbbb" in res.stderr and "nothing was published" in res.stderr
    assert not Path(env["GITHUB_OUTPUT"]).exists()
    (out / "smoke" / "image-alpha.json").write_text(json.dumps({**result, "ok": False, "error": "2 of 3 differ"}))
    res = cli(proj, "publish", "--kind", "images", "--variant", "alpha", env=env)
    assert res.returncode == 6 and "image:alpha (2 of 3 differ)" in res.stderr


# --------------------------------------------------------------------------------------------
# The job sequence against the real engine and registry


def _build(outputs: dict[str, str], target: str, tag: str) -> str:
    """What build-push-action does with the outputs of --prepare (classic builder here)."""
    def pairs(text: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in text.splitlines() if line)

    return engine.build(Path(outputs["context"]), tag, dockerfile=Path(outputs["dockerfile"]), target=target,
                        build_args=pairs(outputs["build-args"]), labels=pairs(outputs["labels"]), timeout=600)


def _prepare(workspace: Path, tmp: Path, plan_file: Path, variant: str) -> dict[str, str]:
    env = github_env(tmp, f"prepare-{variant}", SLIPWAY_PLAN_FILE=str(plan_file))
    res = cli(workspace, "images", "--variant", variant, "--prepare", env=env)
    assert res.returncode == 0, res.stderr
    return read_outputs(Path(env["GITHUB_OUTPUT"]))


def _smoke_files_have_no_colon(folder: Path) -> None:
    names = [p.name for p in folder.rglob("*")]
    assert names and not [n for n in names if ":" in n]


@pytest.mark.docker
def test_real_release_sequence_pushes_by_digest_smokes_and_tags_that_digest(tmp_path, local_services):
    uid = run_id()
    proj = project(tmp_path, uid, base=base_image())
    try:
        # Without a GPU runner a real release must leave the GPU variant out (release.yml's input
        # `variants`); the release-job step below shows the gate refusing otherwise.
        full_plan_file, full_plan = plan_step(proj, tmp_path, "tag_push.json", "push", "refs/tags/v0.1.0", TAG_SHA)
        assert [e["artifact"] for e in full_plan["matrix"]["smoke"]] == ["image:alpha", "image:beta-gpu"]
        plan_file, plan = plan_step(
            proj, tmp_path, "tag_push.json", "push", "refs/tags/v0.1.0", TAG_SHA, variants="alpha"
        )
        assert [e["artifact"] for e in plan["matrix"]["smoke"]] == ["image:alpha"]
        models = export_job(proj, plan)
        entry = next(e for e in plan["matrix"]["images"] if e["variant"] == "alpha")

        # _images.yml: prepare, build, push by digest, record.
        images_job = new_job(tmp_path, "images-job", proj, plan, {"models": models})
        outputs = _prepare(images_job, tmp_path, plan_file, "alpha")
        local_tag = f"{entry['image']}:build-{uid}"
        _build(outputs, entry["target"], local_tag)
        digest = engine.push(local_tag)
        env = github_env(tmp_path, "record", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(images_job, "images", "--variant", "alpha", "--record", "--digest", digest, env=env)
        assert res.returncode == 0, res.stderr
        image_artifact = images_job / plan["output_dir"] / "images"
        assert [p.name for p in image_artifact.iterdir()] == ["alpha.json"]
        # The smoke runner has nothing local: it must pull by digest.
        engine.remove_image(local_tag)

        # _smoke.yml: one job for image:alpha, with models-* and image-alpha downloaded.
        smoke_job = new_job(tmp_path, "smoke-job", proj, plan, {"models": models, "images": image_artifact})
        env = github_env(tmp_path, "smoke", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(smoke_job, "smoke", "--artifact", "image:alpha", env=env)
        assert res.returncode == 0, res.stderr
        smoke_artifact = smoke_job / plan["output_dir"] / "smoke"
        result = json.loads((smoke_artifact / "image-alpha.json").read_text())
        assert result["ok"] and result["digest"] == digest and result["image"] == f"{entry['image']}@{digest}"
        _smoke_files_have_no_colon(smoke_artifact)
        assert "image alpha" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()

        # _publish.yml images job: image-alpha and smoke-* downloaded; tag the digest.
        publish_job = new_job(
            tmp_path, "publish-job", proj, plan, {"images": image_artifact, "smoke": smoke_artifact}
        )
        env = github_env(tmp_path, "publish-images", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(publish_job, "publish", "--kind", "images", "--variant", "alpha", env=env)
        assert res.returncode == 0, res.stderr
        assert read_outputs(Path(env["GITHUB_OUTPUT"])) == {"image": entry["image"], "digest": digest}
        immutable, moving = image_tags(records.Plan.model_validate(plan))
        for tag in immutable + moving:
            found = registry.manifest(entry["image"], tag)
            assert found and found["digest"] == digest, tag
        published_dir = publish_job / plan["output_dir"] / "publish"
        published = json.loads((published_dir / "alpha.json").read_text())
        assert published["digest"] == digest and set(published["tags"]) == set(immutable + moving)
        # Run again (a re-run of the job): every tag is there already, nothing changes.
        env = github_env(tmp_path, "publish-images-again", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(publish_job, "publish", "--kind", "images", "--variant", "alpha", env=env)
        assert res.returncode == 0, res.stderr
        assert "already" in res.stderr or "same" in res.stderr
        # The SBOM the workflow's anchore step writes next to it.
        sbom_dir = publish_job / plan["output_dir"] / "sbom"
        sbom_dir.mkdir()
        sbom_name = sbom.image_file_name(entry["image"], plan["version"])
        (sbom_dir / sbom_name).write_text(json.dumps(
            {"bomFormat": "CycloneDX", "specVersion": "1.6", "components": [
                {"type": "library", "name": "numpy", "purl": "pkg:pypi/numpy@2.4.6"}]}))

        # _publish.yml github-release job: everything downloaded, then merge, assemble.
        release_job = new_job(
            tmp_path,
            "release-job",
            proj,
            plan,
            {
                "models": models,
                "images": image_artifact,
                "smoke": smoke_artifact,
                "publish": published_dir,
                "sbom": sbom_dir,
            },
        )
        bench = release_job / plan["output_dir"] / "bench"
        bench.mkdir(parents=True)
        (bench / "table.md").write_text("# Bench\n\n| image | p50 |\n|---|---|\n| alpha | 3 ms |\n")
        env = github_env(tmp_path, "release", SLIPWAY_PLAN_FILE=str(full_plan_file))
        res = cli(release_job, "publish", "--kind", "github-release", env=env)
        assert res.returncode == 6 and "not smoke-tested: image:beta-gpu" in res.stderr
        env = github_env(tmp_path, "release", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(release_job, "smoke", "--summarize", env=env)
        assert res.returncode == 0, res.stderr
        res = cli(release_job, "publish", "--kind", "github-release", env=env)
        assert res.returncode == 0, res.stderr
        release = release_job / plan["output_dir"] / "release"
        assets = sorted(p.name for p in (release / "assets").iterdir())
        assert assets == sorted(
            ["replay-model-0.1.0.tar.gz", sbom_name, "smoke-table.md", "release.json", "SHA256SUMS"]
        )
        sums = (release / "assets" / "SHA256SUMS").read_text()
        assert "replay-model-0.1.0.tar.gz" in sums and sbom_name in sums
        assert {"artifact": "image:alpha", "file": sbom_name} in [
            {k: e[k] for k in ("artifact", "file")} for e in json.loads((release / "assets" / "release.json").read_text())["sboms"]]
        record = json.loads((release / "assets" / "release.json").read_text())
        assert record["images"]["alpha"]["digest"] == digest and record["dry_run"] is False
        notes = (release / "notes.md").read_text()
        assert digest in notes and "## Smoke tests" in notes and "image alpha" in notes
        assert "## Benchmarks" in notes and "| alpha | 3 ms |" in notes
    finally:
        remove_images(uid)


@pytest.mark.docker
def test_dry_run_sequence_smokes_the_saved_tar(tmp_path, local_services):
    uid = run_id()
    proj = project(tmp_path, uid, base=base_image())
    try:
        plan_file, plan = plan_step(proj, tmp_path, "pull_request.json", "pull_request", "refs/pull/42/merge", "2" * 40)
        assert plan["dry_run"] is True
        models = export_job(proj, plan)
        entry = next(e for e in plan["matrix"]["images"] if e["variant"] == "alpha")

        images_job = new_job(tmp_path, "images-job", proj, plan, {"models": models})
        outputs = _prepare(images_job, tmp_path, plan_file, "alpha")
        # type=docker,dest=<archive>,name=<image>:<version>
        name = f"{entry['image']}:{plan['version']}"
        built_id = _build(outputs, entry["target"], name)
        engine.save_to(name, Path(outputs["archive"]))
        engine.remove_image(name)
        env = github_env(tmp_path, "record", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(images_job, "images", "--variant", "alpha", "--record", "--digest", "", env=env)
        assert res.returncode == 0, res.stderr
        image_artifact = images_job / plan["output_dir"] / "images"
        rec = json.loads((image_artifact / "alpha.json").read_text())
        assert rec["archive"] == "alpha.tar" and rec["digest"] is None and rec["dry_run"] is True

        smoke_job = new_job(tmp_path, "smoke-job", proj, plan, {"models": models, "images": image_artifact})
        env = github_env(tmp_path, "smoke", SLIPWAY_PLAN_FILE=str(plan_file))
        res = cli(smoke_job, "smoke", "--artifact", "image:alpha", env=env)
        assert res.returncode == 0, res.stderr
        smoke_artifact = smoke_job / plan["output_dir"] / "smoke"
        result = json.loads((smoke_artifact / "image-alpha.json").read_text())
        assert result["ok"] and result["image_id"] == built_id and result["archive"] == "alpha.tar"
        _smoke_files_have_no_colon(smoke_artifact)
        # Nothing went to the registry.
        assert registry.tags(entry["image"]) == []
    finally:
        remove_images(uid)


def test_every_slipway_call_in_the_workflows_parses():
    """The flags the workflows pass exist (and no workflow calls a subcommand that is gone)."""
    import re
    import shlex

    from slipway.cli import build_parser

    calls = []
    for path in sorted((ROOT / ".github").rglob("*.yml")):
        for line in path.read_text().splitlines():
            m = re.search(r"(?:run: |^\s+)slipway (\w.*)$", line)
            if m and not line.lstrip().startswith("#"):
                calls.append((path.name, m.group(1)))
    assert {c.split()[0] for _, c in calls} >= {"plan", "export", "images", "smoke", "publish"}
    for name, call in calls:
        words = [re.sub(r'^"?\$\{?(\w+)\}?"?$', r"value-of-\1", w) for w in shlex.split(call, posix=False)]
        words = [w for w in words if w not in ('"$@"', "$@")]
        try:
            build_parser().parse_args(words)
        except SystemExit as exc:
            pytest.fail(f"{name}: 'slipway {call}' does not parse ({exc})")


def test_publish_registry_overrides_rename_every_image_as_the_plan_would():
    from plans import bare_plan

    from slipway import records
    from slipway.cli import build_parser, override_registries

    plan = bare_plan(
        "1.0.0", project="det", registries={"images": "ghcr.io/acme", "packages": "https://upload.pypi.org/legacy/"},
        matrix={"images": [{"variant": "onnx-cpu", "model": "det", "framework": "pytorch", "runtime": "onnx",
                            "device": "cpu", "dockerfile": "dockerfiles/pytorch.Dockerfile", "target": "onnx-cpu",
                            "platforms": "linux/amd64", "image": "ghcr.io/acme/det-onnx-cpu"}]},
    )
    args = build_parser().parse_args(
        ["publish", "--image-registry", "127.0.0.1:5000/x/", "--package-index", "http://127.0.0.1:8765/"]
    )
    override_registries(plan, args.image_registry, args.package_index)
    data = records.dump(plan)
    assert data["registries"] == {"images": "127.0.0.1:5000/x", "packages": "http://127.0.0.1:8765/"}
    assert data["matrix"]["images"][0]["image"] == "127.0.0.1:5000/x/det-onnx-cpu"
