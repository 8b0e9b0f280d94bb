"""Failures end in their documented exit code with a message that says what and where, never a traceback.

- A registry that refuses publish (401, 403, 400), on the read before anything is pushed or on the
  write that tags a digest: exit 6 with the registry's own words, through the real CLI against a
  real HTTP server on 127.0.0.1.
- A damaged record in ``dist/<version>/``: an error naming the file, never "absent".
- Outcomes come from the type of an error, not its text.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from test_github_mode import TAG_SHA, cli, github_env, plan_step, project
from test_smoke_fixtures import run_id

from slipway import errors, registry
from slipway.errors import PublishError, RecordError, RegistryError, SlipwayError, TransientError

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64,
                   "size": 2},
        "layers": [],
    }
).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class _RefusingRegistry(BaseHTTPRequestHandler):
    """An OCI distribution endpoint that refuses with ``status``:

    - ``where = "read"``: every request;
    - ``where = "write"``: only the writes (the manifest PUT that tags a digest, a blob upload);
      reads answer as a registry that holds the manifest and no tags would;
    - ``where = "token"``: the registry wants a bearer token (a 401 with a ``Bearer realm=`` challenge
      naming ``/token`` on the same server) and the token endpoint refuses every one;
    - ``where = "token-push"``: the token endpoint grants a pull token and refuses one that may
      push; the registry answers reads to the pull token as in ``write``.
    """

    status = 403
    where = "read"
    message = ""
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self) -> None:
        code = {401: "UNAUTHORIZED", 403: "DENIED", 400: "MANIFEST_INVALID"}[self.status]
        body = json.dumps({"errors": [{"code": code, "message": self.message, "detail": None}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="test registry"'
        self._send(self.status, body, headers)

    def _token_wanted(self) -> bool:
        """In the token modes: answer a request without the granted token with the challenge."""
        if not self.where.startswith("token") or self.headers.get("Authorization") == "Bearer granted":
            return False
        host, port = self.server.server_address[:2]
        challenge = f'Bearer realm="http://{host}:{port}/token",service="test-registry"'
        body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}'
        self._send(401, body, {"Content-Type": "application/json", "WWW-Authenticate": challenge})
        return True

    def _token(self) -> None:
        scope = parse_qs(urlsplit(self.path).query).get("scope", [""])[0]
        if self.where == "token-push" and scope.endswith(":pull"):
            return self._send(200, b'{"token": "granted"}', {"Content-Type": "application/json"})
        return self._refuse()

    def do_GET(self):
        type(self).requests.append(f"GET {self.path}")
        if self.path.startswith("/token"):
            return self._token()
        if self._token_wanted():
            return None
        if self.where in ("read", "token"):
            return self._refuse()
        if self.path.endswith("/tags/list"):
            return self._send(200, json.dumps({"name": "x", "tags": []}).encode(), {"Content-Type": "application/json"})
        if self.path.endswith(f"/manifests/{DIGEST}"):
            return self._send(200, MANIFEST, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                              "Docker-Content-Digest": DIGEST})
        return self._send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}')

    def do_PUT(self):
        type(self).requests.append(f"PUT {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if not self._token_wanted():
            self._refuse()

    do_POST = do_PUT


@pytest.fixture
def refusing_registry():
    _RefusingRegistry.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _github_release_job(tmp_path: Path, registry_addr: str) -> tuple[Path, Path, dict, Path]:
    """A tag push's plan publishing to ``registry_addr``, the digest recorded and smoke-tested green:
    everything 'slipway publish --kind images' needs but a registry that agrees."""
    uid = run_id()
    proj = project(tmp_path, uid)
    toml = proj / "release.toml"
    toml.write_text(toml.read_text().replace("127.0.0.1:5000/", f"{registry_addr}/"))
    plan_file, plan = plan_step(proj, tmp_path, "tag_push.json", "push", "refs/tags/v0.1.0", TAG_SHA)
    assert plan["dry_run"] is False
    out = proj / plan["output_dir"]
    env = github_env(tmp_path, "record", SLIPWAY_PLAN_FILE=str(plan_file))
    res = cli(proj, "images", "--variant", "alpha", "--record", "--digest", DIGEST, env=env)
    assert res.returncode == 0, res.stderr
    (out / "smoke").mkdir(parents=True, exist_ok=True)
    result = {"artifact": "image:alpha", "kind": "image", "variant": "alpha", "ok": True, "digest": DIGEST}
    (out / "smoke" / "image-alpha.json").write_text(json.dumps(result))
    return proj, plan_file, plan, out


@pytest.mark.parametrize("where", ["read", "write", "token", "token-push"])
@pytest.mark.parametrize("status", [401, 403, 400])
def test_a_registry_refusing_publish_ends_in_exit_6_with_its_own_message(
    tmp_path, refusing_registry, status, where
):
    _RefusingRegistry.status = status
    _RefusingRegistry.where = where
    _RefusingRegistry.message = f"the test registry says no ({status}, {where})"
    proj, plan_file, _plan, _out = _github_release_job(tmp_path, refusing_registry)
    env = github_env(tmp_path, "publish", SLIPWAY_PLAN_FILE=str(plan_file))
    res = cli(proj, "publish", "--kind", "images", "--variant", "alpha", env=env, timeout=120)
    assert res.returncode == 6, res.stderr
    assert "Traceback" not in res.stderr
    assert _RefusingRegistry.message in res.stderr
    assert f"{status}" in res.stderr
    assert not Path(env["GITHUB_OUTPUT"]).exists()
    requests = _RefusingRegistry.requests
    if where == "write":
        # The read went through; the refusal came from the tagging PUT, and nothing else was tried.
        puts = [r for r in requests if r.startswith("PUT")]
        assert puts and all(p.endswith("/manifests/0.1.0") for p in puts), requests
    else:
        assert not any(r.startswith("PUT") for r in requests)
    if where.startswith("token"):
        tokens = [r for r in requests if r.startswith("GET /token")]
        assert tokens, requests
        if where == "token-push":
            # Preflight read with a pull token; the refusal came when tagging asked for push.
            assert "pull%2Cpush" in tokens[-1] and any("/tags/list" in r for r in requests), requests
            assert "asked for a token" in res.stderr


def _tiny_wheel(folder: Path) -> Path:
    """A valid, minimal wheel: enough metadata for an upload's form fields."""
    import zipfile

    path = folder / "tiny_refused-0.1.0-py3-none-any.whl"
    files = {
        "tiny_refused/__init__.py": "",
        "tiny_refused-0.1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tiny-refused\nVersion: 0.1.0\n",
        "tiny_refused-0.1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "tiny_refused-0.1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in {**files, "tiny_refused-0.1.0.dist-info/RECORD": record}.items():
            zf.writestr(name, text)
    return path


@pytest.mark.parametrize("where", ["write", "token"])
@pytest.mark.parametrize("status", [401, 403, 400])
def test_every_write_of_the_client_is_refused_with_the_registrys_status_and_words(
    tmp_path, refusing_registry, status, where
):
    """The blob upload that tells a push's fate, the manifest PUT and a wheel upload: each refusal
    is a RegistryError (exit 6) with the status and the registry's message, whether the registry
    itself or its token endpoint said no."""
    _RefusingRegistry.status, _RefusingRegistry.where = status, where
    _RefusingRegistry.message = f"no writes here ({status}, {where})"
    image = f"{refusing_registry}/repo/name"
    calls = [
        lambda: registry.check_push_access(image),
        lambda: registry.tag_digest(image, DIGEST, "1.0.0"),
    ]
    if where == "write":  # an index has no token endpoint
        calls.append(lambda: registry.upload_wheel(f"http://{refusing_registry}/legacy/", _tiny_wheel(tmp_path)))
    for call in calls:
        registry._AUTH.clear()
        with pytest.raises(RegistryError) as err:
            call()
        assert err.value.status == status and err.value.exit_code == 6, err.value
        assert _RefusingRegistry.message in str(err.value)


def test_registry_errors_carry_their_status_and_exit_code(refusing_registry):
    _RefusingRegistry.status, _RefusingRegistry.where, _RefusingRegistry.message = 403, "read", "no pulls"
    with pytest.raises(RegistryError) as err:
        registry.manifest(f"{refusing_registry}/repo/name", "1.0.0")
    assert err.value.status == 403 and err.value.exit_code == 6
    assert "DENIED: no pulls" in str(err.value)
    # Retried only when another attempt may cure it.
    calls = []

    def refused():
        calls.append(1)
        raise RegistryError("no", status=403)

    with pytest.raises(RegistryError):
        registry.retry(refused, what="x", attempts=3, base=0)
    assert len(calls) == 1
    for cls in (RegistryError, TransientError):
        assert issubclass(cls, PublishError) and issubclass(cls, SlipwayError) and cls.exit_code == 6
    assert registry.Transient is TransientError and registry.RegistryError is RegistryError
    assert "RegistryError" in errors.__doc__ and "TransientError" in errors.__doc__


def test_a_failed_verification_is_a_check_and_other_export_failures_are_builds():
    from model_export.errors import ExportError, VerificationError

    assert issubclass(VerificationError, ExportError)
    # The export stage decides on the class: a message that merely mentions verification is a build error.
    import inspect

    from slipway.stages import export

    source = inspect.getsource(export.run)
    assert "isinstance(exc, VerificationError)" in source
    assert '"verification" in' not in source


# --------------------------------------------------------------------------------------------
# Damaged records

DAMAGE = {
    "not JSON": b'{"variant": "alpha", "digest": ',
    "not UTF-8": b"\xff\xfe\x00garbage",
    "not an object": b'["alpha"]',
}


@pytest.fixture(scope="module")
def release_job(tmp_path_factory):
    """A tag push's plan with a recorded digest and green smoke result (no registry is reached: every
    case below fails on a record before publish asks one)."""
    tmp = tmp_path_factory.mktemp("records")
    proj, plan_file, plan, _out = _github_release_job(tmp, "127.0.0.1:9")
    return tmp, proj, plan_file, plan


def _copy_job(release_job, tmp_path: Path) -> tuple[Path, Path, Path]:
    _tmp, proj, plan_file, plan = release_job
    workspace = tmp_path / "workspace"
    shutil.copytree(proj, workspace, symlinks=True)
    return workspace, plan_file, workspace / plan["output_dir"]


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize(
    "record, args",
    [
        ("images.json", ["publish", "--kind", "images", "--variant", "alpha"]),
        ("images/alpha.json", ["publish", "--kind", "images", "--variant", "alpha"]),
        ("smoke/image-alpha.json", ["publish", "--kind", "images", "--variant", "alpha"]),
        ("smoke/summary.json", ["publish", "--kind", "images", "--variant", "alpha"]),
        ("models/replay-model/model.json", ["publish", "--kind", "github-release"]),
    ],
)
def test_a_damaged_record_is_an_error_naming_the_file(release_job, tmp_path, record, args, damage):
    workspace, plan_file, out = _copy_job(release_job, tmp_path)
    path = out / record
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DAMAGE[damage])
    env = github_env(tmp_path, "publish", SLIPWAY_PLAN_FILE=str(plan_file))
    res = cli(workspace, *args, env=env, timeout=120)
    assert res.returncode == RecordError.exit_code == 4, res.stderr
    assert str(path) in res.stderr or record in res.stderr, res.stderr
    assert "damaged" in res.stderr and "Traceback" not in res.stderr


