"""Turn the wheel scikit-build-core built into a release wheel (the cibuildwheel repair step).

--kind self-contained  vendor libtorch with auditwheel, after blanking the parts of libtorch_cpu an
                       inference runtime never runs (prune_libtorch.py), stripped, deflate level 9:
                       that is what brings the wheel under PyPI's 100 MiB (README.md, "Wheel size").
--kind thin            auditwheel too (for the manylinux tag), but libtorch stays out: the wheel
                       loads it from the torch package it depends on.

Standard library only, besides the auditwheel and strip commands that manylinux images carry.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prune_libtorch

# What the thin wheel takes from the torch package instead of vendoring.
TORCH_SONAMES = ("libtorch.so", "libtorch_cpu.so", "libc10.so", "libgomp*.so*", "libgomp-*.so*")

# Libraries of NVIDIA's CUDA stack: a CPU runtime wheel that vendors one was built against a CUDA
# build of torch. Measured: PyPI's aarch64 torch 2.13.0 is the CUDA 13 build (a 427 MB wheel),
# and even its libtorch_cpu.so needs libcudart.so.13 and libcupti.so.13.
CUDA_LIBRARY_PREFIXES = ("libcuda", "libcupti", "libcublas", "libcufft", "libcurand", "libcusolver",
                         "libcusparse", "libcudnn", "libnccl", "libnvrtc", "libnvjitlink", "libnvToolsExt",
                         "libnvshmem", "libcufile")


def cuda_libraries(names: list[str]) -> list[str]:
    """The CUDA libraries among vendored file names (any folder, any auditwheel hash suffix)."""
    return [n for n in names if Path(n).name.startswith(CUDA_LIBRARY_PREFIXES)]


def torch_lib_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    # find_spec, not import: the libraries are all that is needed, and importing torch is slow.
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("repair_wheel: the torch package is not importable here; pass --torch-lib DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def staged_torch_libs(torch_lib: Path, stage: Path, prune: bool) -> dict:
    """A folder auditwheel searches instead of torch/lib: links to torch's libraries, except a
    pruned copy of libtorch_cpu.so."""
    for item in torch_lib.iterdir():
        if item.is_file() and ".so" in item.name:
            (stage / item.name).symlink_to(item)
    original = torch_lib / "libtorch_cpu.so"
    if not original.exists():
        raise SystemExit(f"repair_wheel: no libtorch_cpu.so in {torch_lib}")
    if not prune:
        return {}
    target = stage / "libtorch_cpu.so"
    target.unlink()
    return prune_libtorch.prune(original, target)


def auditwheel(wheel: Path, dest: Path, extra: list[str], env: dict[str, str], level: int) -> Path:
    with tempfile.TemporaryDirectory() as out:
        cmd = ["auditwheel", "repair", "--strip", "-z", str(level), "-w", out, *extra, str(wheel)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
        made = list(Path(out).glob("*.whl"))
        if len(made) != 1:
            raise SystemExit(f"repair_wheel: auditwheel made {len(made)} wheels")
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / made[0].name
        shutil.move(str(made[0]), final)
        return final


def self_contained(args: argparse.Namespace, env: dict[str, str], report: dict, prune: bool) -> Path:
    torch_lib = torch_lib_dir(args.torch_lib)
    with tempfile.TemporaryDirectory() as stage:
        report["prune"] = staged_torch_libs(torch_lib, Path(stage), prune)
        for name, r in report["prune"].get("rules", {}).items():
            print(f"  pruned {r['bytes'] / 2**20:6.2f} MiB  {name}", flush=True)
        # The stage comes first, so the (maybe pruned) copy is what gets vendored. torch/lib and
        # torch.libs follow because the copy's $ORIGIN-relative RUNPATH no longer leads to the
        # libraries torch vendors itself (OpenBLAS and friends on aarch64).
        search = [stage, str(torch_lib), str(torch_lib.parent.parent / "torch.libs")]
        return auditwheel(args.wheel, args.wheel_dir, [], {**env, "AUDITWHEEL_LD_LIBRARY_PATH": ":".join(search)},
                          args.zip_level)


def vendored(wheel: Path) -> list[tuple[str, int, int]]:
    with zipfile.ZipFile(wheel) as zf:
        return [(i.filename, i.file_size, i.compress_size) for i in zf.infolist() if ".so" in i.filename]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("--kind", choices=("self-contained", "thin"), required=True)
    p.add_argument("-w", "--wheel-dir", type=Path, required=True)
    p.add_argument("--torch-lib", help="torch's lib folder (default: from the importable torch package)")
    p.add_argument("--prune", choices=("auto", "always", "never"), default=os.environ.get("SLIPWAY_PRUNE", "auto"),
                   help="blank unreachable libtorch code: always, never, or auto (default, or $SLIPWAY_PRUNE): "
                        "on x86-64, whose libtorch is measured to need it, else only when the wheel would "
                        "exceed --max-size-mib")
    p.add_argument("--max-size-mib", type=float, default=float(os.environ.get("SLIPWAY_MAX_SIZE_MIB", "100")),
                   help="size limit 'auto' pruning aims under (default 100, or $SLIPWAY_MAX_SIZE_MIB)")
    p.add_argument("--zip-level", type=int, default=9, help="deflate level of the repaired wheel (default 9)")
    p.add_argument("--report", type=Path, help="write what was done as JSON")
    args = p.parse_args(argv)

    env = dict(os.environ)
    report: dict = {"kind": args.kind, "input": args.wheel.name}
    if args.kind == "self-contained":
        prune = args.prune == "always" or (args.prune == "auto" and platform.machine() in ("x86_64", "AMD64"))
        final = self_contained(args, env, report, prune)
        if args.prune == "auto" and not prune and final.stat().st_size > args.max_size_mib * 2**20:
            print(f"{final.name}: {final.stat().st_size / 2**20:.2f} MiB is over {args.max_size_mib:g} MiB: "
                  "repairing again with a pruned libtorch_cpu", flush=True)
            final.unlink()
            final = self_contained(args, env, report, True)
        cuda = cuda_libraries([name for name, _, _ in vendored(final)])
        if cuda:
            final.unlink()
            raise SystemExit(f"repair_wheel: the self-contained CPU wheel would vendor CUDA libraries {cuda}: it was "
                             "built against a CUDA build of torch; install the CPU build (torch==<version>+cpu from "
                             "https://download.pytorch.org/whl/cpu) before building")
    else:
        excludes = [x for soname in TORCH_SONAMES for x in ("--exclude", soname)]
        final = auditwheel(args.wheel, args.wheel_dir, excludes, env, args.zip_level)
        libs = [name for name, _, _ in vendored(final) if ".libs/" in name]
        if libs:
            raise SystemExit(f"repair_wheel: the thin wheel must not vendor libraries, but has {libs}")

    size = final.stat().st_size
    report.update(wheel=final.name, size=size, size_mib=size / 2**20,
                  libraries=[{"file": n, "size": s, "compressed": c} for n, s, c in vendored(final)])
    for lib in report["libraries"]:
        print(f"  {lib['compressed'] / 2**20:8.2f} MiB deflated ({lib['size'] / 2**20:8.2f} MiB)  {lib['file']}")
    print(f"{final.name}: {size / 2**20:.2f} MiB", flush=True)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
