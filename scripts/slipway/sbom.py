"""CycloneDX SBOMs (JSON) of what a release really ships: per image and per wheel.

Built and validated with cyclonedx-python-lib; what goes in is read from the artifact itself:

- an image: one throw-away container of the image itself (``--network none``, the image's own
  Python) lists the installed Python distributions with ``importlib.metadata`` (plus licences,
  requirements and the shared libraries auditwheel vendored into ``<package>.libs/``) and the
  Debian packages from dpkg's database. cyclonedx-bom can describe a Python environment but not
  Debian packages, and it would have to be installed into every image; syft does both but cannot
  tell a pruned libtorch from PyTorch's. GitHub's publish job runs this module on the pushed
  digest (``python -m slipway.sbom``): the same document as a local release, byte for byte.
- a wheel: its ``METADATA`` (name, version, licence, ``Requires-Dist``) and every shared library
  in it, each with its sha256.

libtorch as Slipway ships it is not the upstream library: auditwheel renames and strips the
libraries it vendors, and ``native/tools/prune_libtorch.py`` overwrites the code of libtorch_cpu
that an inference-only runtime never runs with trap instructions. Each such library carries a
CycloneDX pedigree: its ancestor is the file in PyPI's torch it was copied from, and the notes say
what was changed (pruning is read from the library's own bytes, so the SBOM says what is there).

The output is deterministic (a serial number derived from the content's identity, the commit time
rather than the wall clock, every bom-ref set here), so publishing twice produces the same files.
"""

from __future__ import annotations

import email.parser
import hashlib
import inspect
import json
import re
import uuid
import zipfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentScope, ComponentType, Pedigree
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.output.json import BY_SCHEMA_VERSION as JSON_OUTPUT
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from slipway import __version__, engine
from slipway.errors import BuildError, SlipwayError

SCHEMA = SchemaVersion.V1_6
SPEC_VERSION = SCHEMA.to_version()
# Shared libraries that come from libtorch (as auditwheel names them, without its hash suffix).
LIBTORCH_LIBRARIES = {
    "libtorch",
    "libtorch_cpu",
    "libtorch_cuda",
    "libc10",
    "libc10_cuda",
    "libtorch_global_deps",
}
# Runs of at least this many trap bytes in a library's code are blanked functions, not padding
# (compilers pad functions to 16 or 64 bytes at most).
TRAP_RUN = 64


def _trap_filled_bytes(data: bytes) -> int:
    """Bytes of a 64-bit ELF library's executable sections that lie in runs of trap instructions
    (int3 on x86-64, the all-zero ``udf`` word on aarch64) of TRAP_RUN bytes or more."""
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":  # ELFCLASS64, little-endian
        return 0
    fill = {62: b"\xcc", 183: b"\x00"}.get(int.from_bytes(data[18:20], "little"))
    if fill is None:
        return 0

    def field(at: int, size: int) -> int:
        return int.from_bytes(data[at : at + size], "little")

    shoff, shentsize, shnum = field(0x28, 8), field(0x3A, 2), field(0x3C, 2)
    needle, other, total = fill * TRAP_RUN, re.compile(b"[^" + re.escape(fill) + b"]"), 0
    for i in range(shnum):
        header = shoff + i * shentsize
        # sh_flags & SHF_EXECINSTR, and not SHT_NOBITS (no bytes in the file)
        if not field(header + 8, 8) & 0x4 or field(header + 4, 4) == 8:
            continue
        pos, end = field(header + 0x18, 8), field(header + 0x18, 8) + field(header + 0x20, 8)
        while (start := data.find(needle, pos, end)) >= 0:
            stop = other.search(data, start + TRAP_RUN, end)
            pos = stop.start() if stop else end
            total += pos - start
    return total


