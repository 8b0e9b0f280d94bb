"""``slipway publish``: the smoke gate, idempotence, refusals, retries, SBOMs and release assets.

The docker tests publish small replay images (FROM the local base image, see
test_smoke_fixtures.py) and a replay wheel through the real CLI: real smoke results, a real
registry, a real package index. The broken-model case, with real model images, is in test_smoke.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from plans import bare_plan
from test_errors import _RefusingRegistry
from test_smoke_fixtures import (
    TestIndex,
    TestRegistry,
    build_replay_image,
    image_entry,
    make_project,
    make_replay_wheel,
    make_wheel,
    registry_state,
    remove_images,
    run_id,
    slipway,
    write_fake_export,
)

from slipway import engine, records, registry, sbom, services
from slipway.config import load_config
from slipway.context import StageContext
from slipway.errors import PublishError
from slipway.stages import publish
from slipway.stages.publish import assets as release_assets
from slipway.stages.publish import gate, jobs

REPLAY_MODEL = """[[models]]
name = "replay-model"
framework = "pytorch"
entry-point = "tests.replay:build"
weights = "replay.pt"
labels = ["circle", "square"]
golden = { hook = "tests.replay:golden", count = 4 }
input = { height = 32, width = 32 }
"""
VARIANTS = [
    {
        "name": "alpha",
        "model": "replay-model",
        "runtime": "torchscript",
        "dockerfile": "dockerfiles/pytorch.Dockerfile",
        "target": "pytorch-cpu",
    },
    {
        "name": "beta",
        "model": "replay-model",
        "runtime": "torchscript",
        "dockerfile": "dockerfiles/pytorch.Dockerfile",
        "target": "pytorch-cpu",
    },
]


# --------------------------------------------------------------------------------------------
# Unit tests: no engine needed


def test_image_tags_release_and_prerelease():
    sha = "abcdef0" + "0" * 33
    assert publish.image_tags(bare_plan("1.2.3", sha)) == (
        ["1.2.3", "sha-abcdef0"],
        ["1.2", "latest"],
    )
    assert publish.image_tags(bare_plan("1.2.3rc1", sha)) == (
        ["1.2.3rc1", "sha-abcdef0"],
        [],
    )


def test_retry_is_bounded_and_retries_only_transient_errors(monkeypatch):
    monkeypatch.setattr(registry.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise registry.Transient("connection refused")
        return "ok"

    assert registry.retry(flaky, what="x", attempts=5) == "ok"
    assert len(calls) == 3

    calls.clear()

    def down():
        calls.append(1)
        raise registry.Transient("503")

    with pytest.raises(registry.Transient):
        registry.retry(down, what="x", attempts=4)
    assert len(calls) == 4

    calls.clear()

    def denied():
        calls.append(1)
        raise PublishError("denied: requested access to the resource is denied")

    with pytest.raises(PublishError):
        registry.retry(denied, what="x", attempts=4)
    assert len(calls) == 1


def test_retry_attempts_and_backoff_come_from_the_environment(monkeypatch):
    delays = []
    monkeypatch.setattr(registry.time, "sleep", delays.append)
    monkeypatch.setenv("SLIPWAY_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("SLIPWAY_RETRY_BASE_S", "2")

    def down():
        raise registry.Transient("reset")

    with pytest.raises(registry.Transient):
        registry.retry(down, what="x")
    assert len(delays) == 2
    assert 1.0 <= delays[0] <= 3.0 and 2.0 <= delays[1] <= 6.0  # jittered exponential


def test_publish_reaches_registries_through_the_client_and_the_engine_through_one_module():
    """Every registry and index call of publish goes through slipway.registry (no HTTP library, no
    private part of the client); every engine call through engine_calls, and there through slipway.engine."""
    import ast

    folder = Path(publish.__file__).parent
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"httpx", "requests", "urllib.request", "http.client"}, path.name
        attrs = {(n.value.id, n.attr) for n in ast.walk(tree)
                 if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
        assert not [a for m, a in attrs if m == "registry" and a.startswith("_")], path.name
        assert ("services", "docker") not in attrs, path.name
        if path.name != "engine_calls.py":
            assert not [a for m, a in attrs if m == "engine"], path.name


def test_simple_index_url_of_an_upload_url():
    assert registry.simple_url("http://127.0.0.1:8765/") == "http://127.0.0.1:8765/simple/"
    assert registry.simple_url("https://upload.pypi.org/legacy/") == "https://pypi.org/simple/"
    assert registry.simple_url("https://test.pypi.org/legacy/") == "https://test.pypi.org/simple/"
    assert registry.simple_url("https://x/legacy/", "https://y/simple") == "https://y/simple/"


class _FlakyRegistry(BaseHTTPRequestHandler):
    """Answers 503 twice, then a manifest; counts the requests."""

    hits: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        if len(type(self).hits) <= 2:
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": "sha256:" + "c" * 64},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Docker-Content-Digest", "sha256:" + "d" * 64)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_registry_lookups_survive_5xx_answers():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        image = f"127.0.0.1:{server.server_address[1]}/repo/name"
        found = registry.retry(lambda: registry.manifest(image, "1.0.0"), what="look up", base=0.01)
        assert found["config"] == "sha256:" + "c" * 64
        assert registry.same_image(found, "sha256:" + "c" * 64)
        assert len(_FlakyRegistry.hits) == 3
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_registry_is_transient():
    from slipway.smoketest import free_port

    with pytest.raises(registry.Transient):
        registry.manifest(f"127.0.0.1:{free_port()}/repo/name", "1.0.0")


def _context(tmp_path: Path, plan: dict, summary: dict | None) -> StageContext:
    config = load_config(
        make_project(
            tmp_path / "proj",
            name="unit",
            models=REPLAY_MODEL,
            variants=VARIANTS,
            registry="127.0.0.1:5000/unit",
        )
    )
    out = tmp_path / "out"
    (out / "smoke").mkdir(parents=True)
    if summary is not None:
        # A summary as 'slipway smoke' writes it: what the test does not set is empty.
        summary = {"failed": [], "version": "1.0.0", "sha": "0" * 40, "table": [], **summary}
        (out / "smoke" / "summary.json").write_text(json.dumps(summary))
    return StageContext(config=config, plan=plan, out=out, root=config.root)


def _plan(artifacts: list[str]) -> records.Plan:
    return bare_plan("1.0.0", sha="abcdef0" + "0" * 33, matrix={
        "smoke": [{"artifact": a, "kind": "image", "variant": a.split(":")[1], "device": "cpu", "arches": "amd64"}
                  for a in artifacts]
    })


def test_gate_refuses_naming_every_failed_and_untested_artifact(tmp_path):
    summary = {
        "ok": False,
        "artifacts": {
            "image:alpha": {"ok": True, "error": ""},
            "image:beta": {"ok": False, "error": "2 of 4 golden image(s) differ from the reference"},
        },
    }
    ctx = _context(tmp_path, _plan(["image:alpha", "image:beta", "image:gamma"]), summary)
    with pytest.raises(PublishError) as err:
        gate.check_smoke(ctx, None)
    text = str(err.value)
    assert "image:beta (2 of 4 golden image(s) differ" in text
    assert "not smoke-tested: image:gamma" in text
    assert "nothing was published" in text
    assert "image:alpha" not in text
    # Narrowed to the green variant, the gate opens.
    assert gate.check_smoke(ctx, ["alpha"]).artifacts["image:alpha"].ok


def test_gate_refuses_without_smoke_results_and_for_changed_wheels(tmp_path):
    ctx = _context(tmp_path, _plan(["image:alpha"]), None)
    with pytest.raises(PublishError, match="run 'slipway smoke' first"):
        gate.check_smoke(ctx, None)
    wheel = make_wheel(
        ctx.out / "wheels", dist="unit-pkg", version="1.0", files={"unit_pkg/__init__.py": ""}, readme="# x"
    )
    summary = {
        "ok": True, "failed": [], "version": "1.0.0", "sha": "0" * 40, "table": [],
        "artifacts": {
            "image:alpha": {"ok": True},
            "wheels": {"ok": True},
            f"wheel:{wheel.name}": {"ok": True, "sha256": "0" * 64},
        },
    }
    (ctx.out / "smoke" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(
        PublishError, match=re.escape(f"wheel:{wheel.name} (changed since it was smoke-tested)")
    ):
        gate.check_smoke(ctx, None)


def test_model_archive_is_byte_for_byte_reproducible(tmp_path):
    model = write_fake_export(tmp_path / "m", name="m")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    release_assets.deterministic_tar_gz(model, first, "m-1.0.0")
    for path in model.rglob("*"):
        path.touch()  # new mtimes must not change the archive
    (model / ".fingerprint").write_text("hidden files stay out")
    release_assets.deterministic_tar_gz(model, second, "m-1.0.0")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert "m-1.0.0/model.json" in names and "m-1.0.0/golden/reference.json" in names
    assert not any(".fingerprint" in n for n in names)


def _official_schema_problems(bom: dict) -> str | None:
    """Problems found by CycloneDX's own JSON schema (cyclonedx-python-lib), or None. The SBOM unit
    tests are in test_sbom.py."""
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(sbom.SCHEMA).validate_str(json.dumps(bom))
    return str(error) if error else None


# --------------------------------------------------------------------------------------------
# With the real engine, registry and index


@pytest.fixture(scope="module")
def replay_release(tmp_path_factory, local_services):
    """Two smoke-tested replay images and a smoke-tested replay wheel, ready to publish."""
    uid = run_id()
    root = tmp_path_factory.mktemp("replay-release")
    config = make_project(
        root / "proj",
        name=uid,
        models=REPLAY_MODEL,
        variants=VARIANTS,
        registry=f"127.0.0.1:5000/{uid}",
        version=None,
        request_cases=False,
    )
    out = root / "out"
    model_dir = write_fake_export(out / "models" / "replay-model", name="replay-model", config=config)
    images = {}
    for variant in ("alpha", "beta"):
        tag = f"localhost/{uid}/{variant}:build"
        build_replay_image(root / "ctx" / variant, tag=tag, model_dir=model_dir, content=f"{uid} {variant}")
        images[variant] = image_entry(variant, tag, model="replay-model")
    (out / "images.json").write_text(json.dumps(images, indent=1))
    wheel = make_replay_wheel(out / "wheels", dist=f"{uid}-runtime", model_dir=model_dir)
    res = slipway("plan", "--config", str(config), "--ref", "v0.0.1", "-o", str(out / "plan.json"))
    assert res.returncode == 0, res.stderr
    res = slipway("smoke", "--config", str(config), "--out", str(out))
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "smoke" / "summary.json").read_text())
    assert set(summary["artifacts"]) == {"image:alpha", "image:beta", "wheels", f"wheel:{wheel.name}"}
    yield SimpleNamespace(
        uid=uid, root=root, config=config, out=out, images=images, wheel=wheel, model_dir=model_dir
    )
    remove_images(uid)


def _release_copy(
    rel: SimpleNamespace,
    tmp_path: Path,
    *,
    version: str,
    image_registry: str,
    index: str,
    extra: tuple[str, ...] = (),
) -> Path:
    """This test's own output folder (a copy) with a plan for ``version`` to the given registry and index."""
    out = tmp_path / "out"
    shutil.copytree(rel.out, out)
    res = slipway(
        "plan",
        "--config",
        str(rel.config),
        "--ref",
        f"v{version}",
        "--image-registry",
        image_registry,
        "--package-index",
        index,
        *extra,
        "-o",
        str(out / "plan.json"),
    )
    assert res.returncode == 0, res.stderr
    return out


