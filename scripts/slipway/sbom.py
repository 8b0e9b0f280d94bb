"""CycloneDX 1.5 SBOMs (JSON) of what a release really ships: per image and per wheel.

Generated here rather than by a tool, because what matters is what is *inside* the artifact:

- an image: one throw-away container of the image itself (``--network none``, the image's own
  Python) lists the installed Python distributions with ``importlib.metadata`` (what
  ``pip list --format json`` shows, plus licences and requirements) and the Debian packages from
  dpkg's database (what ``dpkg-query -W`` shows, plus ``Depends``). cyclonedx-bom (on PyPI) can
  describe a Python environment, but not Debian packages, and it would have to be installed into
  every image; syft would do both but is a downloaded binary, and the images must not change.
- a wheel: its ``METADATA`` (name, version, licence, ``Requires-Dist``) and every shared library
  in it, in particular those ``auditwheel`` vendored into ``<package>.libs/``, each with its sha256.

The output is deterministic (sorted, a serial number derived from the content's identity, the
commit time rather than the wall clock), so publishing twice produces the same files and the same
checksums. ``validate`` checks the structure a CycloneDX consumer relies on.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from slipway import __version__, engine
from slipway.errors import BuildError, SlipwayError

SPEC_VERSION = "1.5"
COMPONENT_TYPES = {
    "application",
    "framework",
    "library",
    "container",
    "platform",
    "operating-system",
    "device",
    "device-driver",
    "firmware",
    "file",
    "machine-learning-model",
    "data",
    "cryptographic-asset",
}
# Shared libraries that come from libtorch (as auditwheel names them, without its hash suffix).
LIBTORCH_LIBRARIES = {
    "libtorch",
    "libtorch_cpu",
    "libtorch_cuda",
    "libc10",
    "libc10_cuda",
    "libtorch_global_deps",
}
_HASH_LENGTHS = {"SHA-1": 40, "SHA-256": 64, "SHA-384": 96, "SHA-512": 128}

# Runs inside the image with its own Python: stdlib only, so it works in every variant.
_INVENTORY = r"""
import json, os, platform, sys
from importlib import metadata

def dist_info(d):
    m = d.metadata
    return {
        "name": m["Name"], "version": d.version, "summary": m.get("Summary") or "",
        "license_expression": m.get("License-Expression") or "", "license": (m.get("License") or "")[:300],
        "classifiers": [c for c in (m.get_all("Classifier") or []) if c.startswith("License ::")],
        "requires": m.get_all("Requires-Dist") or [],
        "location": str(getattr(d, "_path", "")),
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


def _purl_version(version: str) -> str:
    return quote(version, safe=".-_~")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_purl(name: str, version: str | None = None) -> str:
    purl = f"pkg:pypi/{normalize(name)}"
    return f"{purl}@{_purl_version(version)}" if version else purl


def deb_purl(name: str, version: str, arch: str, distro: str) -> str:
    qualifiers = [f"arch={quote(arch)}"] if arch else []
    if distro:
        qualifiers.append(f"distro={quote(distro)}")
    return f"pkg:deb/debian/{quote(name)}@{_purl_version(version)}" + (
        "?" + "&".join(qualifiers) if qualifiers else ""
    )


def _licenses(expression: str, text: str, classifiers: list[str]) -> list[dict[str, Any]]:
    # An SPDX "id" must be on CycloneDX's list, which slipway cannot check offline; a name or an
    # expression is always valid, so licences are recorded as written.
    if expression:
        return [{"expression": expression}]
    names = [c.rsplit("::", 1)[-1].strip() for c in classifiers]
    if text and "\n" not in text.strip() and len(text) <= 100 and text.strip().upper() not in ("UNKNOWN", ""):
        names.insert(0, text.strip())
    unique = list(dict.fromkeys(n for n in names if n))
    return [{"license": {"name": n}} for n in unique]


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirement_names(requires: list[str]) -> list[str]:
    """Names of unconditional requirements (those behind an ``extra ==`` marker are optional)."""
    names = []
    for req in requires:
        if "extra" in req.partition(";")[2]:
            continue
        m = _REQ_NAME.match(req)
        if m:
            names.append(normalize(m.group(1)))
    return names


def _deb_dependency_names(depends: str) -> list[list[str]]:
    """``a (>= 1), b | c:any`` -> [[a], [b, c]]: each group is satisfied by any one of its names."""
    groups = []
    for group in filter(None, (g.strip() for g in depends.split(","))):
        groups.append([alt.strip().split()[0].split(":")[0] for alt in group.split("|") if alt.strip()])
    return groups


def _bom(
    root: dict[str, Any],
    components: list[dict[str, Any]],
    dependencies: list[dict[str, Any]],
    identity: str,
    timestamp: str | None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "tools": {"components": [{"type": "application", "name": "slipway", "version": __version__}]},
        "component": root,
    }
    if timestamp:
        metadata = {"timestamp": timestamp, **metadata}
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'slipway-sbom:' + identity)}",
        "version": 1,
        "metadata": metadata,
        "components": sorted(components, key=lambda c: c["bom-ref"]),
        "dependencies": sorted(dependencies, key=lambda d: d["ref"]),
    }


