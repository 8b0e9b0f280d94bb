"""The wheels stage and the native build configuration, without building anything.

Building and checking the real wheels: tests/test_native.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from plans import bare_plan

from slipway.config import load_config
from slipway.context import StageContext
from slipway.errors import BuildError, CheckError, ConfigError
from slipway.stages import wheels

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
sys.path.insert(0, str(NATIVE / "tools"))
import check_wheel  # noqa: E402
import prune_libtorch  # noqa: E402


def _torch_pin(text: str) -> set[str]:
    return set(re.findall(r"torch==([\w.+]+)", text))


def test_torch_pins_agree():
    """One torch version: the service's requirements, both pyprojects' build and runtime pins and
    the CMake check that the libtorch found is that version."""
    want = _torch_pin((ROOT / "requirements-pytorch.txt").read_text())
    assert len(want) == 1
    for pyproject in (NATIVE / "pyproject.toml", NATIVE / "thin" / "pyproject.toml"):
        data = tomllib.loads(pyproject.read_text())
        assert _torch_pin(" ".join(data["build-system"]["requires"])) == want, pyproject
        assert data["tool"]["scikit-build"]["cmake"]["define"]["SLIPWAY_REQUIRE_TORCH_VERSION"] in want
        assert _torch_pin(data["tool"]["cibuildwheel"]["before-build"]) == want
    thin = tomllib.loads((NATIVE / "thin" / "pyproject.toml").read_text())
    assert _torch_pin(" ".join(thin["project"]["dependencies"])) == want
    sc = tomllib.loads((NATIVE / "pyproject.toml").read_text())
    assert not any(d.startswith("torch") for d in sc["project"]["dependencies"])


@pytest.mark.parametrize("kind", ["self-contained", "thin"])
def test_cibuildwheel_configuration(kind):
    """manylinux_2_28, CPython 3.10-3.13, x86_64 and aarch64; repair and test commands that exist."""
    package = NATIVE / wheels.PROJECT_DIR[kind]
    config = tomllib.loads((package / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    for arch in ("x86_64", "aarch64"):
        res = subprocess.run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", "linux",
                              "--archs", arch, str(package)], capture_output=True, text=True, env=env, cwd=ROOT)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [f"cp3{m}-manylinux_{arch}" for m in (10, 11, 12, 13)]
    assert config["linux"]["manylinux-x86_64-image"] == config["linux"]["manylinux-aarch64-image"] == "manylinux_2_28"
    for command in (config["repair-wheel-command"], config["test-command"]):
        script = re.search(r"\{package\}/(\S+\.py)", command).group(1)
        assert (package / script).resolve().is_file(), command
        assert f"--kind {kind}" in command
    assert {"SLIPWAY_MODEL_DIR", "SLIPWAY_PRUNE", "SLIPWAY_MAX_SIZE_MIB"} <= set(config["linux"]["environment-pass"])


def test_stage_sources_stamps_the_release_version(tmp_path):
    src = wheels.stage_sources(NATIVE, tmp_path / "src", "1.2.3rc1")
    for kind in wheels.KINDS:
        data = tomllib.loads((src / wheels.PROJECT_DIR[kind] / "pyproject.toml").read_text())
        assert data["project"]["version"] == "1.2.3rc1"
    assert (src / "CMakeLists.txt").is_file() and not (src / "build").exists()
    assert wheels.pep440("v1.2.3") == "1.2.3"
    with pytest.raises(BuildError, match="not a valid Python package version"):
        wheels.pep440("1.2.3-not a version")


def test_size_problems_name_wheel_size_and_limit(tmp_path):
    big = tmp_path / "slipway_runtime-1.0.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    big.write_bytes(b"\0" * (3 * 2**20 + 2**19))
    small = tmp_path / "slipway_runtime_torch-1.0.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    small.write_bytes(b"\0" * 100)
    problems = wheels.size_problems([big, small], 3.0)
    assert len(problems) == 1
    assert big.name in problems[0] and "3.50 MiB" in problems[0] and "wheels.max_size_mib = 3 MiB" in problems[0]


def _target(arch: str, platform: str = "") -> dict[str, str]:
    return {"arch": arch, "platform": platform or f"manylinux_2_28_{arch}", "runner": "ubuntu-24.04",
            "build": "cp311-*", "model": "shapes-torch"}


def _ctx(tmp_path: Path, **wheel_settings) -> StageContext:
    config = load_config(ROOT / "release.toml")
    config = config.model_copy(update={"wheels": config.wheels.model_copy(update=wheel_settings)})
    out = tmp_path / "out"
    model = out / "models" / "shapes-torch"
    (model / "golden").mkdir(parents=True)
    for name in ("model.json", "model.torchscript.pt", "golden/reference.json"):
        (model / name).write_text("{}")
    # The plan's wheel targets, as 'slipway plan' writes them for this release.toml.
    targets = [_target("x86_64" if p.endswith("x86_64") else "aarch64", platform=p) for p in config.wheels.platforms]
    plan = bare_plan("1.0.0", matrix={"wheels": targets})
    return StageContext(config=config, plan=plan, out=out, root=ROOT)


def _fake_wheel(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("pad", os.urandom(size))
    return path


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """Replace building and the tools that need real wheels; return the calls made."""
    calls = {"checks": [], "twine": 0}

    def build_local(src, out, cmake_root, log, max_size_mib=100.0):
        out.mkdir(parents=True, exist_ok=True)
        return [
            wheels.Built(_fake_wheel(out, "slipway_runtime-1.0.0-cp311-cp311-manylinux_2_34_x86_64.whl", 2 * 2**20),
                         "self-contained", "local", repair={"prune": {"rules": {}, "bytes": 0}}),
            wheels.Built(_fake_wheel(out, "slipway_runtime_torch-1.0.0-cp311-cp311-manylinux_2_34_x86_64.whl", 1000),
                         "thin", "local"),
        ]

    def twine_check(paths, log):
        calls["twine"] += 1

    def check_golden(built, model_dir, tools, work, log):
        calls["checks"].append(built.kind)
        ok = calls.get("fail") != built.kind
        return {"ok": ok, "images": 8, "min_iou": 1.0 if ok else 0.2, "max_score_diff": 0.0}

    monkeypatch.setenv("SLIPWAY_WHEELS_BUILDER", "local")
    # The runtime cache of the test, never the machine's state folder (fake wheels must not be reused).
    cache = tmp_path / "runtime-cache"
    monkeypatch.setattr(wheels, "runtime_cache", lambda: cache)
    calls["cache"] = cache
    monkeypatch.setattr(wheels, "build_local", build_local)
    monkeypatch.setattr(wheels, "twine_check", twine_check)
    monkeypatch.setattr(wheels, "check_golden", check_golden)
    monkeypatch.setattr(wheels, "stage_sources", lambda native, dest, version: dest)
    return calls


def test_run_writes_wheels_json(tmp_path, fake_build):
    ctx = _ctx(tmp_path)
    result = wheels.run(ctx)
    index = json.loads((ctx.out / "wheels" / "wheels.json").read_text())
    assert index["ok"] and index["builder"] == "local" and "SLIPWAY_WHEELS_BUILDER" in index["builder_reason"]
    assert {w["kind"] for w in index["wheels"]} == {"self-contained", "thin"}
    for record in index["wheels"]:
        assert set(record) >= {"name", "size", "sha256", "kind", "builder", "python_tag", "platform_tag", "check"}
        assert record["python_tag"] == "cp311" and record["platform_tag"] == "manylinux_2_34_x86_64"
    assert any(e["platform"].endswith("aarch64") for e in index["not_built_here"])
    assert fake_build["twine"] == 1 and fake_build["checks"] == ["self-contained", "thin"]
    assert "2 runtime wheels 0.1.0 (local, published with this release)" in result["summary"]
    # Unchanged inputs: the second run reuses the wheels instead of building them again.
    again = wheels.run(ctx)
    assert again["summary"] == "2 wheels reused" and fake_build["checks"] == ["self-contained", "thin"]


def test_run_too_big_is_a_build_error(tmp_path, fake_build):
    ctx = _ctx(tmp_path, max_size_mib=1.5)
    with pytest.raises(BuildError, match=r"slipway_runtime-1\.0\.0-.*\.whl is 2\.00 MiB, over the limit "
                                         r"wheels\.max_size_mib = 1\.5 MiB"):
        wheels.run(ctx)
    index = json.loads((ctx.out / "wheels" / "wheels.json").read_text())
    assert index["ok"] is False and len(index["problems"]) == 1
    assert fake_build["checks"] == []  # a wheel that cannot be published is not checked further


def test_run_golden_mismatch_is_a_check_error(tmp_path, fake_build):
    fake_build["fail"] = "thin"
    with pytest.raises(CheckError, match=r"golden-output check failed for slipway_runtime_torch-.*min IoU 0\.2"):
        wheels.run(_ctx(tmp_path))


def test_run_needs_the_export(tmp_path, fake_build):
    ctx = _ctx(tmp_path)
    (ctx.out / "models" / "shapes-torch" / "model.torchscript.pt").unlink()
    with pytest.raises(BuildError, match="run 'slipway export' first"):
        wheels.run(ctx)


def test_run_disabled(tmp_path, fake_build):
    assert wheels.run(_ctx(tmp_path, enabled=False)) == {"summary": "disabled"}


def test_builder_choice_and_targets(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path)
    monkeypatch.setenv("SLIPWAY_WHEELS_BUILDER", "sideways")
    with pytest.raises(ConfigError, match="SLIPWAY_WHEELS_BUILDER = 'sideways'"):
        wheels.choose_builder(ctx, print)
    monkeypatch.setenv("SLIPWAY_WHEELS_BUILDER", "local")
    assert wheels.choose_builder(ctx, print)[0] == "local"

    monkeypatch.setattr(wheels, "host_arch", lambda: "x86_64")
    here, elsewhere = wheels.targets(ctx, "cibuildwheel")
    assert here == [(py, "manylinux_2_28_x86_64") for py in ("3.10", "3.11", "3.12", "3.13")]
    assert len(elsewhere) == 4 and all("aarch64 runner" in e["reason"] for e in elsewhere)
    here, elsewhere = wheels.targets(ctx, "local")
    assert [py for py, _ in here] == [f"{sys.version_info.major}.{sys.version_info.minor}"]
    assert len(elsewhere) == 7
    assert wheels.manylinux_image("manylinux_2_28", "aarch64").startswith("quay.io/pypa/manylinux_2_28_aarch64")


def test_check_wheel_matcher_agrees_with_compare_detections():
    """check_wheel.py runs where model_export is not installed, so it has its own copy of the matcher."""
    import numpy as np

    from model_export.compare import compare_detections

    rng = np.random.default_rng(5)
    for _ in range(200):
        def dets(n):
            xy = rng.uniform(0, 100, (n, 2))
            return [{"box": [*map(float, p), *map(float, p + rng.uniform(1, 30, 2))],
                     "score": float(rng.uniform()), "class_id": int(rng.integers(0, 2))} for p in xy]
        ref = dets(int(rng.integers(0, 6)))
        got = [{**d, "box": [v + float(rng.normal(0, 0.3)) for v in d["box"]],
                "score": d["score"] + float(rng.normal(0, 1e-4))} for d in ref if rng.uniform() > 0.1]
        got += dets(int(rng.integers(0, 2)))
        expected = compare_detections(ref, got, iou=0.99, score=1e-4)
        mine = check_wheel.compare(ref, got, 0.99, 1e-4)
        assert mine["ok"] == expected.ok
        if expected.matched:
            assert mine["min_iou"] == pytest.approx(expected.min_iou)
            assert mine["max_score_diff"] == pytest.approx(expected.max_score_diff)


def test_one_harness_checks_wheels_in_both_stages_and_needs_nothing_of_slipway():
    """The wheels stage (and cibuildwheel) and the smoke stage run the same file, inside the wheel's
    environment: it may import only the standard library, numpy, Pillow and the runtime."""
    import ast

    from slipway import paths, smoketest

    harness = smoketest.wheel_harness()
    assert harness == paths.resource("native") / "tools" / "check_wheel.py" == Path(check_wheel.__file__)
    assert not hasattr(smoketest, "_WHEEL_RUNNER")
    imported = set()
    for node in ast.walk(ast.parse(harness.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"numpy", "PIL", "slipway_runtime", "torch"}


@pytest.mark.parametrize("inputs", ["pillow", "npy"])
def test_harness_answers_and_catches_an_input_that_answers_differently(tmp_path, inputs):
    """check_wheel.py run as the stages run it, on a replay double of the thin runtime (this
    interpreter has torch): golden images from Pillow or pre-decoded .npy (the smoke stage's way)."""
    import numpy as np
    from PIL import Image
    from test_smoke_fixtures import replay_runtime_source, write_fake_export

    from slipway.smoketest import wheel_harness

    model = write_fake_export(tmp_path / "model", name="m")
    reference = json.loads((model / "golden" / "reference.json").read_text())["images"]
    extra = []
    if inputs == "npy":
        (tmp_path / "npy").mkdir()
        for entry in reference:
            with Image.open(model / "golden" / entry["file"]) as im:
                np.save(tmp_path / "npy" / f"{Path(entry['file']).stem}.npy", np.asarray(im.convert("RGB")))
        extra = ["--inputs", str(tmp_path / "npy")]

    def check(name: str, **kw) -> tuple[subprocess.CompletedProcess, dict, Path]:
        site = tmp_path / name / "site"
        (site / "slipway_runtime").mkdir(parents=True)
        (site / "slipway_runtime" / "__init__.py").write_text(replay_runtime_source(model, kind="thin", **kw))
        answers, summary = tmp_path / name / "answers.json", tmp_path / name / "summary.json"
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONHOME"}, "PYTHONPATH": str(site)}
        res = subprocess.run([sys.executable, str(wheel_harness()), "--kind", "thin", "--model", str(model),
                              "--answers", str(answers), "--json-out", str(summary), *extra],
                             capture_output=True, text=True, env=env, cwd=tmp_path / name, timeout=300)
        return res, json.loads(summary.read_text()), answers

    res, summary, answers = check("good")
    assert res.returncode == 0, res.stdout + res.stderr
    assert summary["ok"] and summary["images"] == len(reference) and summary["min_iou"] == 1.0
    got = json.loads(answers.read_text())
    assert set(got["images"]) == {Path(e["file"]).stem for e in reference}
    assert got["inputs"] == ["numpy array", "RGB bytes", "PIL image"]  # Pillow is here either way
    assert got["torch_installed"] is True and got["module"].endswith("slipway_runtime/__init__.py")
    first = reference[0]
    assert [d["box"] for d in got["images"][Path(first["file"]).stem]["detections"]] == [
        d["box"] for d in first["detections"]]

    res, summary, answers = check("deaf", bytes_input=False)
    assert res.returncode == 1 and check_wheel.FAILURE_MARK in res.stdout
    assert not summary["ok"] and summary["min_iou"] == 1.0 and answers.is_file()
    assert {p["input"] for f in summary["failures"] for p in f["problems"]} == {"RGB bytes"}


def test_prune_interval_arithmetic_and_backward_names():
    merged = prune_libtorch._merge([(10, 20), (15, 30), (40, 50), (0, 5)])
    assert merged == [(0, 5), (10, 30), (40, 50)]
    assert prune_libtorch._subtract([(0, 100)], [(10, 20), (50, 60), (95, 120)]) == [(0, 10), (20, 50), (60, 95)]
    ids = prune_libtorch._backward_identifiers("_ZN2at4_ops18threshold_backward4callERKNS_6TensorE")
    assert "threshold_backward" in ids
    assert prune_libtorch.PROTECTED.search("_ZN5torch4lazy6OpKindC2ERKNS_3SymE")
    assert not prune_libtorch.PROTECTED.search("_ZN5torch4lazy6OpKind3GetERKSs")


def test_prune_refuses_a_stripped_library(tmp_path):
    lib = tmp_path / "lib.so"
    subprocess.run(["strip", "-s", "-o", str(lib), str(Path(sys.executable).resolve())], check=True)
    with pytest.raises(prune_libtorch.ElfError, match=r"no \.symtab"):
        prune_libtorch.plan(lib.read_bytes())
    with pytest.raises(prune_libtorch.ElfError, match="not an ELF"):
        prune_libtorch.plan(b"hello")


SYNTHETIC = """
namespace torch { namespace lazy {
__attribute__((noinline)) int exported_helper(int x) { return x * 3 + 1; }
__attribute__((noinline)) int called_by_blanked(int x) { return x * 11 - 7; }
__attribute__((noinline)) int only_via_pointer(int x) { return called_by_blanked(x) * 5 + 2; }
namespace {
__attribute__((noinline)) int local_helper(int x) { return x * 13 + 4; }
}
}}
extern "C" int kept_entry(int x) { return torch::lazy::exported_helper(x) + torch::lazy::local_helper(x); }
int (*table[])(int) = { &torch::lazy::only_via_pointer };
"""


@pytest.mark.parametrize("compiler", ["g++", "aarch64-linux-gnu-g++"])
def test_prune_keeps_what_kept_code_calls(compiler, tmp_path):
    """Candidates called from kept code (through the PLT, or directly) stay; one reached only
    through a pointer is blanked, and so is what only it calls. x86-64 and aarch64 decoding."""
    import ctypes
    import shutil

    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed (Debian: apt-get install g++-aarch64-linux-gnu)")
    (tmp_path / "lib.cpp").write_text(SYNTHETIC)
    lib, pruned = tmp_path / "lib.so", tmp_path / "pruned.so"
    subprocess.run([compiler, "-O1", "-fPIC", "-shared", "-o", str(lib), str(tmp_path / "lib.cpp")], check=True)
    result = prune_libtorch.prune(lib, pruned)
    assert result["rules"]["lazy tensor core"]["functions"] == 2
    assert result["rules"]["lazy tensor core"]["kept_for_direct_calls"] == 2
    data = pruned.read_bytes()
    machine, sections = prune_libtorch._sections(data)
    symtab = next(s for s in sections if s.type == prune_libtorch.SHT_SYMTAB)
    text = next(s for s in sections if s.name == ".text")
    trap = prune_libtorch.FILL[machine]
    for name_at, _typ, _shndx, value, size in prune_libtorch._symbols(data, sections, symtab):
        name = prune_libtorch._cstr(data, name_at)
        if "lazy" in name or name == "kept_entry":
            body = data[text.offset + value - text.addr:][:size]
            blanked = body == (trap * size)[:size]
            assert blanked == ("only_via_pointer" in name or "called_by_blanked" in name), name
    if compiler == "g++":
        assert ctypes.CDLL(str(pruned)).kept_entry(2) == 37


def test_a_cuda_library_in_the_self_contained_wheel_is_named():
    sys.path.insert(0, str(NATIVE / "tools"))
    import repair_wheel

    names = ["slipway_runtime.libs/libtorch_cpu-1a2b3c4d.so", "slipway_runtime.libs/libgomp-5e6f.so.1",
             "slipway_runtime.libs/libcudart-9f8e7d6c.so.13", "slipway_runtime.libs/libcupti-0a1b.so.13",
             "slipway_runtime/_core.cpython-311-x86_64-linux-gnu.so"]
    assert repair_wheel.cuda_libraries(names) == names[2:4]
    assert repair_wheel.cuda_libraries(names[:2] + names[4:]) == []


@pytest.mark.parametrize(
    ("requires", "kind"),
    [
        (("numpy", "torch==2.13.0"), "thin"),
        (("numpy", "Torch>=2; python_version >= '3.10'"), "thin"),
        # torch_tensorrt, torchvision, torch-foo are other projects than torch (PEP 503 names).
        (("numpy", "torch_tensorrt>=2.0", "torchvision", "torch-foo"), "self-contained"),
        (("numpy", 'torch; extra == "compare"'), "self-contained"),
        (("slipway-runtime~=0.1.0",), "model-package"),
        (("Slipway_Runtime~=0.1.0", "torch"), "model-package"),
        (("slipway-runtime-torch==0.1.0",), "self-contained"),
    ],
)
def test_wheel_kind_reads_requirements_as_pep_508(tmp_path, requires, kind):
    from test_smoke_fixtures import make_wheel

    from slipway.smoketest import wheel_kind

    wheel = make_wheel(tmp_path, dist="some-wheel", version="0.1.0", files={"some_wheel/__init__.py": ""},
                       readme="# w", requires=requires)
    assert wheel_kind(wheel) == kind


def test_a_projects_runtime_is_not_published_and_its_model_package_is(tmp_path, fake_build):
    """publish-runtime false: the runtime goes to runtime/ (at Slipway's version, from the shared cache),
    the project's model package to wheels/; a second project reuses the cached runtime build."""
    import slipway
    from slipway.smoketest import wheel_kind, wheel_requirements

    built = []
    real_build = wheels.build_local

    def counting_build(*args, **kwargs):
        built.append(1)
        return real_build(*args, **kwargs)

    wheels.build_local = counting_build
    try:
        for project in ("street-scenes", "harbour-cams"):
            ctx = _ctx(tmp_path / project, publish_runtime=False)
            ctx.plan.packages = [{"model": "shapes-torch", "package": f"{project}-detector",
                                  "import": f"{project.replace('-', '_')}_detector"}]
            result = wheels.run(ctx)
            assert sorted(p.name for p in (ctx.out / "runtime").glob("*.whl")) == [
                "slipway_runtime-1.0.0-cp311-cp311-manylinux_2_34_x86_64.whl",
                "slipway_runtime_torch-1.0.0-cp311-cp311-manylinux_2_34_x86_64.whl"]
            published = sorted(p.name for p in (ctx.out / "wheels").glob("*.whl"))
            assert published == [f"{project.replace('-', '_')}_detector-1.0.0-py3-none-any.whl"]
            package = ctx.out / "wheels" / published[0]
            assert wheel_kind(package) == "model-package"
            assert wheel_requirements(package) == [f"slipway-runtime~={slipway.__version__.rsplit('.', 1)[0]}.0"]
            index = json.loads((ctx.out / "wheels" / "wheels.json").read_text())
            assert index["publish_runtime"] is False and index["version"] == slipway.__version__
            assert all(not w["published"] and w["folder"] == "runtime" for w in index["wheels"])
            assert [p["package"] for p in index["packages"]] == [f"{project}-detector"]
            assert "not published" in result["summary"] and f"{project}-detector" in result["summary"]
    finally:
        wheels.build_local = real_build
    assert len(built) == 1, "the second project must reuse the runtime built for the first"
    assert len(list(fake_build["cache"].iterdir())) == 1


def _github_job_ctx(tmp_path: Path, monkeypatch, host: str, **wheel_settings) -> tuple[StageContext, Path]:
    """A wheels job on GitHub: the plan's two targets and one model package; GITHUB_OUTPUT set."""
    ctx = _ctx(tmp_path, **wheel_settings)
    ctx.plan.matrix.wheels = [_target("x86_64"), _target("aarch64")]
    ctx.plan.packages = [{"model": "shapes-torch", "package": "acme-detector", "import": "acme_detector"}]
    monkeypatch.setattr(wheels, "host_arch", lambda: host)
    output = tmp_path / "github-output"
    output.write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    return ctx, output


def test_each_arch_job_builds_its_runtime_and_only_the_first_the_model_packages(tmp_path, monkeypatch, fake_build):
    """`slipway wheels --arch A` (one GitHub job per wheel target): the runtime into runtime/, the
    model packages (pure Python, once per release) in the first target's job only; the job's
    outputs say which folders hold wheels to upload."""
    from slipway.github import read_outputs

    ctx, output = _github_job_ctx(tmp_path / "arm", monkeypatch, "aarch64", publish_runtime=False)
    result = wheels.run(ctx, arch="aarch64")
    assert sorted(p.name for p in (ctx.out / "runtime").glob("*.whl"))
    assert list((ctx.out / "wheels").glob("*.whl")) == []
    assert "model packages: built by the x86_64 job" in result["summary"]
    assert read_outputs(output) == {"runtime": "true", "publish": "false"}

    ctx, output = _github_job_ctx(tmp_path / "x86", monkeypatch, "x86_64", publish_runtime=False)
    result = wheels.run(ctx, arch="x86_64")
    assert [p.name for p in (ctx.out / "wheels").glob("*.whl")] == ["acme_detector-1.0.0-py3-none-any.whl"]
    assert read_outputs(output) == {"runtime": "true", "publish": "true"}
    # Reused on a second run: the outputs are written again (a re-run of the job uploads again).
    output.write_text("")
    assert wheels.run(ctx, arch="x86_64")["summary"].endswith("reused")
    assert read_outputs(output) == {"runtime": "true", "publish": "true"}

    # Slipway's own release publishes the runtime: everything in wheels/, nothing in runtime/.
    ctx, output = _github_job_ctx(tmp_path / "own", monkeypatch, "aarch64", publish_runtime=True)
    wheels.run(ctx, arch="aarch64")
    assert read_outputs(output) == {"runtime": "false", "publish": "true"}
    assert list((ctx.out / "runtime").glob("*.whl")) == []


def test_an_arch_job_on_the_wrong_machine_or_off_the_plan_is_refused(tmp_path, monkeypatch, fake_build):
    ctx, _ = _github_job_ctx(tmp_path, monkeypatch, "x86_64")
    with pytest.raises(BuildError, match=r"--arch aarch64 on this x86_64 machine: the aarch64 wheels are built on an "
                                         r"aarch64 runner"):
        wheels.run(ctx, arch="aarch64")
    with pytest.raises(BuildError, match=r"--arch riscv64: the plan's wheel targets \(matrix.wheels\) are "
                                         r"x86_64, aarch64"):
        wheels.run(ctx, arch="riscv64")
    assert not (ctx.out / "wheels" / "wheels.json").exists()


def test_the_github_wheels_job_runs_this_stage_from_slipways_own_sources():
    """The wheels job runs `slipway wheels --arch`: the runtime's sources are the installed
    Slipway's (slipway.paths), never a native/ folder of the calling repository."""
    from slipway.cli import build_parser

    args = build_parser().parse_args(["wheels", "--arch", "aarch64"])
    assert args.arch == "aarch64" and args.stage == "wheels"
    from slipway.paths import resource

    assert wheels.native_dir() == resource("native")
