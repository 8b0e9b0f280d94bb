"""slipway plan: versions from tags, dry-run rules, matrices; golden-tested whole."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from slipway import records
from slipway.cli import main
from slipway.config import load_config
from slipway.errors import ConfigError
from slipway.plan import Trigger, trigger_from_github
from slipway.plan import make_plan as _make_plan
from slipway.version import parse_version, version_from_tag

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "release.toml")


def make_plan(*args, **kwargs) -> dict:
    """The plan as the JSON that 'slipway plan' writes (checked against its model on the way)."""
    plan = _make_plan(*args, **kwargs)
    assert isinstance(plan, records.Plan)
    return records.dump(plan)


def _golden(name: str, plan: dict) -> None:
    path = GOLDEN / name
    text = json.dumps(plan, indent=2) + "\n"
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert json.loads(path.read_text()) == plan, (
        f"plan differs from {path}; SLIPWAY_UPDATE_GOLDEN=1 rewrites it"
    )
    # Byte for byte as 'slipway plan' writes it, and what it writes reads back as the same plan.
    assert records.dumps(records.read(path, records.Plan)) == path.read_text() == text


def test_tag_plan_golden(config):
    # A project's tag (Slipway's own release.toml, less its fixed version and the runtime it publishes).
    plan = make_plan(
        config.model_copy(update={"project": config.project.model_copy(update={"version": None}),
                                  "wheels": config.wheels.model_copy(update={"publish_runtime": False})}),
        Trigger(event="tag", ref="refs/tags/v1.2.3", sha=SHA),
    )
    assert plan["version"] == "1.2.3" and plan["dry_run"] is False and plan["prerelease"] is False
    _golden("plan-tag.json", plan)


def test_local_plan_golden(config):
    _golden("plan-local.json", make_plan(config, Trigger(event="local", sha=SHA)))


def test_every_variant_is_in_the_images_and_smoke_matrices(config):
    plan = make_plan(config, Trigger(event="local", sha=SHA))
    names = [v.name for v in config.variants]
    assert [e["variant"] for e in plan["matrix"]["images"]] == names
    assert [e["variant"] for e in plan["matrix"]["smoke"] if e["kind"] == "image"] == names
    assert {e["model"] for e in plan["matrix"]["export"]} == {"shapes-torch", "shapes-tf"}
    assert [w["arch"] for w in plan["matrix"]["wheels"]] == ["x86_64", "aarch64"]


def test_variant_subset_narrows_every_matrix(config):
    plan = make_plan(config, Trigger(event="local", sha=SHA, variants=("pytorch-cpu",)))
    assert [e["variant"] for e in plan["matrix"]["images"]] == ["pytorch-cpu"]
    assert [e["model"] for e in plan["matrix"]["export"]] == ["shapes-torch"]
    assert plan["matrix"]["wheels"] == []  # no C++ variant selected
    with pytest.raises(ConfigError, match="no variant of that name"):
        make_plan(config, Trigger(event="local", variants=("pytorch-cuda",)))


@pytest.mark.parametrize(
    ("event", "dry_run", "expected"),
    [
        ("tag", None, False),
        ("local", None, False),
        ("dispatch", None, True),
        ("call", None, True),
        ("dispatch", False, False),
        ("pull_request", False, True),
    ],
)
def test_dry_run_rules(config, event, dry_run, expected):
    ref = "refs/tags/v0.1.0" if event == "tag" or dry_run is False else "refs/heads/main"
    assert make_plan(config, Trigger(event=event, ref=ref, dry_run=dry_run))["dry_run"] is expected


def test_real_release_off_a_tag_is_refused(config):
    with pytest.raises(ConfigError, match="must run on a version tag"):
        make_plan(config, Trigger(event="dispatch", ref="refs/heads/main", dry_run=False))


def test_tag_must_agree_with_fixed_version(config):
    with pytest.raises(ConfigError) as info:
        make_plan(config, Trigger(event="tag", ref="refs/tags/v9.9.9"))
    assert "project.version" in str(info.value) and "v9.9.9" in str(info.value)


@pytest.mark.parametrize("ref", ["vbad", "v1.2", "1.2.3", "refs/tags/release-1"])
def test_bad_tags(ref):
    with pytest.raises(ValueError, match=ref.removeprefix("refs/tags/")):
        version_from_tag(ref)


def test_prerelease_versions():
    assert parse_version("1.2.3-rc.1").prerelease and str(parse_version("1.2.3-rc.1")) == "1.2.3rc1"
    assert not parse_version("1.2.3").prerelease
    assert parse_version("1.2.3").major_minor == "1.2"


@pytest.mark.parametrize(
    ("text", "normalised"),
    [("1.2.3", "1.2.3"), ("1.2.3-rc.1", "1.2.3rc1"), ("1.2.3alpha2", "1.2.3a2"), ("1.2.3-dev.4", "1.2.3.dev4"),
     ("01.2.3", None), ("v1.2.3", None), ("1.2", None), ("1.2.3.4", None), ("1.2.3.post1", None),
     ("1.2.3+cpu", None), ("1!1.2.3", None), ("1.2.3rc1.dev2", None), ("1.2.3-foo", None)],
)
def test_release_versions_are_pep_440_major_minor_patch(text, normalised):
    if normalised is None:
        with pytest.raises(ValueError, match=re.escape(f"'{text}' is not a release version")):
            parse_version(text)
    else:
        assert str(parse_version(text)) == normalised


def test_cli_plan_tag_prints_json(capsys, tmp_path):
    cfg = tmp_path / "release.toml"
    text = (ROOT / "release.toml").read_text().replace('version = "0.1.0"', "# no fixed version")
    cfg.write_text(text.replace("publish-runtime = true", "publish-runtime = false"))
    for sub in ("dockerfiles", "model_export"):
        (tmp_path / sub).symlink_to(ROOT / sub)
    assert main(["plan", "--config", str(cfg), "--event", "tag", "--ref", "v1.2.3", "--sha", SHA]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["version"] == "1.2.3"
    assert set(plan["matrix"]) == {"export", "wheels", "images", "image_builds", "smoke", "publish"}
    assert main(["plan", "--config", str(cfg), "--ref", "vbad"]) == 2
    assert "vbad" in capsys.readouterr().err


def test_github_trigger_reading():
    trig = trigger_from_github(
        "workflow_dispatch",
        "refs/heads/main",
        SHA,
        {"inputs": {"dry-run": "false", "variants": "pytorch-cpu, onnx-cpu"}},
    )
    assert trig.event == "dispatch" and trig.dry_run is False and trig.variants == ("pytorch-cpu", "onnx-cpu")
    assert trigger_from_github("push", "refs/heads/main", SHA, {}).event == "pull_request"
    assert trigger_from_github("push", "refs/tags/v1.0.0", SHA, {}).event == "tag"
    with pytest.raises(ConfigError, match="schedule"):
        trigger_from_github("schedule", "", SHA, {})


def _github_tag(config, **kw):
    return make_plan(config, trigger_from_github("push", "refs/tags/v0.1.0", SHA, {}, owner="Acme-ML", **kw))


def test_github_real_release_defaults_to_ghcr_and_pypi(config):
    """release.toml's loopback registries are local defaults: on GitHub they become GHCR under the
    owner (lowercased) and PyPI; registries the configuration or the caller name are kept."""
    from dataclasses import replace

    plan = _github_tag(config)
    assert plan["registries"] == {"images": "ghcr.io/acme-ml", "packages": "https://upload.pypi.org/legacy/"}
    assert plan["matrix"]["images"][0]["image"] == "ghcr.io/acme-ml/slipway-examples-pytorch-cpu"
    named = config.model_copy(update={"registries": config.registries.model_copy(
        update={"images": "registry.acme.example/ml", "packages": "https://pypi.acme.example/legacy/"})})
    assert _github_tag(named)["registries"] == {"images": "registry.acme.example/ml",
                                                 "packages": "https://pypi.acme.example/legacy/"}
    trig = replace(trigger_from_github("push", "refs/tags/v0.1.0", SHA, {}, owner="acme"),
                   image_registry="docker.io/acme", package_index="https://test.pypi.org/legacy/")
    assert make_plan(config, trig)["registries"] == {"images": "docker.io/acme",
                                                      "packages": "https://test.pypi.org/legacy/"}
    # Locally the configuration stands as written.
    assert make_plan(config, Trigger(event="local", sha=SHA))["registries"]["images"] == "127.0.0.1:5000/slipway"


def test_github_real_release_refuses_a_loopback_registry(config):
    from dataclasses import replace

    trig = replace(trigger_from_github("push", "refs/tags/v0.1.0", SHA, {}, owner="acme"),
                   image_registry="127.0.0.1:5000/x", package_index="http://localhost:8765/", on_github_runner=True)
    with pytest.raises(ConfigError) as info:
        make_plan(config, trig)
    text = str(info.value)
    assert "--image-registry" in text and "127.0.0.1:5000/x" in text and "loopback" in text
    assert "--package-index" in text and "http://localhost:8765/" in text
    # No owner: no GHCR default, and release.toml's loopback registry is named.
    with pytest.raises(ConfigError, match=r"registries\.images"):
        make_plan(config, replace(trigger_from_github("push", "refs/tags/v0.1.0", SHA, {}, owner=""),
                                  on_github_runner=True))
    # A dry run publishes nothing: loopback is harmless there.
    dry = replace(trig, dry_run=True)
    assert make_plan(config, dry)["registries"]["images"] == "127.0.0.1:5000/x"
    # A GitHub plan replayed off a runner (the local GitHub-mode tests) may use loopback.
    assert make_plan(config, replace(trig, on_github_runner=False))["registries"]["images"] == "127.0.0.1:5000/x"


def test_a_called_run_ignores_the_callers_dispatch_inputs():
    """In a called run GitHub hands over the caller's event: a caller's own workflow_dispatch
    input named `variants` or `dry-run` must not reach the plan."""
    payload = {"inputs": {"dry-run": "false", "variants": "pytorch-cpu"}}
    trig = trigger_from_github("workflow_dispatch", "refs/tags/v1.0.0", SHA, payload, override="call")
    assert (trig.event, trig.dry_run, trig.variants) == ("call", None, ())
    # Only this repository's own dispatch reads them (release.yml passes them as options anyway).
    assert trigger_from_github("workflow_dispatch", "refs/tags/v1.0.0", SHA, payload).variants == ("pytorch-cpu",)


def test_planned_stages(config):
    from dataclasses import replace

    full = _github_tag(config)
    assert full["stages"] == ["export", "wheels", "images", "smoke", "bench", "publish"]
    subset = make_plan(config, replace(trigger_from_github("workflow_dispatch", "refs/tags/v0.1.0", SHA, {}),
                                       variants=("pytorch-cpu", "onnx-cpu"), dry_run=True))
    assert subset["stages"] == ["export", "images", "smoke", "bench"]
    # A dry run builds linux/amd64 only; a real release every platform, each smoke-tested natively.
    assert [b["platform"] for b in subset["matrix"]["image_builds"]] == ["linux/amd64", "linux/amd64"]
    assert [b["platform"] for b in full["matrix"]["image_builds"] if b["variant"] == "pytorch-cpu"] == [
        "linux/amd64", "linux/arm64"]
    assert next(e for e in full["matrix"]["smoke"] if e["variant"] == "pytorch-cpu")["arches"] == "amd64,arm64"


def _project(config, **wheels):
    """Slipway's release.toml as another project's: its own name, no runtime published."""
    return config.model_copy(update={
        "project": config.project.model_copy(update={"name": "street-scenes", "version": "2.4.1"}),
        "wheels": config.wheels.model_copy(update={"publish_runtime": False, **wheels}),
    })


def test_a_folder_that_is_not_a_git_checkout_has_an_unknown_revision(config, tmp_path):
    from slipway.plan import git_sha
    from slipway.stages.publish import image_tags

    assert git_sha(tmp_path) == "unknown"
    plan = make_plan(config, Trigger(event="local", sha=git_sha(tmp_path)))
    assert plan["sha"] == plan["short_sha"] == "unknown"
    assert any("not a git checkout" in note and "no sha- tag" in note for note in plan["notes"])
    assert image_tags(records.Plan.model_validate(plan)) == (["0.1.0"], ["0.1", "latest"])
    # A checkout's plan names its commit and tags it.
    plan = make_plan(config, Trigger(event="local", sha=SHA))
    assert plan["notes"] == [] and image_tags(records.Plan.model_validate(plan))[0] == ["0.1.0", "sha-0123456"]


def test_runtime_at_slipways_version_and_model_packages_of_the_projects_names(config):
    import slipway

    own = make_plan(config, Trigger(event="local", sha=SHA))
    assert own["runtime"] == {"version": slipway.__version__, "publish": True}
    theirs = make_plan(_project(config), Trigger(event="local", sha=SHA))
    assert theirs["version"] == "2.4.1"
    assert theirs["runtime"] == {"version": slipway.__version__, "publish": False}
    assert theirs["packages"] == [{"model": "shapes-torch", "package": "street-scenes-shapes-torch",
                                   "import": "street_scenes_shapes_torch"}]
    named = _project(config)
    models = tuple(m.model_copy(update={"package": "Street.Detector"}) if m.name == "shapes-torch" else m
                   for m in named.models)
    plan = make_plan(named.model_copy(update={"models": models}), Trigger(event="local", sha=SHA))
    assert plan["packages"][0]["package"] == "Street.Detector" and plan["packages"][0]["import"] == "street_detector"


def test_publishing_the_runtime_needs_slipways_version(config):
    tagged = config.model_copy(update={"project": config.project.model_copy(update={"version": None})})
    with pytest.raises(ConfigError) as err:
        make_plan(tagged, Trigger(event="tag", ref="refs/tags/v1.2.3", sha=SHA))
    assert "wheels.publish-runtime" in str(err.value) and "1.2.3" in str(err.value)
    # A dry run publishes nothing; Slipway's own version publishes.
    assert make_plan(tagged, Trigger(event="pull_request", ref="refs/tags/v1.2.3", sha=SHA))["dry_run"]
    assert make_plan(tagged, Trigger(event="tag", ref="refs/tags/v0.1.0", sha=SHA))["runtime"]["publish"]


@pytest.mark.parametrize("name", ["slipway-runtime", "Slipway_Runtime_Torch", "slipway"])
def test_a_model_package_may_not_take_slipways_names(config, name):
    project = _project(config)
    models = tuple(m.model_copy(update={"package": name}) if m.name == "shapes-torch" else m for m in project.models)
    with pytest.raises(ConfigError, match=r"models\[0\]\.package.*Slipway's own"):
        make_plan(project.model_copy(update={"models": models}), Trigger(event="local", sha=SHA))


def test_a_package_name_on_a_model_that_is_not_packaged_is_refused(config):
    project = _project(config)
    models = tuple(m.model_copy(update={"package": "harbour-tf"}) if m.name == "shapes-tf" else m
                   for m in project.models)
    with pytest.raises(ConfigError, match=r"models\[1\]\.package = 'harbour-tf'.*only a PyTorch model"):
        make_plan(project.model_copy(update={"models": models}), Trigger(event="local", sha=SHA))