def _publish(rel: SimpleNamespace, out: Path, *args: str, env: dict[str, str] | None = None):
    return slipway(
        "publish",
        "--config",
        str(rel.config),
        "--out",
        str(out),
        "--plan",
        str(out / "plan.json"),
        *args,
        env=env,
    )


def _dry_plan(out: Path) -> Path:
    plan = json.loads((out / "plan.json").read_text())
    path = out.parent / "dry-plan.json"
    path.write_text(json.dumps({**plan, "dry_run": True}))
    return path


FAST_RETRIES = {"SLIPWAY_RETRY_ATTEMPTS": "3", "SLIPWAY_RETRY_BASE_S": "0.2"}


@pytest.mark.docker
def test_publish_interrupted_by_registry_crash_completes_on_rerun(replay_release, tmp_path):
    rel = replay_release
    reg, index = TestRegistry(tmp_path / "registry"), TestIndex(tmp_path / "index")
    reg.start()
    index.start()
    try:
        prefix = f"{reg.address}/{rel.uid}"
        out = _release_copy(rel, tmp_path, version="1.2.0", image_registry=prefix, index=index.url)
        alpha, beta = f"{prefix}/{rel.uid}-alpha", f"{prefix}/{rel.uid}-beta"
        # The project folder is not a git checkout: no sha- tag (plan: short_sha 'unknown').
        short = json.loads((out / "plan.json").read_text())["short_sha"]
        expected_tags = {"1.2.0", "1.2", "latest", *([] if short == "unknown" else [f"sha-{short}"])}

        # First attempt: the registry crashes (SIGKILL) right after the first tag is pushed.
        first_digest, lines = None, []
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway.cli",
                "publish",
                "--config",
                str(rel.config),
                "--out",
                str(out),
                "--plan",
                str(out / "plan.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **FAST_RETRIES},
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                m = re.search(rf"pushed {re.escape(alpha)}:1\.2\.0 \((sha256:[0-9a-f]+)\)", line)
                if m and first_digest is None:
                    first_digest = m.group(1)
                    reg.kill()
        assert proc.wait(timeout=600) == 6, "".join(lines)
        output = "".join(lines)
        assert first_digest, output
        assert "retrying" in output and "run publish again" in output
        assert not (out / "release.json").exists()

        reg.start()  # same storage: what was pushed before the crash is still there
        partial = {
            **{f"alpha:{t}": d for t, d in registry_state(alpha).items()},
            **{f"beta:{t}": d for t, d in registry_state(beta).items()},
        }
        assert partial.get("alpha:1.2.0") == first_digest
        assert len(partial) < 2 * len(expected_tags), partial
        assert registry.index_files(f"{index.url}simple/", f"{rel.uid}-runtime") == {}

        # Second attempt completes what is missing and leaves what is there.
        res = _publish(rel, out, env=FAST_RETRIES)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{alpha}:1.2.0 already published" in res.stderr
        release = json.loads((out / "release.json").read_text())
        for variant, image in (("alpha", alpha), ("beta", beta)):
            state = registry_state(image)
            assert set(state) == expected_tags, state
            assert len(set(state.values())) == 1, state  # every tag: one and the same manifest
            assert release["images"][variant]["digest"] == next(iter(state.values()))
            assert release["images"][variant]["tags"] == state
        assert registry_state(alpha)["1.2.0"] == first_digest
        files = registry.index_files(f"{index.url}simple/", f"{rel.uid}-runtime")
        assert list(files) == [rel.wheel.name]
        assert files[rel.wheel.name][1] == hashlib.sha256(rel.wheel.read_bytes()).hexdigest()

        # A third run has nothing left to do.
        res = _publish(rel, out, env=FAST_RETRIES)
        assert res.returncode == 0, res.stderr
        assert "pushing" not in res.stderr and "uploading" not in res.stderr

        # A dry run afterwards lists everything as kept and leaves the record of the real publish.
        before = (out / "release.json").read_text()
        res = _publish(rel, out, "--plan", str(_dry_plan(out)))
        assert res.returncode == 0, res.stderr
        assert "would push" not in res.stdout and "would upload" not in res.stdout
        assert (out / "release.json").read_text() == before
        assert json.loads((out / "release.dry-run.json").read_text())["dry_run"] is True
        assert registry_state(alpha)["1.2.0"] == first_digest
        assert list(registry.index_files(f"{index.url}simple/", f"{rel.uid}-runtime")) == [rel.wheel.name]
    finally:
        reg.stop()
        index.stop()


@pytest.mark.docker
@pytest.mark.parametrize("status", [401, 403, 400])
def test_a_registry_refusing_the_engines_push_ends_in_exit_6_with_its_own_message(replay_release, tmp_path, status):
    """The registry reads fine and refuses every write: docker push fails, publish asks the registry
    (a blob upload, as a push begins) and ends with its status and words, not docker's wording."""
    rel = replay_release
    _RefusingRegistry.status, _RefusingRegistry.where, _RefusingRegistry.requests = status, "write", []
    _RefusingRegistry.message = f"this registry takes no pushes ({status})"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prefix = f"127.0.0.1:{server.server_address[1]}/{rel.uid}"
        out = _release_copy(rel, tmp_path, version="7.0.0", image_registry=prefix, index="http://127.0.0.1:8765/")
        res = _publish(rel, out, env=FAST_RETRIES)
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 6, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert _RefusingRegistry.message in res.stderr and f"answered {status}" in res.stderr, res.stderr
    assert "retrying" not in res.stderr  # a refusal is an answer, not an accident
    # The registry's own answer to publish's question (a blob upload), after docker's push failed.
    assert f"docker push {prefix}/{rel.uid}-alpha:7.0.0 failed: 127.0.0.1" in res.stderr, res.stderr
    assert not (out / "release.json").exists()


@pytest.mark.docker
def test_publish_refuses_same_version_with_other_image(replay_release, tmp_path):
    rel = replay_release
    prefix = f"127.0.0.1:5000/{rel.uid}"
    out = _release_copy(rel, tmp_path, version="2.0.0", image_registry=prefix, index="http://127.0.0.1:8765/")
    # Another run on this engine moves alpha's local tag: what goes out is still the smoke-tested image.
    alpha_id = rel.images["alpha"]["id"]
    engine.tag(rel.images["beta"]["id"], rel.images["alpha"]["tag"])
    try:
        res = _publish(rel, out)
    finally:
        engine.tag(alpha_id, rel.images["alpha"]["tag"])
    assert res.returncode == 0, res.stderr
    assert "now names another image; publishing the smoke-tested" in res.stderr
    alpha = f"{prefix}/{rel.uid}-alpha"
    assert registry.manifest(alpha, "2.0.0")["config"] == alpha_id
    before = registry_state(alpha)
    assert set(before) >= {"2.0.0", "latest"}

    # Same version, other content: alpha rebuilt with one file changed, smoke-tested again (green).
    images = json.loads((out / "images.json").read_text())
    tag = f"localhost/{rel.uid}/alpha:rebuilt"
    build_replay_image(
        tmp_path / "ctx", tag=tag, model_dir=rel.model_dir, content=f"{rel.uid} alpha, changed"
    )
    images["alpha"] = image_entry("alpha", tag, model="replay-model")
    (out / "images.json").write_text(json.dumps(images, indent=1))
    res = _publish(rel, out)
    assert res.returncode == 6 and "image:alpha was rebuilt after its smoke test" in res.stderr
    res = slipway("smoke", "--config", str(rel.config), "--out", str(out), "--variant", "alpha")
    assert res.returncode == 0, res.stderr

    res = _publish(rel, out)
    assert res.returncode == 6
    assert f"{alpha}:2.0.0 already holds other content" in res.stderr
    assert "nothing was published" in res.stderr
    assert registry_state(alpha) == before  # not even the moving tags were touched


@pytest.mark.docker
def test_publish_refuses_wheel_with_other_content(replay_release, tmp_path):
    rel = replay_release
    index = TestIndex(tmp_path / "index")
    index.start()
    try:
        prefix = f"127.0.0.1:5000/{rel.uid}"
        out = _release_copy(rel, tmp_path, version="2.1.0", image_registry=prefix, index=index.url)
        res = _publish(rel, out)
        assert res.returncode == 0, res.stderr
        alpha_before = registry_state(f"{prefix}/{rel.uid}-alpha")

        # Same file name, other bytes (a rebuilt wheel of the same version), smoke-tested again.
        other = make_replay_wheel(
            tmp_path / "other",
            dist=f"{rel.uid}-runtime",
            model_dir=rel.model_dir,
            readme=f"# {rel.uid}-runtime\n\nRebuilt: different bytes, same version.",
        )
        assert other.name == rel.wheel.name
        shutil.copy2(other, out / "wheels" / other.name)
        res = slipway("smoke", "--config", str(rel.config), "--out", str(out))
        assert res.returncode == 0, res.stderr

        res = _publish(rel, out)
        assert res.returncode == 6
        assert f"{rel.wheel.name} is already on {index.url}simple/ with other content" in res.stderr
        files = registry.index_files(f"{index.url}simple/", f"{rel.uid}-runtime")
        assert files[rel.wheel.name][1] == hashlib.sha256(rel.wheel.read_bytes()).hexdigest()
        assert registry_state(f"{prefix}/{rel.uid}-alpha") == alpha_before
    finally:
        index.stop()


@pytest.mark.docker
def test_dry_run_prints_exactly_what_it_would_push_and_pushes_nothing(replay_release, tmp_path):
    rel = replay_release
    index = TestIndex(tmp_path / "index")
    index.start()
    try:
        prefix = f"127.0.0.1:5000/{rel.uid}-dry"
        out = _release_copy(
            rel, tmp_path, version="3.0.0", image_registry=prefix, index=index.url, extra=("--dry-run",)
        )
        res = _publish(rel, out)
        assert res.returncode == 0, res.stderr
        short = json.loads((out / "plan.json").read_text())["short_sha"]
        pushes = sorted(re.findall(r"would push\s+(\S+)", res.stdout))
        assert pushes == sorted(
            f"{prefix}/{rel.uid}-{v}:{t}"
            for v in ("alpha", "beta")
            for t in ("3.0.0", "3.0", "latest", *([] if short == "unknown" else [f"sha-{short}"]))
        )
        assert re.findall(r"would upload\s+(\S+)", res.stdout) == [rel.wheel.name]
        attached = re.findall(r"would attach\s+(\S+)", res.stdout)
        assert "replay-model-3.0.0.tar.gz" in attached and "SHA256SUMS" in attached
        assert registry.tags(f"{prefix}/{rel.uid}-alpha") == []
        assert registry.index_files(f"{index.url}simple/", f"{rel.uid}-runtime") == {}
        assert json.loads((out / "release.json").read_text())["dry_run"] is True
        assert json.loads((out / "publish-plan.json").read_text())["dry_run"] is True
    finally:
        index.stop()


@pytest.mark.docker
def test_local_publish_writes_assets_sboms_and_keeps_latest_on_the_newest(replay_release, tmp_path):
    rel = replay_release
    prefix = f"127.0.0.1:5000/{rel.uid}-local"
    out = _release_copy(rel, tmp_path, version="4.1.0", image_registry=prefix, index="http://127.0.0.1:8765/")
    dest = services.state_dir() / "releases" / rel.uid
    try:
        res = _publish(rel, out, "--local")
        assert res.returncode == 0, res.stderr
        release = json.loads((out / "release.json").read_text())
        assets = dest / "4.1.0"
        assert json.loads((assets / "release.json").read_text()) == release
        # SHA256SUMS checks out where the assets are, and release.json lists every SBOM with its sha256.
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=assets, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        sboms = {s["artifact"]: s for s in release["sboms"]}
        assert set(sboms) == {"image:alpha", "image:beta", f"wheel:{rel.wheel.name}"}
        for entry in sboms.values():
            path = assets / entry["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
            bom = json.loads(path.read_text())
            assert sbom.validate(bom) == []
        alpha_bom = json.loads((assets / sboms["image:alpha"]["file"]).read_text())
        assert alpha_bom["metadata"]["component"]["type"] == "container"
        assert alpha_bom["metadata"]["component"]["hashes"][0]["content"] == release["images"]["alpha"][
            "image_id"
        ].removeprefix("sha256:")
        purls = [c.get("purl", "") for c in alpha_bom["components"]]
        assert any(p.startswith("pkg:deb/debian/python3") for p in purls)
        assert any(p.startswith("pkg:pypi/pip@") for p in purls)
        assert _official_schema_problems(alpha_bom) is None

        # An older release published afterwards moves its own minor tag, never 'latest'.
        older = _release_copy(
            rel, tmp_path / "older", version="4.0.3", image_registry=prefix, index="http://127.0.0.1:8765/"
        )
        res = _publish(rel, older, "--local")
        assert res.returncode == 0, res.stderr
        assert re.search(rf"skip\s+{re.escape(prefix)}/{rel.uid}-alpha:latest", res.stdout)
        assert set(registry.tags(f"{prefix}/{rel.uid}-alpha")) >= {"4.1.0", "4.1", "4.0.3", "4.0", "latest"}

        # The same version again, from an identical release: nothing to do, assets unchanged.
        before = {p.name: p.read_bytes() for p in assets.iterdir() if p.name not in jobs.RECORDS}
        time.sleep(1)
        res = _publish(rel, out, "--local")
        assert res.returncode == 0, res.stderr
        assert "pushing" not in res.stderr
        assert {p.name: p.read_bytes() for p in assets.iterdir() if p.name not in jobs.RECORDS} == before
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.docker
def test_publish_rides_out_an_index_that_is_down_for_a_moment(replay_release, tmp_path):
    """Connection refused is retried with backoff: the index comes back while publish waits for it."""
    rel = replay_release
    index = TestIndex(tmp_path / "index")
    index.start()
    try:
        prefix = f"127.0.0.1:5000/{rel.uid}-flaky"
        out = _release_copy(rel, tmp_path, version="5.0.0", image_registry=prefix, index=index.url)
        index.kill()
        lines = []
        env = {**os.environ, "SLIPWAY_RETRY_ATTEMPTS": "8", "SLIPWAY_RETRY_BASE_S": "0.5"}
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slipway.cli",
                "publish",
                "--config",
                str(rel.config),
                "--out",
                str(out),
                "--plan",
                str(out / "plan.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "retrying" in line and index.proc is not None and index.proc.poll() is not None:
                    index.start()  # back on the same port, while publish backs off
        output = "".join(lines)
        assert proc.returncode == 0, output
        assert re.search(rf"look up {re.escape(rel.wheel.name)}: .*refused.*retrying", output, re.IGNORECASE)
        files = registry.index_files(f"{index.url}simple/", f"{rel.uid}-runtime")
        assert list(files) == [rel.wheel.name]
    finally:
        index.stop()
