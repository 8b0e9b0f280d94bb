"""A project's model as a Python package of the project's own name (as spaCy ships its models).

``build_model_package`` writes ``<import>-<version>-py3-none-any.whl`` holding

- ``<import>/__init__.py``: ``load(**options)`` -> ``slipway_runtime.Detector`` on the packaged
  export, ``MODEL_DIR``, ``manifest()``;
- ``<import>/model/``: ``model.json``, the TorchScript file and the golden set
  (``golden/reference.json`` and its images);

depending on Slipway's C++ runtime at a compatible version (``slipway-runtime~=<major.minor>.0``).
Two projects' packages have different import names, so they install into one environment side by
side. The wheel is written directly (it is pure data and Python; no build backend is needed) and is
byte-for-byte reproducible: fixed timestamps and file order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

from slipway.errors import BuildError

# What of an export folder a model package carries: what the C++ runtime loads, and the golden set
# that proves it.
PACKAGE_FILES = ("model.json", "model.torchscript.pt")
PACKAGE_DIRS = ("golden",)
# 1980-01-01, the earliest time a zip entry can carry: the same inputs give the same wheel.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)

INIT = '''"""{distribution} {version}: the model '{model}' of {project}, packaged by Slipway.

    import {module}
    detector = {module}.load()           # a slipway_runtime.Detector
    detector.predict(image)              # numpy uint8 [H, W, 3] RGB, a PIL image or RGB bytes

The model files are in MODEL_DIR; manifest() is their model.json.
"""

from __future__ import annotations

import json as _json
from pathlib import Path as _Path

__version__ = "{version}"
MODEL_NAME = "{model}"
MODEL_DIR = _Path(__file__).resolve().parent / "model"


def manifest() -> dict:
    """The export's model.json: labels, input, output, formats and their checksums."""
    return _json.loads((MODEL_DIR / "model.json").read_text())


def load(**options):
    """The model on Slipway's C++ runtime (keyword options go to slipway_runtime.Detector)."""
    import slipway_runtime

    return slipway_runtime.Detector(str(MODEL_DIR), **options)
'''

README = """# {distribution}

The model `{model}` of the project {project}, version {version}, as a Python package. It runs
on Slipway's C++ runtime (`slipway-runtime`, installed with it); no PyTorch is needed.

```python
import {module}

detector = {module}.load()
detections = detector.predict(image)  # numpy uint8 [H, W, 3] RGB
```

`{module}.MODEL_DIR` holds the TorchScript export and its `model.json`; `{module}.manifest()`
reads the latter.
"""


def runtime_requirement(slipway_version: str) -> str:
    """``slipway-runtime~=X.Y.0``: any runtime of Slipway's major.minor, from its first release on."""
    from slipway.version import parse_version

    v = parse_version(slipway_version)
    return f"slipway-runtime~={v.major}.{v.minor}.0"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def package_contents(model_dir: Path) -> list[tuple[str, Path]]:
    """(path inside ``model/``, file) for what the package carries of an export folder."""
    missing = [name for name in PACKAGE_FILES if not (model_dir / name).is_file()]
    if missing:
        raise BuildError(f"{model_dir}: {', '.join(missing)} missing; a model package needs the TorchScript "
                         "export (run 'slipway export')")
    files = [(name, model_dir / name) for name in PACKAGE_FILES]
    for folder in PACKAGE_DIRS:
        for f in sorted((model_dir / folder).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                files.append((f.relative_to(model_dir).as_posix(), f))
    return files


def build_model_package(
    model_dir: Path, out: Path, *, distribution: str, module: str, version: str, project: str, model: str,
    slipway_version: str,
) -> Path:
    """Write the model package's wheel into ``out``; return its path."""
    from slipway.stages.wheels import pep440

    version = pep440(version)
    dist_info = f"{module}-{version}.dist-info"
    fmt = {"distribution": distribution, "module": module, "version": version, "project": project, "model": model}
    metadata = "\n".join([
        "Metadata-Version: 2.1",
        f"Name: {distribution}",
        f"Version: {version}",
        f"Summary: The model '{model}' of {project}, on Slipway's C++ runtime",
        "License: Apache-2.0",
        "Requires-Python: >=3.10",
        f"Requires-Dist: {runtime_requirement(slipway_version)}",
        "Description-Content-Type: text/markdown",
        "",
        README.format(**fmt),
    ])
    wheel_meta = "Wheel-Version: 1.0\nGenerator: slipway\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries: list[tuple[str, bytes]] = [(f"{module}/__init__.py", INIT.format(**fmt).encode())]
    entries += [(f"{module}/model/{rel}", f.read_bytes()) for rel, f in package_contents(model_dir)]
    entries += [
        (f"{dist_info}/METADATA", metadata.encode()),
        (f"{dist_info}/WHEEL", wheel_meta.encode()),
        (f"{dist_info}/top_level.txt", f"{module}\n".encode()),
        (f"{dist_info}/slipway.json", json.dumps({"project": project, "model": model}, sort_keys=True).encode()),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    record += f"{dist_info}/RECORD,,\n"
    entries.append((f"{dist_info}/RECORD", record.encode()))

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{module}-{version}-py3-none-any.whl"
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    tmp.replace(path)
    return path
