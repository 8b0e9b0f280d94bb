"""SBOMs (slipway.sbom): CycloneDX built and checked with cyclonedx-python-lib, libtorch as shipped
marked as modified (pedigree), requirements read with `packaging`.

The images' SBOMs from a real image are tested in test_smoke.py and test_publish.py (Docker);
here the image SBOM is built from an inventory given as data, and the in-image script runs with
this interpreter.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cyclonedx.validation.json import JsonStrictValidator
from test_smoke_fixtures import make_wheel

from slipway import sbom
from slipway.errors import BuildError

CREATED = "2026-01-02T03:04:05+00:00"


def elf(code: bytes, machine: int = 62) -> bytes:
    """A minimal 64-bit little-endian ELF with one executable section holding ``code``."""
    shoff = 64 + len(code)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 0)
    null = bytes(64)
    text = struct.pack("<IIQQQQIIQQ", 1, 1, 0x6, 0, 64, len(code), 0, 0, 16, 0)  # SHF_ALLOC|SHF_EXECINSTR
    # Data section, not executable: trap-looking bytes there are no code.
    data = struct.pack("<IIQQQQIIQQ", 2, 1, 0x3, 0, 64, len(code), 0, 0, 16, 0)
    return header + code + null + text + data


PRUNED_X86 = elf(b"\x55\x48" * 50 + b"\xcc" * 5000 + b"\x90" * 8 + b"\xcc" * 63 + b"\xc3" + b"\xcc" * 300)
STOCK_X86 = elf(b"\x55\x48" * 50 + b"\xcc" * 15 + b"\xc3" * 40)


def _runtime_wheel(tmp_path: Path, libtorch: bytes | str = "vendored libtorch", requires=("numpy",)) -> Path:
    return make_wheel(
        tmp_path,
        dist="slipway-runtime",
        version="0.1.0",
        readme="# runtime",
        requires=requires,
        files={
            "slipway_runtime/__init__.py": "",
            "slipway_runtime/_build_info.py": 'KIND = "self-contained"\nTORCH_VERSION = "2.13.0"\n',
            "slipway_runtime/_core.cpython-311-x86_64-linux-gnu.so": "binary",
            "slipway_runtime.libs/libtorch_cpu-1a2b3c4d.so": libtorch,
            "slipway_runtime.libs/libc10-5e6f7a8b.so": "vendored c10",
            "slipway_runtime.libs/libgomp-a34b3233.so.1.0.0": "vendored gomp",
        },
    )


def _by_name(bom: dict) -> dict[str, dict]:
    return {c["name"]: c for c in bom["components"]}


def test_trap_filled_bytes_counts_long_trap_runs_in_code_only():
    # 5000 and 300 count; the run of 63 between them is padding-sized and does not.
    assert sbom._trap_filled_bytes(PRUNED_X86) == 5300
    assert sbom._trap_filled_bytes(STOCK_X86) == 0
    # aarch64 blanks with the all-zero `udf #0` word.
    assert sbom._trap_filled_bytes(elf(b"\x1f\x20\x03\xd5" * 10 + bytes(4096), machine=183)) == 4096
    assert sbom._trap_filled_bytes(b"not an ELF file" * 100) == 0
    # Another machine: no known trap filler, nothing counted.
    assert sbom._trap_filled_bytes(elf(b"\xcc" * 1000, machine=3)) == 0


def test_wheel_sbom_lists_metadata_requirements_and_vendored_libraries(tmp_path):
    wheel = _runtime_wheel(tmp_path)
    bom = sbom.wheel_sbom(wheel)
    assert sbom.validate(bom) == []
    assert bom["specVersion"] == sbom.SPEC_VERSION
    root = bom["metadata"]["component"]
    assert root["name"] == "slipway-runtime" and root["version"] == "0.1.0"
    assert root["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(wheel.read_bytes()).hexdigest()}]
    assert root["purl"].startswith("pkg:pypi/slipway-runtime@0.1.0?file_name=")
    assert root["licenses"] == [{"license": {"id": "Apache-2.0"}}]  # an SPDX id, checked by the library
    by_name = _by_name(bom)
    assert {"libtorch_cpu", "libc10", "libgomp", "numpy"} <= set(by_name)
    assert by_name["libgomp"]["version"] == "1.0.0"
    assert by_name["libtorch_cpu"]["version"] == "2.13.0"  # from the runtime's _build_info.py
    gomp_sha = hashlib.sha256(b"vendored gomp").hexdigest()
    assert by_name["libgomp"]["hashes"] == [{"alg": "SHA-256", "content": gomp_sha}]
    assert "pedigree" not in by_name["libgomp"]
    assert by_name["numpy"]["scope"] == "required"
    # Deterministic: the same wheel gives the same document, without a wall-clock timestamp.
    assert "timestamp" not in bom["metadata"]
    assert sbom.wheel_sbom(wheel) == bom
    assert sbom.wheel_sbom(wheel, created=CREATED)["metadata"]["timestamp"] == CREATED


def test_vendored_libtorch_is_marked_modified_and_pruning_is_read_from_its_code(tmp_path):
    pruned = _by_name(sbom.wheel_sbom(_runtime_wheel(tmp_path / "p", libtorch=PRUNED_X86)))
    stock = _by_name(sbom.wheel_sbom(_runtime_wheel(tmp_path / "s", libtorch=STOCK_X86)))
    for libs in (pruned, stock):
        for name in ("libtorch_cpu", "libc10"):
            (ancestor,) = libs[name]["pedigree"]["ancestors"]
            assert ancestor["purl"] == f"pkg:pypi/torch@2.13.0#torch/lib/{name}.so"
            assert ancestor["version"] == "2.13.0" and ancestor["name"] == name
            assert "auditwheel" in libs[name]["pedigree"]["notes"]
    notes = pruned["libtorch_cpu"]["pedigree"]["notes"]
    assert "Pruned" in notes and "prune_libtorch.py" in notes and "trap instructions" in notes
    assert {"name": "slipway:pruned", "value": "true"} in pruned["libtorch_cpu"]["properties"]
    assert "Pruned" not in stock["libtorch_cpu"]["pedigree"]["notes"]
    assert "Pruned" not in pruned["libc10"]["pedigree"]["notes"]


def test_requirements_are_read_as_pep_508(tmp_path):
    wheel = _runtime_wheel(
        tmp_path,
        requires=(
            "numpy>=1.26",
            "Torch_TensorRT>=2.0; extra == 'trt'",
            'pillow[webp]; python_version >= "3.10"',
        ),
    )
    by_name = _by_name(sbom.wheel_sbom(wheel))
    assert by_name["torch-tensorrt"]["scope"] == "optional"
    assert by_name["torch-tensorrt"]["purl"] == "pkg:pypi/torch-tensorrt"
    assert by_name["pillow"]["scope"] == "required" and by_name["numpy"]["scope"] == "required"
    assert "torch" not in by_name
    assert sbom._requirement_names(
        ["torch_tensorrt; extra == 'trt'", "Typing.Extensions>=4", "starlette"]
    ) == ["typing-extensions", "starlette"]
    broken = _runtime_wheel(tmp_path / "b", requires=("numpy >=>= 1",))
    with pytest.raises(BuildError, match=r"Requires-Dist 'numpy >=>= 1'"):
        sbom.wheel_sbom(broken)


def test_sbom_passes_the_official_cyclonedx_schema(tmp_path):
    bom = sbom.wheel_sbom(_runtime_wheel(tmp_path, libtorch=PRUNED_X86))
    assert JsonStrictValidator(sbom.SCHEMA).validate_str(json.dumps(bom)) is None


def test_sbom_validation_reports_what_is_wrong(tmp_path):
    bom = sbom.wheel_sbom(_runtime_wheel(tmp_path))
    bom["specVersion"] = "1.2"
    bom["components"][0]["type"] = "gadget"
    bom["components"][1]["bom-ref"] = bom["components"][0]["bom-ref"]
    bom["dependencies"].append({"ref": "nowhere", "dependsOn": []})
    problems = "\n".join(sbom.validate(bom))
    assert (
        "specVersion" in problems and "gadget" in problems and "unique" in problems and "nowhere" in problems
    )
    with pytest.raises(BuildError, match="not valid CycloneDX"):
        sbom.write(bom, tmp_path / "x.cdx.json")


INVENTORY = {
    "python": "3.11.2",
    "executable": "/opt/venv/bin/python",
    "implementation": "CPython",
    "machine": "x86_64",
    "os": {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
    "python_dists": [
        {
            "name": "slipway-runtime",
            "version": "0.1.0",
            "summary": "runtime",
            "license_expression": "Apache-2.0",
            "license": "",
            "classifiers": [],
            "requires": ["numpy>=1.26", "torch_tensorrt; extra == 'trt'"],
            "location": "/opt/venv/lib/python3.11/site-packages/slipway_runtime-0.1.0.dist-info",
            "torch_version": "2.13.0",
            "vendored": [
                {
                    "path": "slipway_runtime.libs/libtorch_cpu-1a2b3c4d.so",
                    "sha256": "a" * 64,
                    "size": 10,
                    "trap_bytes": 40 * 2**20,
                },
                {
                    "path": "slipway_runtime.libs/libgomp-a34b3233.so.1.0.0",
                    "sha256": "b" * 64,
                    "size": 3,
                    "trap_bytes": 0,
                },
            ],
        },
        {
            "name": "numpy",
            "version": "2.4.6",
            "summary": "",
            "license_expression": "",
            "license": "BSD License",
            "classifiers": ["License :: OSI Approved :: BSD License"],
            "requires": [],
            "location": "",
            "torch_version": None,
            "vendored": [],
        },
    ],
    "debs": [
        {
            "Package": "libc6",
            "Version": "2.36-9+deb12u4",
            "Architecture": "amd64",
            "Source": "glibc",
            "Depends": "libgcc-s1",
            "Pre-Depends": "",
        },
        {
            "Package": "libgcc-s1",
            "Version": "12.2.0-14",
            "Architecture": "amd64",
            "Source": "gcc-12",
            "Depends": "gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)",
            "Pre-Depends": "",
        },
    ],
}


def test_image_sbom_of_the_cpp_image_marks_its_pruned_libtorch():
    labels = {"org.opencontainers.image.created": CREATED, "dev.slipway.runtime": "cpp"}
    kwargs = dict(
        image_id="sha256:" + "c" * 64,
        name="demo-pytorch-cpp-cpu",
        version="1.2.3",
        labels=labels,
        inventory=INVENTORY,
    )
    bom = sbom.image_sbom("unused", **kwargs)
    assert sbom.validate(bom) == []
    assert bom == sbom.image_sbom("unused", **kwargs)
    assert bom["metadata"]["timestamp"] == CREATED
    root = bom["metadata"]["component"]
    assert root["type"] == "container" and root["hashes"][0]["content"] == "c" * 64
    by_name = _by_name(bom)
    torch_cpu = by_name["libtorch_cpu"]
    assert torch_cpu["version"] == "2.13.0"
    assert torch_cpu["pedigree"]["ancestors"][0]["purl"] == "pkg:pypi/torch@2.13.0#torch/lib/libtorch_cpu.so"
    assert "40.0 MiB" in torch_cpu["pedigree"]["notes"]
    assert "pedigree" not in by_name["libgomp"]
    deps = {d["ref"]: d.get("dependsOn", []) for d in bom["dependencies"]}
    runtime = by_name["slipway-runtime"]["bom-ref"]
    assert torch_cpu["bom-ref"] in deps[runtime] and by_name["numpy"]["bom-ref"] in deps[runtime]
    assert by_name["libc6"]["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
    assert deps[by_name["libgcc-s1"]["bom-ref"]] == [by_name["libc6"]["bom-ref"]]
    assert by_name["numpy"]["licenses"] == [{"license": {"name": "BSD License"}}]
    assert sbom.summary(bom) == {"application": 1, "deb": 2, "library": 2, "operating-system": 1, "pypi": 2}
    assert (
        sbom.image_file_name("ghcr.io/acme/demo-pytorch-cpp-cpu", "1.2.3")
        == "demo-pytorch-cpp-cpu-1.2.3.cdx.json"
    )


def test_the_in_image_inventory_script_runs_on_a_plain_python(tmp_path):
    """The script the image's own Python runs (stdlib only), here on this interpreter without
    site-packages, over one installed runtime with a pruned libtorch vendored by auditwheel."""
    site = tmp_path / "site"
    files = {
        "slipway_runtime/__init__.py": b"",
        "slipway_runtime/_build_info.py": b'TORCH_VERSION = "2.13.0"\n',
        "slipway_runtime.libs/libtorch_cpu-1a2b3c4d.so": PRUNED_X86,
        "slipway_runtime.libs/libgomp-a34b3233.so.1.0.0": b"gomp",
        "slipway_runtime-0.1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: slipway-runtime\nVersion: 0.1.0\nLicense-Expression: Apache-2.0\n"
            b"Requires-Dist: numpy>=1.26\n"
        ),
    }
    for name, data in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    (site / "slipway_runtime-0.1.0.dist-info/RECORD").write_text("".join(f"{n},,\n" for n in files))
    script = f"import sys; sys.path.insert(0, {str(site)!r})\n" + sbom._INVENTORY
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    inv = json.loads(res.stdout.strip().splitlines()[-1])
    assert inv["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(inv["debs"], list)
    (runtime,) = [d for d in inv["python_dists"] if d["name"] == "slipway-runtime"]
    assert runtime["torch_version"] == "2.13.0" and runtime["requires"] == ["numpy>=1.26"]
    libs = {lib["path"]: lib for lib in runtime["vendored"]}
    torch_cpu = libs["slipway_runtime.libs/libtorch_cpu-1a2b3c4d.so"]
    assert torch_cpu["trap_bytes"] == 5300 and torch_cpu["sha256"] == hashlib.sha256(PRUNED_X86).hexdigest()
    assert libs["slipway_runtime.libs/libgomp-a34b3233.so.1.0.0"]["trap_bytes"] == 0
    bom = sbom.image_sbom("unused", image_id="sha256:" + "d" * 64, name="x", version="1.0.0", inventory=inv)
    assert sbom.validate(bom) == []
    assert "Pruned" in _by_name(bom)["libtorch_cpu"]["pedigree"]["notes"]


@pytest.mark.parametrize("compiler", ["g++", "aarch64-linux-gnu-g++"])
def test_what_the_pruner_blanks_is_what_the_sbom_reads(compiler, tmp_path):
    """native/tools/prune_libtorch.py on a real library: the SBOM's scan finds the blanked code
    (x86-64 int3, aarch64 udf), and nothing in the library before pruning."""
    import shutil

    if not shutil.which(compiler):
        pytest.skip(f"{compiler} is not installed (Debian: apt-get install g++-aarch64-linux-gnu)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "native" / "tools"))
    import prune_libtorch

    body = "\n".join(f'    x = x * 7 + {i}; asm volatile("" : "+r"(x));' for i in range(300))
    (tmp_path / "lib.cpp").write_text(
        "namespace torch { namespace lazy {\n"
        f"__attribute__((noinline)) int only_via_pointer(int x) {{\n{body}\n    return x;\n}}\n"
        "}}\n"
        'extern "C" int kept_entry(int x) { return x + 1; }\n'
        "int (*table[])(int) = { &torch::lazy::only_via_pointer };\n"
    )
    lib, pruned = tmp_path / "lib.so", tmp_path / "pruned.so"
    subprocess.run(
        [compiler, "-O1", "-fPIC", "-shared", "-o", str(lib), str(tmp_path / "lib.cpp")], check=True
    )
    result = prune_libtorch.prune(lib, pruned)
    assert result["rules"]["lazy tensor core"]["functions"] == 1
    assert sbom._trap_filled_bytes(lib.read_bytes()) == 0
    found = sbom._trap_filled_bytes(pruned.read_bytes())
    assert result["bytes"] > 1000 and result["bytes"] - 16 <= found <= result["bytes"] + 16


@pytest.mark.docker
def test_a_pushed_image_gets_the_sbom_a_local_release_writes(local_services, tmp_path):
    """GitHub's publish job runs `python -m slipway.sbom IMAGE@DIGEST`: the same document, byte for
    byte, as `slipway publish` writes from the local image; the cpp image's pruned libtorch marked."""
    from test_smoke_fixtures import base_image, docker_build, run_id

    from slipway import engine

    uid = run_id()
    site = tmp_path / "ctx" / "site"
    files = {
        "slipway_runtime/__init__.py": b"",
        "slipway_runtime/_build_info.py": b'TORCH_VERSION = "2.13.0"\n',
        "slipway_runtime.libs/libtorch_cpu-1a2b3c4d.so": PRUNED_X86,
        "slipway_runtime-0.1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: slipway-runtime\nVersion: 0.1.0\n",
    }
    for name, data in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    (site / "slipway_runtime-0.1.0.dist-info/RECORD").write_text("".join(f"{n},,\n" for n in files))
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {base_image()}\nCOPY site/ /opt/site/\nENV PYTHONPATH=/opt/site\n"
        f'LABEL org.opencontainers.image.created="2026-01-01T00:00:00Z" dev.slipway.test="{uid}"\n'
    )
    repository = f"127.0.0.1:5000/{uid}/{uid}-pytorch-cpp-cpu"
    image_id = docker_build(tmp_path / "ctx", f"{repository}:build")
    try:
        engine.push(f"{repository}:build")
        info = engine.image_inspect(image_id)
        digest, labels = info["RepoDigests"][0], info["Config"]["Labels"]
        local = tmp_path / "local" / sbom.image_file_name(repository, "1.2.3")
        sbom.write(
            sbom.image_sbom(
                f"{repository}:build",
                image_id=image_id,
                name=repository.rsplit("/", 1)[-1],
                version="1.2.3",
                labels=labels,
            ),
            local,
        )
        pushed = tmp_path / "github" / sbom.image_file_name(repository, "1.2.3")
        res = subprocess.run(
            [sys.executable, "-m", "slipway.sbom", digest, "--version", "1.2.3", "--output", str(pushed)],
            capture_output=True,
            text=True,
            timeout=600,
            env=engine.docker_env(),
        )
        assert res.returncode == 0, res.stderr
        assert pushed.read_bytes() == local.read_bytes()
        torch_cpu = _by_name(json.loads(pushed.read_text()))["libtorch_cpu"]
        assert "Pruned" in torch_cpu["pedigree"]["notes"]
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "slipway.sbom",
                f"{repository}@sha256:{'0' * 64}",
                "--version",
                "1.2.3",
                "--output",
                str(tmp_path / "x.json"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=engine.docker_env(),
        )
        assert bad.returncode == 5 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        engine.remove_image(image_id)