# Runs inside the image with its own Python: stdlib only, so it works in every variant.
_INVENTORY = (
    "import hashlib, json, os, platform, re, sys\n"
    "from importlib import metadata\n\n"
    f"LIBTORCH = {sorted(LIBTORCH_LIBRARIES)!r}\n"
    f"TRAP_RUN = {TRAP_RUN!r}\n\n"
    + inspect.getsource(_trap_filled_bytes)
    + r"""

def vendored(d):
    # Shared libraries auditwheel put into <package>.libs/, and the libtorch a runtime was built on.
    libs, torch_version = [], None
    for f in d.files or []:
        path = str(f)
        if path.endswith("/_build_info.py") and path.count("/") == 1:
            found = re.search(r'TORCH_VERSION\s*=\s*"([^"@]+)"', open(f.locate(), encoding="utf-8", errors="replace").read())
            torch_version = found.group(1) if found else None
        if ".libs/" in path and ".so" in path.rsplit("/", 1)[-1]:
            data = open(f.locate(), "rb").read()
            base = path.rsplit("/", 1)[-1].split(".so")[0]
            base = re.sub(r"-[0-9a-f]{8}$", "", base)
            libs.append({"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                         "trap_bytes": _trap_filled_bytes(data) if base in LIBTORCH else 0})
    return libs, torch_version

def dist_info(d):
    m = d.metadata
    libs, torch_version = vendored(d)
    return {
        "name": m["Name"], "version": d.version, "summary": m.get("Summary") or "",
        "license_expression": m.get("License-Expression") or "", "license": (m.get("License") or "")[:300],
        "classifiers": [c for c in (m.get_all("Classifier") or []) if c.startswith("License ::")],
        "requires": m.get_all("Requires-Dist") or [],
        "location": str(getattr(d, "_path", "")),
        "vendored": libs, "torch_version": torch_version,
    }

seen, dists = set(), []
for d in metadata.distributions():
    key = (d.metadata["Name"] or "").lower()
    if key and key not in seen:
        seen.add(key)
        dists.append(dist_info(d))

debs = []
status = "/var/lib/dpkg/status"
if os.path.exists(status):
    block = {}
    def flush(b):
        if b.get("Status", "").endswith(" installed") and b.get("Package"):
            debs.append({k: b.get(k, "") for k in ("Package", "Version", "Architecture", "Source", "Depends",
                                                    "Pre-Depends")})
    last = None
    with open(status, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                flush(block); block = {}; last = None
            elif line[0] in " \t":
                if last: block[last] += "\n" + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                block[last] = value.strip()
    flush(block)

osr = {}
if os.path.exists("/etc/os-release"):
    for line in open("/etc/os-release"):
        k, _, v = line.strip().partition("=")
        if k: osr[k] = v.strip('"')
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "implementation": platform.python_implementation(), "machine": platform.machine(),
                  "os": osr, "python_dists": dists, "debs": debs}))
"""
)


# --------------------------------------------------------------------------------------------
# Building blocks


def normalize(name: str) -> str:
    return canonicalize_name(name)


def pypi_purl(name: str, version: str | None = None, **qualifiers: str) -> PackageURL:
    return PackageURL(type="pypi", name=normalize(name), version=version, qualifiers=qualifiers or None)


def deb_purl(name: str, version: str, arch: str, distro: str) -> PackageURL:
    qualifiers = {k: v for k, v in (("arch", arch), ("distro", distro)) if v}
    return PackageURL(
        type="deb", namespace="debian", name=name, version=version, qualifiers=qualifiers or None
    )


def _props(**values: str) -> list[Property]:
    return [Property(name=f"slipway:{k.replace('_', '-')}", value=v) for k, v in values.items() if v]


def _sha256(hexdigest: str) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)]


_LICENSES = LicenseFactory()


def _licenses(
    expression: str, text: str, classifiers: list[str]
) -> list[LicenseExpression | DisjunctiveLicense]:
    """A declared SPDX expression as such; otherwise the licence text (when it is a name) and the
    classifiers' names, SPDX ids where the library knows them."""
    if expression:
        return [_LICENSES.make_from_string(expression)]
    names = [c.rsplit("::", 1)[-1].strip() for c in classifiers]
    if text and "\n" not in text.strip() and len(text) <= 100 and text.strip().upper() != "UNKNOWN":
        names.insert(0, text.strip())
    out: list[LicenseExpression | DisjunctiveLicense] = []
    for name in dict.fromkeys(n for n in names if n):
        lic = _LICENSES.make_from_string(name)
        # An expression must stand alone: beside other names, it is recorded as a name.
        out.append(lic if isinstance(lic, DisjunctiveLicense) else _LICENSES.make_with_name(name))
    return out