def _timestamp(created: str | None) -> str | None:
    # CycloneDX wants date-time; the image's creation label is the commit time (reproducible).
    if created and re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", created):
        return created
    return None


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


def image_sbom(
    image: str,
    *,
    image_id: str,
    name: str,
    version: str,
    labels: dict[str, str] | None = None,
    inventory: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The SBOM of the local image ``image`` (tag or ID), published as ``name:version``."""
    inv = inventory if inventory is not None else image_inventory(image)
    labels = labels or {}
    os_release = inv.get("os") or {}
    distro = f"{os_release.get('ID', 'debian')}-{os_release.get('VERSION_ID', '')}".rstrip("-")
    root_ref = f"image:{name}@{image_id}"
    root = {
        "type": "container",
        "bom-ref": root_ref,
        "name": name,
        "version": version,
        "hashes": [{"alg": "SHA-256", "content": image_id.removeprefix("sha256:")}],
        "properties": sorted(
            [{"name": "slipway:image-id", "value": image_id}]
            + [{"name": f"label:{k}", "value": v} for k, v in labels.items() if v],
            key=lambda p: p["name"],
        ),
    }
    components: list[dict[str, Any]] = []
    refs: dict[str, str] = {}
    depends: dict[str, list[str]] = {}
    if os_release:
        ref = f"os:{os_release.get('ID', 'linux')}@{os_release.get('VERSION_ID', '')}"
        components.append(
            {
                "type": "operating-system",
                "bom-ref": ref,
                "name": os_release.get("ID", "linux"),
                "version": os_release.get("VERSION_ID", ""),
                "description": os_release.get("PRETTY_NAME", ""),
            }
        )
        depends[ref] = []
    py_ref = f"python:{inv['implementation'].lower()}@{inv['python']}"
    components.append(
        {
            "type": "application",
            "bom-ref": py_ref,
            "name": inv["implementation"].lower(),
            "version": inv["python"],
            "properties": [{"name": "slipway:executable", "value": inv["executable"]}],
        }
    )
    depends[py_ref] = []
    for d in inv.get("python_dists", []):
        purl = pypi_purl(d["name"], d["version"])
        comp: dict[str, Any] = {
            "type": "library",
            "bom-ref": purl,
            "name": d["name"],
            "version": d["version"],
            "purl": purl,
        }
        if d.get("summary"):
            comp["description"] = d["summary"]
        licenses = _licenses(d.get("license_expression", ""), d.get("license", ""), d.get("classifiers", []))
        if licenses:
            comp["licenses"] = licenses
        if d.get("location"):
            comp["properties"] = [{"name": "slipway:location", "value": d["location"]}]
        components.append(comp)
        refs[f"pypi:{normalize(d['name'])}"] = purl
    for d in inv.get("python_dists", []):
        purl = refs[f"pypi:{normalize(d['name'])}"]
        depends[purl] = sorted(
            {
                refs[f"pypi:{n}"]
                for n in _requirement_names(d.get("requires", []))
                if f"pypi:{n}" in refs and refs[f"pypi:{n}"] != purl
            }
        )
    for p in inv.get("debs", []):
        purl = deb_purl(p["Package"], p["Version"], p["Architecture"], distro)
        comp = {
            "type": "library" if p["Package"].startswith("lib") else "application",
            "bom-ref": purl,
            "name": p["Package"],
            "version": p["Version"],
            "purl": purl,
        }
        if p.get("Source"):
            comp["properties"] = [{"name": "slipway:deb-source", "value": p["Source"]}]
        components.append(comp)
        refs[f"deb:{p['Package']}"] = purl
    for p in inv.get("debs", []):
        purl = refs[f"deb:{p['Package']}"]
        deps = set()
        for group in _deb_dependency_names(", ".join(filter(None, [p.get("Pre-Depends"), p.get("Depends")]))):
            found = next((refs[f"deb:{n}"] for n in group if f"deb:{n}" in refs), None)
            if found and found != purl:
                deps.add(found)
        depends[purl] = sorted(deps)
    dependencies = [{"ref": root_ref, "dependsOn": sorted(c["bom-ref"] for c in components)}]
    dependencies += [{"ref": ref, "dependsOn": deps} for ref, deps in depends.items()]
    return _bom(
        root,
        components,
        dependencies,
        identity=root_ref,
        timestamp=_timestamp(labels.get("org.opencontainers.image.created")),
    )


# --------------------------------------------------------------------------------------------
# Wheels


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_SONAME = re.compile(r"^(?P<base>lib[^/]*?)(?:-[0-9a-f]{8})?\.so(?P<ver>(?:\.\d+)*)$")


def wheel_sbom(wheel: Path, *, created: str | None = None) -> dict[str, Any]:
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
            base = n.rsplit("/", 1)[-1]
            if ".so" in base and not n.endswith("/"):
                libs.append((n, _sha256_bytes(zf.read(n)), zf.getinfo(n).file_size))
    name, version = meta["Name"], meta["Version"]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    root_purl = f"{pypi_purl(name, version)}?file_name={quote(wheel.name)}"
    root = {
        "type": "library",
        "bom-ref": root_purl,
        "name": name,
        "version": version,
        "purl": root_purl,
        "hashes": [{"alg": "SHA-256", "content": digest}],
    }
    licenses = _licenses(
        meta.get("License-Expression") or "",
        meta.get("License") or "",
        [c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")],
    )
    if licenses:
        root["licenses"] = licenses
    if meta.get("Summary"):
        root["description"] = meta["Summary"]
    components: list[dict[str, Any]] = []
    for path, sha, size in libs:
        base = path.rsplit("/", 1)[-1]
        m = _SONAME.match(base)
        lib_name = m.group("base") if m else base
        vendored = ".libs/" in path
        comp = {
            "type": "library",
            "bom-ref": f"file:{path}",
            "name": lib_name,
            "hashes": [{"alg": "SHA-256", "content": sha}],
            "properties": [
                {"name": "slipway:path-in-wheel", "value": path},
                {"name": "slipway:size", "value": str(size)},
                {
                    "name": "slipway:origin",
                    "value": "vendored by auditwheel" if vendored else "built with the wheel",
                },
            ],
        }
        if torch_version and lib_name in LIBTORCH_LIBRARIES:
            comp["version"] = torch_version
            comp["properties"].append({"name": "slipway:part-of", "value": f"libtorch {torch_version}"})
        elif m and m.group("ver"):
            comp["version"] = m.group("ver").lstrip(".")
        components.append(comp)
    for req in meta.get_all("Requires-Dist") or []:
        m = _REQ_NAME.match(req)
        if not m:
            continue
        purl = pypi_purl(m.group(1))
        optional = "extra" in req.partition(";")[2]
        if any(c["bom-ref"] == purl for c in components):
            continue
        components.append(
            {
                "type": "library",
                "bom-ref": purl,
                "name": normalize(m.group(1)),
                "purl": purl,
                "scope": "optional" if optional else "required",
                "properties": [{"name": "slipway:requirement", "value": req}],
            }
        )
    dependencies = [{"ref": root_purl, "dependsOn": sorted(c["bom-ref"] for c in components)}]
    dependencies += [{"ref": c["bom-ref"], "dependsOn": []} for c in components]
    return _bom(
        root, components, dependencies, identity=f"{wheel.name}#{digest}", timestamp=_timestamp(created)
    )


# --------------------------------------------------------------------------------------------


def write(bom: dict[str, Any], path: Path) -> Path:
    problems = validate(bom)
    if problems:
        raise BuildError(f"SBOM {path.name} is not valid CycloneDX:\n  " + "\n  ".join(problems[:20]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(bom, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def validate(bom: dict[str, Any]) -> list[str]:
    """Structural problems of a CycloneDX 1.5/1.6 JSON BOM (empty when it is well formed)."""
    problems: list[str] = []
    if bom.get("bomFormat") != "CycloneDX":
        problems.append("bomFormat must be 'CycloneDX'")
    if bom.get("specVersion") not in ("1.5", "1.6"):
        problems.append(f"specVersion {bom.get('specVersion')!r}: expected 1.5 or 1.6")
    if not re.match(
        r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        str(bom.get("serialNumber", "")),
    ):
        problems.append("serialNumber must be urn:uuid:<RFC 4122 UUID>")
    if not isinstance(bom.get("version"), int) or bom["version"] < 1:
        problems.append("version must be an integer >= 1")
    root = (bom.get("metadata") or {}).get("component")
    refs: list[str] = []

    def check_component(c: Any, where: str) -> None:
        if not isinstance(c, dict):
            problems.append(f"{where}: not an object")
            return
        if c.get("type") not in COMPONENT_TYPES:
            problems.append(f"{where}: type {c.get('type')!r} is not a CycloneDX component type")
        if not c.get("name"):
            problems.append(f"{where}: name is missing")
        if "bom-ref" in c:
            refs.append(c["bom-ref"])
        if "purl" in c and not str(c["purl"]).startswith("pkg:"):
            problems.append(f"{where}: purl {c['purl']!r} does not start with 'pkg:'")
        for h in c.get("hashes", []):
            length = _HASH_LENGTHS.get(h.get("alg"))
            if length is None or not re.fullmatch(rf"[0-9a-f]{{{length}}}", str(h.get("content", ""))):
                problems.append(f"{where}: hash {h} is not a valid {h.get('alg')} hex digest")
        for lic in c.get("licenses", []):
            if not (
                ("expression" in lic and len(lic) == 1)
                or (
                    "license" in lic
                    and len(lic) == 1
                    and ("id" in lic["license"] or "name" in lic["license"])
                )
            ):
                problems.append(
                    f"{where}: licence entry {lic} is neither {{license: {{id|name}}}} nor {{expression}}"
                )
        for p in c.get("properties", []):
            if not isinstance(p.get("name"), str) or not isinstance(p.get("value"), str):
                problems.append(f"{where}: property {p} needs string name and value")
        if "scope" in c and c["scope"] not in ("required", "optional", "excluded"):
            problems.append(f"{where}: scope {c['scope']!r}")

    if root is None:
        problems.append("metadata.component (what this BOM describes) is missing")
    else:
        check_component(root, "metadata.component")
    for i, c in enumerate(bom.get("components", [])):
        check_component(c, f"components[{i}] ({c.get('name') if isinstance(c, dict) else '?'})")
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


def summary(bom: dict[str, Any]) -> dict[str, int]:
    """How many components of each purl type (pypi, deb, ...) or component type a BOM lists."""
    counts: dict[str, int] = {}
    for c in bom.get("components", []):
        kind = c["purl"].split("/", 1)[0].removeprefix("pkg:") if c.get("purl") else c["type"]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
