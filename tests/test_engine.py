"""slipway.engine against the real engine and registry: typed errors decided on the engine's answers."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from image_cleanup import owns
from registry_cleanup import pushes_to

from slipway import engine, registry, services
from slipway.errors import CheckError, PublishError, ServiceError, TransientError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_engine_is_the_one_slipway_started_unless_docker_host_names_another(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", "unix:///somewhere/else.sock")
    assert engine.docker_host() == "unix:///somewhere/else.sock"
    assert engine.docker_env()["DOCKER_HOST"] == "unix:///somewhere/else.sock"
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("SLIPWAY_STATE_DIR", str(tmp_path))  # no engine started from this state folder
    assert engine.docker_host() is None
    # No engine at all: a ServiceError (exit 5) naming where it looked, not a traceback.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    assert not engine.reachable()
    with pytest.raises(engine.EngineError, match=r"none\.sock") as err:
        engine.image_inspect("anything:1")
    assert isinstance(err.value, ServiceError) and err.value.exit_code == 5


def test_the_gpu_probe_honours_slipway_no_gpu(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Fake (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert engine.has_gpu()
    monkeypatch.setenv("SLIPWAY_NO_GPU", "1")
    assert not engine.has_gpu()
    from slipway import cli, smoketest
    from slipway.stages import bench

    assert not cli._has_gpu() and not smoketest.has_gpu() and not bench._has_gpu()


@pytest.mark.docker
def test_images_containers_and_their_errors(local_services):
    from slipway.baseimage import resolve_base_image

    base = resolve_base_image("python:3.11-slim-bookworm")
    tag = f"swt-engine-{owns(uuid.uuid4().hex[:10])}:1"
    engine.tag(base, tag)
    try:
        assert engine.image_id(tag) == engine.image_id(base)
        res = engine.run(tag, ["python3", "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
        assert (res.exit_status, res.stdout, res.stderr) == (0, "out\n", "err\n")
        with pytest.raises(engine.ContainerFailed) as failed:
            engine.run(tag, ["python3", "-c", "import sys; print('why', file=sys.stderr); sys.exit(3)"])
        assert failed.value.exit_status == 3 and "why" in failed.value.output
        assert isinstance(failed.value, CheckError)
        name = f"swt-engine-{uuid.uuid4().hex[:10]}"
        engine.start(tag, name=name, command=["sleep", "60"], memory="128m", cpus=0.5, network="none")
        try:
            assert engine.container_status(name) == "running"
            assert engine.exec_in(name, ["echo", "inside"]) == (0, "inside\n")
            inspect = engine.container_inspect(name)
            assert inspect["HostConfig"]["Memory"] == 128 * 2**20 and inspect["HostConfig"]["NanoCpus"] == 5 * 10**8
        finally:
            assert engine.remove_container(name)
        assert engine.container_status(name) is None and not engine.remove_container(name)
        assert engine.container_logs(name) == ""
    finally:
        assert engine.remove_image(tag)
    assert not engine.remove_image(tag)
    with pytest.raises(engine.ImageNotFound) as missing:
        engine.image_inspect(tag)
    assert missing.value.status == 404 and missing.value.exit_code == 5


@pytest.mark.docker
@pytest.mark.services
def test_push_and_pull_by_digest_and_what_a_registry_answers(local_services, tmp_path):
    from slipway.baseimage import resolve_base_image

    base = resolve_base_image("python:3.11-slim-bookworm")
    uid = owns(f"swt{uuid.uuid4().hex[:8]}")
    repo = pushes_to(f"{services.registry_addr()}/{uid}/engine")
    engine.tag(base, f"{repo}:1")
    try:
        digest = engine.push(f"{repo}:1")
        assert digest.startswith("sha256:") and registry.manifest(repo, "1")["digest"] == digest
        engine.remove_image(f"{repo}:1")
        assert engine.pull(f"{repo}@{digest}") == engine.image_id(base)

        # Absent: a final answer (404), never retried.
        with pytest.raises(engine.ImageNotFound) as absent:
            engine.pull(f"{repo}:nothere")
        assert absent.value.status == 404
        # Nobody listening: worth another attempt, for pull and push alike (exit 6 once retries are spent).
        gone = f"127.0.0.1:{_closed_port()}/{uid}/engine"
        with pytest.raises(engine.EngineTransient) as transient:
            engine.pull(f"{gone}:1")
        assert isinstance(transient.value, TransientError) and transient.value.exit_code == 6
        engine.tag(base, f"{gone}:1")
        with pytest.raises(engine.EngineTransient):
            engine.push(f"{gone}:1")
        attempts = []

        def pull_gone():
            attempts.append(1)
            return engine.pull(f"{gone}:1")

        with pytest.raises(TransientError):
            registry.retry(pull_gone, what="pull", attempts=2, base=0.01)
        assert len(attempts) == 2

        # The saved image loads back under its name.
        saved = tmp_path / "saved.tar"
        engine.save_to(f"{repo}@{digest}", saved)
        engine.remove_image(f"{repo}@{digest}")
        engine.tag(base, f"{repo}:saved")
        engine.save_to(f"{repo}:saved", saved)
        engine.remove_image(f"{repo}:saved")
        assert engine.load(saved) == [f"{repo}:saved"]
    finally:
        for ref in (f"{repo}:1", f"{repo}:saved", f"{repo}@{digest}" if "digest" in dir() else ""):
            if ref:
                engine.remove_image(ref)


def test_a_push_refused_mid_stream_is_a_publish_error_unless_the_registry_is_down(monkeypatch):
    """The engine reports a refused push inside its stream, without a status: the registry is asked
    directly whether it is up; up -> PushError (final, exit 6), down -> EngineTransient."""

    class Api:
        def push(self, repo, tag, stream, decode, auth_config=None):
            yield {"status": "The push refers to repository [x]"}
            yield {"error": "denied: requested access to the resource is denied",
                   "errorDetail": {"message": "denied: requested access to the resource is denied"}}

    class Client:
        api = Api()

    monkeypatch.setattr(engine, "client", lambda timeout=None: Client())
    monkeypatch.setattr(engine, "_registry_answers", lambda ref: True)
    with pytest.raises(engine.PushError, match="denied") as refused:
        engine.push("registry.example/acme/x:1")
    assert isinstance(refused.value, PublishError) and not isinstance(refused.value, TransientError)
    monkeypatch.setattr(engine, "_registry_answers", lambda ref: False)
    with pytest.raises(engine.EngineTransient):
        engine.push("registry.example/acme/x:1")


@pytest.mark.docker
def test_a_failed_build_is_a_build_error_with_the_end_of_its_output(local_services, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY missing.txt /x\n")
    tag = f"swt-engine-{owns(uuid.uuid4().hex[:10])}:broken"
    with pytest.raises(engine.BuildFailed) as failed:
        engine.build(tmp_path, tag)
    assert failed.value.exit_code == 3 and "missing.txt" in failed.value.output
    (tmp_path / "missing.txt").write_text("here\n")
    image = engine.build(Path(tmp_path), tag, labels={"org.example.test": "1"})
    try:
        assert engine.image_inspect(tag)["Config"]["Labels"]["org.example.test"] == "1"
        assert image == engine.image_id(tag)
    finally:
        engine.remove_image(tag)


def test_the_session_removes_only_the_images_it_named():
    from image_cleanup import owned_references

    listing = [
        {"RepoTags": ["127.0.0.1:5000/swtaaaa1111/swtaaaa1111-alpha:0.1.0", "mine-too:swtaaaa1111"],
         "RepoDigests": ["127.0.0.1:5000/swtaaaa1111/swtaaaa1111-alpha@sha256:" + "a" * 64]},
        {"RepoTags": ["127.0.0.1:5000/swtbbbb2222/swtbbbb2222-alpha:0.1.0"], "RepoDigests": []},
        {"RepoTags": ["<none>:<none>"], "RepoDigests": ["<none>@<none>"]},
        {"RepoTags": None, "RepoDigests": None},
    ]
    assert owned_references(listing, {"swtaaaa1111"}) == [
        "127.0.0.1:5000/swtaaaa1111/swtaaaa1111-alpha:0.1.0", "mine-too:swtaaaa1111",
        "127.0.0.1:5000/swtaaaa1111/swtaaaa1111-alpha@sha256:" + "a" * 64,
    ]
    assert owned_references(listing, set()) == []