def _requirement(text: str) -> Requirement | None:
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def _optional(req: Requirement) -> bool:
    """Behind an ``extra == ...`` marker: installed only with that extra."""
    return req.marker is not None and "extra" in str(req.marker)


def _requirement_names(requires: list[str]) -> list[str]:
    """Names of unconditional requirements (those behind an ``extra ==`` marker are optional)."""
    reqs = [_requirement(r) for r in requires]
    return [normalize(r.name) for r in reqs if r is not None and not _optional(r)]


def _deb_dependency_names(depends: str) -> list[list[str]]:
    """``a (>= 1), b | c:any`` -> [[a], [b, c]]: each group is satisfied by any one of its names."""
    groups = []
    for group in filter(None, (g.strip() for g in depends.split(","))):
        groups.append([alt.strip().split()[0].split(":")[0] for alt in group.split("|") if alt.strip()])
    return groups


_SONAME = re.compile(r"^(?P<base>lib[^/]*?)(?:-[0-9a-f]{8})?\.so(?P<ver>(?:\.\d+)*)$")


def _lib_name(path: str) -> tuple[str, str | None]:
    """``pkg.libs/libgomp-a34b3233.so.1.0.0`` -> (``libgomp``, ``1.0.0``): auditwheel's hash dropped."""
    file_name = path.rsplit("/", 1)[-1]
    m = _SONAME.match(file_name)
    if not m:
        return file_name, None
    return m.group("base"), m.group("ver").lstrip(".") or None


def _libtorch_pedigree(
    ref: str, lib_name: str, file_name: str, torch_version: str, trap_bytes: int
) -> Pedigree:
    """libtorch as shipped: copied from PyPI's torch, repaired by auditwheel, maybe pruned."""
    upstream = f"torch/lib/{lib_name}.so"
    notes = [
        f"{upstream} of torch {torch_version} (PyPI), vendored by auditwheel repair as {file_name}: "
        "renamed, SONAME and RUNPATH rewritten, symbols stripped."
    ]
    if trap_bytes:
        notes.append(
            f"Pruned by Slipway (native/tools/prune_libtorch.py): about {trap_bytes / 2**20:.1f} MiB of code that an "
            "inference-only TorchScript runtime never runs is overwritten with trap instructions; every "
            "symbol, address and relocation is kept, and a blanked function that ran would stop the process."
        )
    ancestor = Component(
        type=ComponentType.LIBRARY,
        bom_ref=f"{ref}#upstream",
        name=lib_name,
        version=torch_version,
        purl=PackageURL(type="pypi", name="torch", version=torch_version, subpath=upstream),
    )
    return Pedigree(ancestors=[ancestor], notes=" ".join(notes))


def _library(
    ref: str, path: str, sha256: str, size: int, *, origin: str, torch_version: str | None, trap_bytes: int
) -> Component:
    """A shared library inside a wheel or an installed distribution."""
    file_name = path.rsplit("/", 1)[-1]
    lib_name, version = _lib_name(path)
    pedigree = None
    extra: dict[str, str] = {}
    if torch_version and lib_name in LIBTORCH_LIBRARIES and ".libs/" in path:
        version = torch_version
        pedigree = _libtorch_pedigree(ref, lib_name, file_name, torch_version, trap_bytes)
        extra = {"part_of": f"libtorch {torch_version}", "pruned": "true" if trap_bytes else ""}
    return Component(
        type=ComponentType.LIBRARY,
        bom_ref=ref,
        name=lib_name,
        version=version,
        hashes=_sha256(sha256),
        pedigree=pedigree,
        properties=_props(path=path, size=str(size), origin=origin, **extra),
    )


def _bom(root: Component, identity: str, timestamp: str | None) -> Bom:
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, "slipway-sbom:" + identity))
    bom.metadata.timestamp = _timestamp(timestamp)
    bom.metadata.component = root
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, bom_ref="tool:slipway", name="slipway", version=__version__)
    )
    return bom


def _timestamp(created: str | None) -> datetime | None:
    # The image's creation label or the commit time (reproducible), never the wall clock.
    if not created:
        return None
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None


def document(bom: Bom) -> dict[str, Any]:
    """The CycloneDX JSON document of ``bom`` (what :func:`write` stores); the library checks on
    the way that every dependency names a component of the BOM."""
    doc = json.loads(JSON_OUTPUT[SCHEMA](bom).output_as_string())
    # What the document is comes first, for a reader of the file.
    first = ("$schema", "bomFormat", "specVersion", "serialNumber", "version", "metadata")
    return {**{k: doc[k] for k in first if k in doc}, **doc}


