"""``slipway smoke``: real images of the example model against its golden images.

The docker test builds, from one real pytorch-cpu image of a throw-away project:
- ``good``: that image, unchanged;
- ``broken``: the same image with the model replaced by a TorchScript export of perturbed weights;
- ``gpu``: the same image told it is a GPU image (``DEVICE=gpu``), for a machine without a GPU;
- ``tfs``: the same service code with the TensorFlow example export and ``BACKEND=tfserving``,
  talking to the TF Serving REST stand-in that smoke starts beside it.
One smoke run must fail naming only ``broken``, and publish must then refuse, naming it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from plans import bare_plan
from test_smoke_fixtures import (
    ROOT,
    TF_MODEL,
    TORCH_MODEL,
    docker_build,
    image_entry,
    make_project,
    make_replay_wheel,
    make_wheel,
    remove_images,
    run_id,
    slipway,
    write_fake_export,
)

from slipway import records, registry, sbom
from slipway.config import load_config
from slipway.context import StageContext
from slipway.errors import CheckError, PublishError
from slipway.outputs import primary_smoke, smoke_artifacts
from slipway.smoketest import interpreter_for, smoke_wheel, tfserving_mode, wheel_kind, wheel_tags
from slipway.stages import smoke
from slipway.stages.publish import gate

TORCH_VARIANT = {
    "model": "shapes-torch",
    "runtime": "torchscript",
    "dockerfile": "dockerfiles/pytorch.Dockerfile",
    "target": "pytorch-cpu",
}


# --------------------------------------------------------------------------------------------
# Unit tests


def test_wheel_tags_expand_compressed_sets():
    assert wheel_tags("slipway_runtime-0.1.0-cp311-cp311-manylinux_2_28_x86_64.manylinux2014_x86_64.whl") == [
        ("cp311", "cp311", "manylinux2014_x86_64"),
        ("cp311", "cp311", "manylinux_2_28_x86_64"),
    ]
    assert wheel_tags("pkg-1.0-1build-py2.py3-none-any.whl") == [
        ("py2", "none", "any"),
        ("py3", "none", "any"),
    ]
    with pytest.raises(CheckError):
        wheel_tags("not-a-wheel.whl")


def test_a_wheel_no_python_here_can_run_is_reported_untested(tmp_path):
    other_arch = tmp_path / "slipway_runtime-0.1.0-cp311-cp311-manylinux_2_28_riscv64.whl"
    other_arch.write_bytes(b"")
    python, why = interpreter_for(other_arch)
    assert python is None and "riscv64" in why
    result = smoke_wheel(other_arch, tmp_path, work=tmp_path / "work", iou=0.99, score=1e-4)
    assert result["ok"] is False and result["untested"] is True
    pure = tmp_path / "slipway_runtime-0.1.0-py3-none-any.whl"
    pure.write_bytes(b"")
    assert interpreter_for(pure)[0] is not None


def test_thin_wheels_are_checked_beside_the_torch_they_pin(tmp_path):
    import torch

    files = {"slipway_runtime/__init__.py": ""}
    thin = make_wheel(
        tmp_path / "a",
        dist="slipway-runtime-torch",
        version="0.1",
        files=files,
        readme="# t",
        requires=("numpy", "torch==0.0.1"),
    )
    assert wheel_kind(thin) == "thin"
    result = smoke_wheel(thin, tmp_path, work=tmp_path / "w", iou=0.99, score=1e-4)
    assert result["untested"] and "needs torch 0.0.1" in result["error"]
    assert torch.__version__.split("+")[0] in result["error"]
    extra = make_wheel(
        tmp_path / "b",
        dist="slipway-runtime",
        version="0.1",
        files=files,
        readme="# t",
        requires=("numpy", 'torch; extra == "compare"', "torchlike"),
    )
    assert wheel_kind(extra) == "self-contained"


def test_tfserving_mode_is_the_real_server_on_github_and_the_stub_here(monkeypatch):
    monkeypatch.delenv("SLIPWAY_TFSERVING", raising=False)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert tfserving_mode() == "image"
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert tfserving_mode() == "stub"
    monkeypatch.setenv("SLIPWAY_TFSERVING", "image")
    assert tfserving_mode() == "image"
    assert tfserving_mode("stub") == "stub"
    with pytest.raises(CheckError, match="expected auto, image or stub"):
        tfserving_mode("docker")


def test_cross_runtime_table_reuses_the_export_verification(tmp_path):
    write_fake_export(tmp_path / "models" / "m", name="m")
    artifacts = {
        "image:a": {
            "ok": True,
            "kind": "image",
            "variant": "a",
            "model": "m",
            "runtime": "onnx",
            "min_iou": 0.9999,
            "max_score_diff": 2e-6,
            "images": 3,
            "tolerance": {"iou": 0.99, "score": 1e-4},
            "ready_seconds": 1.5,
            "latency_ms": {"p50": 3.0},
            "gpu": {"requested": True, "available": False, "exercised": False},
        },
        "image:b": {
            "ok": False,
            "kind": "image",
            "variant": "b",
            "model": "m",
            "runtime": "torchscript",
            "min_iou": 0.5,
            "max_score_diff": 0.2,
            "images": 3,
            "error": "3 of 3 golden image(s) differ",
        },
        "wheel:w.whl": {
            "ok": True,
            "kind": "wheel",
            "file": "w.whl",
            "model": "m",
            "min_iou": 1.0,
            "max_score_diff": 0.0,
            "images": 3,
        },
    }
    rows = smoke.table_rows(tmp_path, {k: records.SmokeSummaryEntry.model_validate(v) for k, v in artifacts.items()})
    assert [r.artifact for r in rows] == [
        "eager (PyTorch)",
        "TorchScript",
        "C++ wheel w.whl",
        "image a",
        "image b",
    ]
    text = smoke.table_markdown(rows)
    assert "| image a | m |" in text and "| 1.0e-04 | 2.0e-06 |" in text
    assert "ran on CPU: GPU path not exercised" in text
    assert "| 5.0e-01 | 2.0e-01 | - | **FAILED** | 3 of 3 golden image(s) differ |" in text


def test_each_platform_keeps_its_own_result_and_the_gate_reads_both(tmp_path, monkeypatch):
    """GitHub smokes an image once per platform, each job on its own architecture, and merges the
    jobs' smoke/ folders: the arm64 result must sit beside the amd64 one, the summary and table
    must show both, and the publish gate must refuse when either is missing or failed."""
    config = load_config(make_project(tmp_path / "proj", name="unit", models=TORCH_MODEL,
                                      variants=[{"name": "a", **TORCH_VARIANT}], registry="127.0.0.1:5000/unit"))
    digest = "sha256:" + "d" * 64
    plan = bare_plan("1.0.0", project="unit", dry_run=False, matrix={"smoke": [
        {"artifact": "image:a", "kind": "image", "variant": "a", "device": "cpu", "arches": "amd64,arm64"}]})
    ctx = StageContext(config=config, plan=plan, out=tmp_path / "out", root=config.root)
    # The writer: one job per architecture, no image built, so each writes a failed result.
    for arch in ("arm64", "amd64"):
        monkeypatch.setattr(smoke, "host_arch", lambda arch=arch: arch)
        with pytest.raises(CheckError, match="no image built"):
            smoke.run(ctx, artifact="image:a")
    files = sorted(p.name for p in (ctx.out / "smoke").glob("image-*.json"))
    assert files == ["image-a.arm64.json", "image-a.json"]
    assert json.loads((ctx.out / "smoke" / "image-a.arm64.json").read_text())["arch"] == "arm64"

    # The readers, on the folder the publish job downloads: amd64 passed, arm64 failed.
    def result(arch: str, ok: bool) -> dict:
        return {"artifact": "image:a", "kind": "image", "variant": "a", "arch": arch, "ok": ok, "digest": digest,
                "error": "" if ok else "2 of 4 golden image(s) differ", "min_iou": 1.0 if ok else 0.5}

    def write(arch: str, ok: bool | None) -> None:
        path = ctx.out / "smoke" / ("image-a.json" if arch == "amd64" else f"image-a.{arch}.json")
        path.unlink(missing_ok=True)
        if ok is not None:
            path.write_text(json.dumps(result(arch, ok)))

    write("amd64", True)
    write("arm64", False)
    summary = smoke.summarize(ctx)
    assert set(summary.artifacts) == {"image:a", "image:a@arm64"} and summary.failed == ["image:a@arm64"]
    assert [r.artifact for r in summary.table] == ["image a", "image a (arm64)"]
    assert "| image a (arm64) |" in (ctx.out / "smoke" / "table.md").read_text()
    with pytest.raises(PublishError, match=re.escape("image:a on arm64 (2 of 4 golden image(s) differ)")):
        gate.check_smoke(ctx, None)
    artifacts = smoke_artifacts(ctx.out)
    with pytest.raises(PublishError, match="smoke test failed: image:a on arm64"):
        gate.image_gate(ctx, "a", digest, artifacts)
    # arm64 not tested at all: the gate names the platform.
    write("arm64", None)
    (ctx.out / "smoke" / "summary.json").unlink()
    with pytest.raises(PublishError, match="image:a was not smoke-tested on arm64"):
        gate.image_gate(ctx, "a", digest, smoke_artifacts(ctx.out))
    # Both passed: both gates open, and the release records amd64's numbers.
    write("arm64", True)
    assert gate.check_smoke(ctx, None).ok
    gate.image_gate(ctx, "a", digest, smoke_artifacts(ctx.out))
    assert primary_smoke(smoke_artifacts(ctx.out), "image:a").arch == "amd64"


@pytest.mark.slow
def test_wheel_with_wrong_answers_fails_and_a_right_one_passes(tmp_path):
    """A real virtualenv, a real pip install (numpy comes from the index); the wheel is a replay double."""
    model = write_fake_export(tmp_path / "model", name="m")
    good = make_replay_wheel(tmp_path / "good", dist="smoke-good-runtime", model_dir=model)
    ok = smoke_wheel(good, model, work=tmp_path / "w1", iou=0.99, score=1e-4)
    assert ok["ok"], ok.get("error")
    assert ok["min_iou"] == 1.0 and ok["images"] == 3 and ok["torch_installed"] is False
    assert not (tmp_path / "w1").exists()  # cleaned up after success

    shifted = write_fake_export(tmp_path / "shifted", name="m")
    reference = json.loads((shifted / "golden" / "reference.json").read_text())
    for entry in reference["images"]:
        for det in entry["detections"]:
            det["box"][0] += 2.0
    (shifted / "golden" / "reference.json").write_text(json.dumps(reference))
    bad = make_replay_wheel(tmp_path / "bad", dist="smoke-bad-runtime", model_dir=shifted)
    res = smoke_wheel(bad, model, work=tmp_path / "w2", iou=0.99, score=1e-4)
    assert res["ok"] is False and res["min_iou"] < 0.99
    assert Path(res["log"]).exists()  # kept for the failure; the virtualenv is not
    assert not (tmp_path / "w2" / "venv").exists()

    # The wheel-check harness (native/tools/check_wheel.py, as in the wheels stage) also feeds the
    # images as raw RGB bytes: a runtime that answers those differently fails though the arrays match.
    deaf = make_replay_wheel(tmp_path / "deaf", dist="smoke-deaf-runtime", model_dir=model, bytes_input=False)
    res = smoke_wheel(deaf, model, work=tmp_path / "w3", iou=0.99, score=1e-4)
    assert res["ok"] is False and res["min_iou"] == 1.0, res
    assert res["error"] == "RGB bytes input: detections differ from the numpy input's"
    assert "check_wheel.py" in Path(res["log"]).read_text()


# --------------------------------------------------------------------------------------------
# With the real engine: real model images


def _perturbed_torchscript(export: Path, dest: Path) -> None:
    """The example detector with every weight nudged by 2 %: it still finds shapes, slightly differently."""
    import torch

    from model_export.examples.torch_detector import build_model

    torch.manual_seed(1)
    weights = (
        Path(__file__).resolve().parent.parent / "model_export" / "examples" / "weights" / "shapes_torch.pt"
    )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {
        k: v * (1 + 0.02 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in state.items()
    }
    model = build_model()
    model.load_state_dict(state)
    shutil.copytree(export, dest)
    path = dest / "model.torchscript.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(model.eval())), str(path))
    manifest = json.loads((dest / "model.json").read_text())
    manifest["files"]["torchscript"].update(
        size=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )
    (dest / "model.json").write_text(json.dumps(manifest, indent=2))


def _derived_image(folder: Path, *, base: str, tag: str, model: Path | None = None, env: str = "") -> str:
    folder.mkdir(parents=True)
    lines = [f"FROM {base}"]
    if model is not None:
        shutil.copytree(model, folder / "model")
        lines += [
            "USER 0",
            "RUN rm -rf /model",
            "COPY model/ /model/",
            "RUN chown -R 10001:10001 /model",
            "USER 10001:10001",
        ]
    if env:
        lines.append(f"ENV {env}")
    (folder / "Dockerfile").write_text("\n".join(lines) + "\n")
    return docker_build(folder, tag)


@pytest.fixture(scope="module")
def model_images(tmp_path_factory, local_services):
    uid = run_id()
    root = tmp_path_factory.mktemp("model-images")
    variants = [{"name": n, **TORCH_VARIANT} for n in ("good", "broken")]
    variants.append({"name": "gpu", "device": "gpu", **TORCH_VARIANT})
    variants.append(
        {
            "name": "tfs",
            "model": "shapes-tf",
            "runtime": "tfserving",
            "dockerfile": "dockerfiles/tensorflow.Dockerfile",
            "target": "tfserving-client",
        }
    )
    config = make_project(
        root / "proj",
        name=uid,
        models=TORCH_MODEL + "\n" + TF_MODEL,
        variants=variants,
        registry=f"127.0.0.1:5000/{uid}",
    )
    out = root / "out"
    res = slipway(
        "plan",
        "--config",
        str(config),
        "--event",
        "local",
        "--variants",
        "good,broken,gpu,tfs",
        "-o",
        str(out / "plan.json"),
    )
    assert res.returncode == 0, res.stderr
    for args in (("export",), ("images", "--variant", "good")):
        res = slipway(*args, "--config", str(config), "--out", str(out))
        assert res.returncode == 0, res.stderr[-3000:]
    images = json.loads((out / "images.json").read_text())
    good = images["good"]["tag"]
    _perturbed_torchscript(out / "models" / "shapes-torch", root / "perturbed")
    built = {
        "broken": _derived_image(
            root / "ctx-broken", base=good, tag=f"localhost/{uid}/broken:build", model=root / "perturbed"
        ),
        "gpu": _derived_image(
            root / "ctx-gpu", base=good, tag=f"localhost/{uid}/gpu:build", env="DEVICE=gpu"
        ),
        "tfs": _derived_image(
            root / "ctx-tfs",
            base=good,
            tag=f"localhost/{uid}/tfs:build",
            model=out / "models" / "shapes-tf",
            env="BACKEND=tfserving",
        ),
    }
    for variant, entry in (
        ("broken", TORCH_VARIANT),
        ("gpu", {**TORCH_VARIANT, "device": "gpu"}),
        ("tfs", {"model": "shapes-tf", "runtime": "tfserving"}),
    ):
        images[variant] = image_entry(
            variant,
            f"localhost/{uid}/{variant}:build",
            model=entry["model"],
            runtime=entry["runtime"],
            device=entry.get("device", "cpu"),
        )
        assert images[variant]["id"] == built[variant]
    (out / "images.json").write_text(json.dumps(images, indent=1))
    yield SimpleNamespace(uid=uid, config=config, out=out, images=images)
    remove_images(uid)


@pytest.mark.docker
@pytest.mark.tensorflow
def test_a_variant_with_wrong_weights_fails_smoke_and_publish_refuses_it(model_images, monkeypatch):
    rel = model_images
    res = slipway(
        "smoke", "--config", str(rel.config), "--out", str(rel.out), env={"SLIPWAY_TFSERVING": "stub"}
    )
    assert res.returncode == 4, res.stderr[-3000:]
    failure = res.stderr.strip().splitlines()[-1]
    assert "smoke test failed for image:broken" in failure
    assert "image:good" not in failure and "image:gpu" not in failure and "image:tfs" not in failure

    summary = json.loads((rel.out / "smoke" / "summary.json").read_text())
    arts = summary["artifacts"]
    assert summary["ok"] is False and summary["failed"] == ["image:broken"]
    assert arts["image:good"]["ok"] and arts["image:good"]["min_iou"] > 0.999
    broken = json.loads((rel.out / "smoke" / "image-broken.json").read_text())
    assert broken["ok"] is False and "differ from the reference" in broken["error"]
    assert broken["image_id"] == rel.images["broken"]["id"]
    assert any(Path(p).name == "image-broken.log" and Path(p).stat().st_size > 0 for p in broken["logs"])

    # The GPU image ran, on the CPU, and says its GPU path was not exercised.
    gpu = json.loads((rel.out / "smoke" / "image-gpu.json").read_text())
    assert gpu["ok"] and gpu["gpu"]["exercised"] is False and "NOT exercised" in gpu["gpu"]["note"]
    assert gpu["service"]["device"] == "cpu"

    # The tfserving image answered through the stand-in, and the result says which server that was.
    tfs = json.loads((rel.out / "smoke" / "image-tfs.json").read_text())
    assert tfs["ok"], tfs.get("error")
    assert (
        tfs["model_server"]["kind"] == "stub"
        and "NOT TensorFlow Serving" in tfs["model_server"]["description"]
    )
    assert tfs["service"]["backend"] == "tfserving"

    table = (rel.out / "smoke" / "table.md").read_text()
    for row in (
        "| eager (PyTorch) |",
        "| TorchScript |",
        "| eager (TensorFlow/Keras) |",
        "| TensorFlow SavedModel |",
        "| image good |",
        "| image tfs |",
    ):
        assert row in table
    assert "| image broken |" in table and "**FAILED**" in table
    assert "NOT TensorFlow Serving" in table and "GPU path not exercised" in table

    # Publish refuses, names the variant, and pushes nothing.
    res = slipway("publish", "--config", str(rel.config), "--out", str(rel.out), "--local")
    assert res.returncode == 6
    assert "refusing to publish" in res.stderr and "image:broken" in res.stderr
    assert "nothing was published" in res.stderr
    for variant in ("good", "broken", "gpu", "tfs"):
        assert registry.tags(f"127.0.0.1:5000/{rel.uid}/{rel.uid}-{variant}") == []

    # Without the broken variant the same results open the gate (a dry run, to push nothing).
    plan = json.loads((rel.out / "plan.json").read_text())
    plan["dry_run"] = True
    (rel.out / "plan.json").write_text(json.dumps(plan))
    res = slipway("publish", "--config", str(rel.config), "--out", str(rel.out), "--variant", "good")
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(rf"would push\s+127\.0\.0\.1:5000/{rel.uid}/{rel.uid}-good:0\.0\.1\s", res.stdout)
    assert "broken" not in res.stdout


@pytest.mark.docker
def test_image_sbom_lists_the_python_and_debian_packages_inside(model_images):
    good = model_images.images["good"]
    bom = sbom.image_sbom(
        good["tag"], image_id=good["id"], name="good", version="0.0.1", labels=good["labels"]
    )
    assert sbom.validate(bom) == []
    versions = {c["name"].lower(): c.get("version") for c in bom["components"]}
    assert versions["torch"].startswith("2.") and "fastapi" in versions and "numpy" in versions
    assert "libc6" in versions and "python3.11" in versions
    deps = {d["ref"]: d.get("dependsOn", []) for d in bom["dependencies"]}
    fastapi = next(c["bom-ref"] for c in bom["components"] if c["name"].lower() == "fastapi")
    assert any(ref.startswith("pkg:pypi/starlette@") for ref in deps[fastapi])
    libc = next(c["bom-ref"] for c in bom["components"] if c["name"] == "libc6")
    python = next(c["bom-ref"] for c in bom["components"] if c["name"] == "python3.11")
    assert any(ref == libc for ref in deps[python]) or any(libc in d for d in deps.values())
    # The document is the image's: same image, same bytes.
    again = sbom.image_sbom(
        good["tag"], image_id=good["id"], name="good", version="0.0.1", labels=good["labels"]
    )
    assert again == bom


def test_a_runtime_wheel_never_published_may_be_untested_here_a_published_one_may_not(tmp_path):
    """GitHub's one wheel smoke runner gets every Python's and both architectures' runtime wheels:
    those in runtime/ (never published; tested inside their own build, and in the cpp image on each
    platform) that it cannot run are shown untested, not failed; an untested wheel to publish fails."""
    out = tmp_path / "out"
    (out / "models" / "shapes-torch" / "golden").mkdir(parents=True)
    (out / "models" / "shapes-torch" / "golden" / "reference.json").write_text("{}")
    for folder in ("runtime", "wheels"):
        (out / folder).mkdir()
    (out / "runtime" / "slipway_runtime-0.1.0-cp311-cp311-manylinux_2_28_riscv64.whl").write_bytes(b"")
    plan = bare_plan("1.0.0", matrix={"smoke": [
        {"artifact": "wheels", "kind": "wheel", "variant": "", "device": "cpu", "arches": "amd64"}]})
    ctx = StageContext(config=load_config(ROOT / "release.toml"), plan=plan, out=out, root=ROOT)
    results = smoke.smoke_wheels(ctx)
    only = results["wheel:slipway_runtime-0.1.0-cp311-cp311-manylinux_2_28_riscv64.whl"]
    assert only.ok is True and only.untested is True and only.published is False
    assert "riscv64" in only.error and results["wheels"].ok is True
    # The same wheel to be published (wheels/, as Slipway's own release does): a failure.
    (out / "runtime" / "slipway_runtime-0.1.0-cp311-cp311-manylinux_2_28_riscv64.whl").rename(
        out / "wheels" / "slipway_runtime-0.1.0-cp311-cp311-manylinux_2_28_riscv64.whl")
    results = smoke.smoke_wheels(ctx)
    assert results["wheel:slipway_runtime-0.1.0-cp311-cp311-manylinux_2_28_riscv64.whl"].ok is False
    assert results["wheels"].ok is False