def test_a_damaged_plan_is_a_configuration_error_naming_the_file(release_job, tmp_path):
    workspace, _plan_file, _out = _copy_job(release_job, tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text('{"schema_version": ')
    res = cli(workspace, "publish", "--kind", "images", "--plan", str(plan), env=github_env(tmp_path, "publish"))
    assert res.returncode == 2, res.stderr
    assert str(plan) in res.stderr and "not valid JSON" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_wheel_and_release_records_are_errors_not_absent(tmp_path, damage):
    from slipway.stages import wheels
    from slipway.stages.publish import local

    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "wheels.json").write_bytes(DAMAGE[damage])
    with pytest.raises(RecordError) as err:
        wheels.reuse(folder, "fingerprint")
    assert str(folder / "wheels.json") in str(err.value) and err.value.exit_code == 4
    (tmp_path / "release.json").write_bytes(DAMAGE[damage])
    with pytest.raises(RecordError) as err:
        local.published_before(tmp_path / "release.json")
    assert str(tmp_path / "release.json") in str(err.value)


def test_missing_optional_records_stay_absent(tmp_path):
    from slipway.outputs import image_records, smoke_artifacts
    from slipway.stages import wheels
    from slipway.stages.publish import local

    assert image_records(tmp_path) == {} and smoke_artifacts(tmp_path) == {}
    assert wheels.reuse(tmp_path, "fingerprint") is None
    assert local.published_before(tmp_path / "release.json") is False