def _depend(bom: Bom, component: Component, on: Iterable[Component]) -> None:
    bom.register_dependency(component, sorted(on, key=lambda c: str(c.bom_ref)))


# --------------------------------------------------------------------------------------------
# Images


def image_inventory(image: str, timeout: float = 300) -> dict[str, Any]:
    """What is installed in ``image``, read by the image's own Python in a container without network."""
    # The image's first Python on PATH (a service's virtualenv), else the system's python3.
    launcher = 'p=$(command -v python || command -v python3) && exec "$p" -c "$1"'
    try:
        res = engine.run(image, ["-c", launcher, "sh", _INVENTORY], entrypoint="sh", network="none",
                         user="65534:65534", timeout=timeout)
    except SlipwayError as exc:
        raise BuildError(f"cannot read what {image} contains: {str(exc).strip()[-500:]}") from exc
    return json.loads(res.stdout.strip().splitlines()[-1])


def image_bom(
    image: str,
    *,
    image_id: str,
    name: str,
    version: str,
    labels: dict[str, str] | None = None,
    inventory: dict[str, Any] | None = None,
) -> Bom:
    """The SBOM of the local image ``image`` (tag or ID), published as ``name:version``."""
    inv = inventory if inventory is not None else image_inventory(image)
    labels = labels or {}
    os_release = inv.get("os") or {}
    distro = f"{os_release.get('ID', 'debian')}-{os_release.get('VERSION_ID', '')}".rstrip("-")
    root = Component(
        type=ComponentType.CONTAINER,
        bom_ref=f"image:{name}@{image_id}",
        name=name,
        version=version,
        hashes=_sha256(image_id.removeprefix("sha256:")),
        properties=[Property(name="slipway:image-id", value=image_id)]
        + [Property(name=f"label:{k}", value=v) for k, v in labels.items() if v],
    )
    bom = _bom(root, identity=str(root.bom_ref), timestamp=labels.get("org.opencontainers.image.created"))
    depends: dict[str, list[Component]] = {}
    if os_release:
        os_id, os_version = os_release.get("ID", "linux"), os_release.get("VERSION_ID", "")
        bom.components.add(
            Component(
                type=ComponentType.OPERATING_SYSTEM,
                bom_ref=f"os:{os_id}@{os_version}",
                name=os_id,
                version=os_version,
                description=os_release.get("PRETTY_NAME") or None,
            )
        )
    python = inv["implementation"].lower()
    bom.components.add(
        Component(
            type=ComponentType.APPLICATION,
            bom_ref=f"python:{python}@{inv['python']}",
            name=python,
            version=inv["python"],
            properties=_props(executable=inv["executable"]),
        )
    )
    pypi: dict[str, Component] = {}
    for d in inv.get("python_dists", []):
        purl = pypi_purl(d["name"], d["version"])
        comp = Component(
            type=ComponentType.LIBRARY,
            bom_ref=purl.to_string(),
            name=d["name"],
            version=d["version"],
            purl=purl,
            description=d.get("summary") or None,
            licenses=_licenses(
                d.get("license_expression", ""), d.get("license", ""), d.get("classifiers", [])
            ),
            properties=_props(location=d.get("location", "")),
        )
        bom.components.add(comp)
        pypi[normalize(d["name"])] = comp
        libs = [
            _library(
                f"{purl.to_string()}#{lib['path']}",
                lib["path"],
                lib["sha256"],
                lib["size"],
                origin="vendored by auditwheel",
                torch_version=d.get("torch_version"),
                trap_bytes=lib.get("trap_bytes", 0),
            )
            for lib in d.get("vendored", [])
        ]
        for lib in libs:
            bom.components.add(lib)
        depends[str(comp.bom_ref)] = libs
    for d in inv.get("python_dists", []):
        comp = pypi[normalize(d["name"])]
        depends[str(comp.bom_ref)] += [
            pypi[n] for n in _requirement_names(d.get("requires", [])) if n in pypi and pypi[n] is not comp
        ]
    debs: dict[str, Component] = {}
    for p in inv.get("debs", []):
        purl = deb_purl(p["Package"], p["Version"], p["Architecture"], distro)
        debs[p["Package"]] = Component(
            type=ComponentType.LIBRARY if p["Package"].startswith("lib") else ComponentType.APPLICATION,
            bom_ref=purl.to_string(),
            name=p["Package"],
            version=p["Version"],
            purl=purl,
            properties=_props(deb_source=p.get("Source", "")),
        )
        bom.components.add(debs[p["Package"]])
    for p in inv.get("debs", []):
        comp, deps = debs[p["Package"]], set()
        for group in _deb_dependency_names(", ".join(filter(None, [p.get("Pre-Depends"), p.get("Depends")]))):
            found = next((debs[n] for n in group if n in debs), None)
            if found is not None and found is not comp:
                deps.add(found)
        depends[str(comp.bom_ref)] = list(deps)
    by_ref = {str(c.bom_ref): c for c in bom.components}
    _depend(bom, root, bom.components)
    for ref, deps in depends.items():
        _depend(bom, by_ref[ref], deps)
    return bom


def image_sbom(image: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`image_bom` as a CycloneDX JSON document."""
    return document(image_bom(image, **kwargs))


# --------------------------------------------------------------------------------------------
# Wheels


def wheel_bom(wheel: Path, *, created: str | None = None) -> Bom:
    """The SBOM of a wheel: its metadata, its declared requirements and the native libraries inside it."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        if meta_name is None:
            raise BuildError(f"{wheel.name}: no .dist-info/METADATA")
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode("utf-8", "replace"))
        # The C++ runtime records the libtorch it was built against; its vendored libraries are that.
        torch_version = None
        for n in names:
            if n.endswith("/_build_info.py") and n.count("/") == 1:
                found = re.search(r'TORCH_VERSION\s*=\s*"([^"@]+)"', zf.read(n).decode("utf-8", "replace"))
                torch_version = found.group(1) if found else None
        libs = []
        for n in sorted(names):
            if ".so" in n.rsplit("/", 1)[-1] and not n.endswith("/"):
                data = zf.read(n)
                trap = _trap_filled_bytes(data) if _lib_name(n)[0] in LIBTORCH_LIBRARIES else 0
                libs.append((n, hashlib.sha256(data).hexdigest(), len(data), trap))
    name, version = meta["Name"], meta["Version"]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    purl = pypi_purl(name, version, file_name=wheel.name)
    root = Component(
        type=ComponentType.LIBRARY,
        bom_ref=purl.to_string(),
        name=name,
        version=version,
        purl=purl,
        hashes=_sha256(digest),
        licenses=_licenses(
            meta.get("License-Expression") or "",
            meta.get("License") or "",
            [c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")],
        ),
        description=meta.get("Summary") or None,
    )
    bom = _bom(root, identity=f"{wheel.name}#{digest}", timestamp=created)
    for path, sha, size, trap in libs:
        vendored = ".libs/" in path
        bom.components.add(
            _library(
                f"file:{path}",
                path,
                sha,
                size,
                origin="vendored by auditwheel" if vendored else "built with the wheel",
                torch_version=torch_version,
                trap_bytes=trap,
            )
        )
    for text in meta.get_all("Requires-Dist") or []:
        req = _requirement(text)
        if req is None:
            raise BuildError(f"{wheel.name}: METADATA Requires-Dist {text!r} is not a valid requirement")
        purl = pypi_purl(req.name)
        if any(c.bom_ref.value == purl.to_string() for c in bom.components):
            continue
        bom.components.add(
            Component(
                type=ComponentType.LIBRARY,
                bom_ref=purl.to_string(),
                name=normalize(req.name),
                purl=purl,
                scope=ComponentScope.OPTIONAL if _optional(req) else ComponentScope.REQUIRED,
                properties=_props(requirement=text),
            )
        )
    _depend(bom, root, bom.components)
    return bom


def wheel_sbom(wheel: Path, *, created: str | None = None) -> dict[str, Any]:
    """:func:`wheel_bom` as a CycloneDX JSON document."""
    return document(wheel_bom(wheel, created=created))


# --------------------------------------------------------------------------------------------
# Documents


def write(bom: dict[str, Any], path: Path) -> Path:
    problems = validate(bom)
    if problems:
        raise BuildError(f"SBOM {path.name} is not valid CycloneDX:\n  " + "\n  ".join(problems[:20]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(bom, indent=2) + "\n")
    tmp.replace(path)
    return path


def validate(bom: dict[str, Any]) -> list[str]:
    """What is wrong with a CycloneDX 1.5-1.7 JSON document (empty when nothing): CycloneDX's own
    JSON schema, then what a schema cannot say (bom-refs unique, dependencies naming components)."""
    problems = []
    try:
        schema = SchemaVersion.from_version(str(bom.get("specVersion")))
    except ValueError:
        schema = SchemaVersion.V1_0
    if schema < SchemaVersion.V1_5:
        problems.append(
            f"specVersion {bom.get('specVersion')!r}: expected 1.5, 1.6 or 1.7 (checked as {SPEC_VERSION})"
        )
        schema = SCHEMA
    errors = JsonStrictValidator(schema).validate_str(json.dumps(bom), all_errors=True) or []
    problems += sorted(_schema_problem(e.data) for e in errors)
    refs: list[str] = []

    def collect(component: dict[str, Any]) -> None:
        if "bom-ref" in component:
            refs.append(component["bom-ref"])
        for nested in component.get("components", []):
            collect(nested)
        for ancestor in (component.get("pedigree") or {}).get("ancestors", []):
            collect(ancestor)

    for component in [(bom.get("metadata") or {}).get("component") or {}, *bom.get("components", [])]:
        collect(component)
    duplicates = sorted({r for r in refs if refs.count(r) > 1})
    if duplicates:
        problems.append(f"bom-ref values must be unique: {duplicates[:5]}")
    known = set(refs)
    for dep in bom.get("dependencies", []):
        if dep.get("ref") not in known:
            problems.append(f"dependencies: ref {dep.get('ref')!r} names no component")
        for target in dep.get("dependsOn", []):
            if target not in known:
                problems.append(f"dependencies: {dep.get('ref')!r} depends on unknown {target!r}")
    return problems


def _schema_problem(error: Any) -> str:
    where = "/".join(str(p) for p in getattr(error, "absolute_path", [])) or "(document)"
    return f"{where}: {getattr(error, 'message', error)}"


def summary(bom: dict[str, Any]) -> dict[str, int]:
    """How many components of each purl type (pypi, deb, ...) or component type a BOM lists."""
    counts: dict[str, int] = {}
    for c in bom.get("components", []):
        kind = c["purl"].split("/", 1)[0].removeprefix("pkg:") if c.get("purl") else c["type"]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def image_file_name(image: str, version: str) -> str:
    """The file name of an image's SBOM under ``sbom/`` (the same locally and on GitHub)."""
    return f"{image.rsplit('/', 1)[-1]}-{version}.cdx.json"


# --------------------------------------------------------------------------------------------
# A pushed image (GitHub's publish job): python -m slipway.sbom IMAGE@DIGEST --version V --output FILE


def pushed_image_sbom(reference: str, *, version: str, output: Path, pull: bool = True) -> Path:
    """The SBOM of a pushed image (``repository@digest``): the document a local release writes for
    the same image (same ID, labels, name and version, read the same way from inside it)."""
    if pull:
        engine.pull(reference, timeout=1800)
    info = engine.image_inspect(reference)
    name = reference.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    labels = (info.get("Config") or {}).get("Labels") or {}
    return write(
        image_sbom(reference, image_id=info["Id"], name=name, version=version, labels=labels), output
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from slipway.errors import SlipwayError

    parser = argparse.ArgumentParser(prog="python -m slipway.sbom", description=pushed_image_sbom.__doc__)
    parser.add_argument(
        "image", help="the pushed image by digest, e.g. ghcr.io/acme/detector-onnx-cpu@sha256:..."
    )
    parser.add_argument("--version", required=True, help="the release version, e.g. 1.2.3")
    parser.add_argument(
        "--output", type=Path, required=True, help=f"the file to write, e.g. {image_file_name('x', '1.2.3')}"
    )
    parser.add_argument("--no-pull", action="store_true", help="use the image already in the engine")
    args = parser.parse_args(argv)
    try:
        path = pushed_image_sbom(args.image, version=args.version, output=args.output, pull=not args.no_pull)
    except SlipwayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{path}: {summary(json.loads(path.read_text()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
