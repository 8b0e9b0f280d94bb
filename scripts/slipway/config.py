"""``release.toml``: parsed once into frozen, typed models; every default lives here.

All problems in a file are collected and reported together, each naming the file, the dotted
key, the value found and what was expected. Unknown keys get a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slipway.errors import MISSING, ConfigError, ConfigProblem

DEFAULT_CONFIG = "release.toml"

FRAMEWORKS = ("pytorch", "tensorflow")
RUNTIMES = ("torchscript", "cpp", "tensorflow", "tfserving", "onnx")
EXPORTERS = ("torchscript", "onnx", "saved_model", "frozen_graph")
# Which runtime needs which export, and which framework produces it.
RUNTIME_EXPORT = {
    "torchscript": "torchscript",
    "cpp": "torchscript",
    "onnx": "onnx",
    "tensorflow": "saved_model",
    "tfserving": "saved_model",
}


# Exporters each framework can produce, and runtimes whose backend can run on a GPU (onnx with
# onnxruntime-gpu in a Dockerfile of the project's own). The C++ runtime is built for the CPU only
# and the TF Serving client leaves the device to the server it calls.
FRAMEWORK_EXPORTERS = {"pytorch": ("torchscript", "onnx"), "tensorflow": ("saved_model", "frozen_graph")}
GPU_RUNTIMES = ("torchscript", "tensorflow", "onnx")

# Patterns of string values, each with what a user reads when a value does not match it.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# OCI platform: os/architecture[/variant], as docker buildx --platform takes it.
PLATFORM_PATTERN = (
    r"^linux/(amd64|arm64|arm|386|ppc64le|s390x|riscv64|mips64le)(/v[5-8])?$"
)
PYTHON_PATTERN = r"^3\.(1[0-9]|[89])$"
WHEEL_PLATFORM_PATTERN = r"^(manylinux_2_(1[7-9]|[2-9][0-9])|musllinux_1_[1-9])_(x86_64|aarch64)$"
MEMORY_PATTERN = r"^[1-9][0-9]*[kmg]?$"
PATTERN_HELP = {
    NAME_PATTERN: "expected lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
    PLATFORM_PATTERN: "expected an OCI platform string such as linux/amd64, linux/arm64 or linux/arm/v7",
    PYTHON_PATTERN: "expected a CPython version such as 3.11 (not cp311)",
    WHEEL_PLATFORM_PATTERN: "expected a wheel platform tag such as manylinux_2_28_x86_64 or manylinux_2_28_aarch64",
    MEMORY_PATTERN: "expected a docker memory size: a whole number with k, m or g, such as 2g or 512m",
}
ENTRY_POINT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
PATTERN_HELP[ENTRY_POINT_PATTERN] = "expected 'module:callable', such as my_pkg.model:build"
# Docker's reference grammar, without tag or digest: [host[:port]/]path, lowercase path components.
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REPOSITORY = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
IMAGE_REFERENCE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=_kebab, populate_by_name=True, strict=False
    )


Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=64)]


class ProjectSpec(_Model):
    """Who is releasing, and how the version is decided."""

    name: Name = Field(description="Project name; images are named '<name>-<variant>'.")
    version: str | None = Field(
        default=None,
        description="Fixed version. A release tag must agree with it. Unset: the tag decides.",
    )
    source: str = Field(default="", description="Source URL recorded in image labels.")


class InputSpec(_Model):
    """What the model takes: an image resized and normalised to this."""

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 3
    dtype: Literal["uint8"] = "uint8"
    resize: Literal["stretch"] = "stretch"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


class OutputSpec(_Model):
    """Postprocessing applied to the model's candidates."""

    score_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    nms_iou: float = Field(default=0.5, gt=0.0, le=1.0)
    max_detections: int = Field(default=50, gt=0, le=1000)


MIN_GOLDEN_IMAGES = 4  # the same number as model_export.golden.MIN_GOLDEN_IMAGES (a test holds them equal)


class GoldenSpec(_Model):
    """A model's golden set: a folder of images with COCO annotations, or a hook that makes them.

    Give either ``images`` and ``annotations`` or ``hook`` (with ``count`` and ``seed``)."""

    images: Path | None = Field(default=None, description="Folder of PNG/JPEG images, relative to release.toml.")
    annotations: Path | None = Field(
        default=None,
        description="COCO JSON (images, annotations with bbox [x, y, w, h], categories named as the "
        "model's labels), relative to release.toml.",
    )
    hook: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'module:callable' called as f(count, seed) -> [(uint8 HxWx3 image, "
        "[{'box': [x1, y1, x2, y2], 'label': str}])], imported with the project folder on sys.path.",
    )
    count: int = Field(default=8, ge=MIN_GOLDEN_IMAGES, le=256, description="Images the hook makes.")
    seed: int = Field(default=0, description="Seed passed to the hook.")


class ModelSpec(_Model):
    """One model to export and release."""

    name: Name
    framework: Literal["pytorch", "tensorflow"]
    entry_point: str = Field(
        pattern=ENTRY_POINT_PATTERN,
        description="'module:callable' that builds the model (weights are loaded separately).",
    )
    weights: Path = Field(description="Weights file, relative to release.toml.")
    labels: tuple[str, ...] = Field(min_length=1)
    input: InputSpec
    output: OutputSpec = OutputSpec()
    exporters: tuple[Literal["torchscript", "onnx", "saved_model", "frozen_graph"], ...] | None = Field(
        default=None, description="Formats to export; default: all the framework supports."
    )
    torchscript_method: Literal["script", "trace"] = "script"
    golden: GoldenSpec = Field(
        description="The golden set: export verification, wheel checks, smoke and bench run on it."
    )
    min_map50: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Smoke fails when an artifact's mAP@0.5 against the golden ground truth is below this.",
    )
    package: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$",
        description="Distribution name of the model's Python package (a PyTorch model with a TorchScript "
        "export; built by 'slipway wheels'). Default: '<project.name>-<model.name>'.",
    )


class VariantSpec(_Model):
    """One image to build: a Dockerfile target and its build arguments."""

    name: Name
    model: str
    runtime: Literal["torchscript", "cpp", "tensorflow", "tfserving", "onnx"]
    device: Literal["cpu", "gpu"] = "cpu"
    dockerfile: Path
    target: str
    base_image: str = "python:3.11-slim-bookworm"
    platforms: tuple[Annotated[str, Field(pattern=PLATFORM_PATTERN)], ...] = Field(
        default=("linux/amd64",), min_length=1
    )
    build_args: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True


class WheelsSpec(_Model):
    """The C++ runtime wheels (Slipway's, at Slipway's version) and the project's model packages."""

    enabled: bool = True
    model: str | None = Field(default=None, description="Model whose golden outputs test the wheels.")
    python: tuple[Annotated[str, Field(pattern=PYTHON_PATTERN)], ...] = Field(
        default=("3.10", "3.11", "3.12", "3.13"), min_length=1
    )
    platforms: tuple[Annotated[str, Field(pattern=WHEEL_PLATFORM_PATTERN)], ...] = Field(
        default=("manylinux_2_28_x86_64", "manylinux_2_28_aarch64"), min_length=1
    )
    max_size_mib: float = Field(default=100.0, gt=0)
    publish_runtime: bool = Field(
        default=False,
        description="Publish Slipway's own C++ runtime wheels (slipway-runtime, slipway-runtime-torch) with "
        "this release. Only Slipway's own release.toml sets it; the release version must then be Slipway's.",
    )


class RegistriesSpec(_Model):
    """Where a release goes. The defaults are the local services 'slipway services up' starts."""

    images: str = "127.0.0.1:5000/slipway"
    packages: str = "http://127.0.0.1:8765/"
    packages_simple: str | None = None


class Tolerance(_Model):
    iou: float = Field(default=0.99, gt=0.0, le=1.0)
    score: float = Field(default=1e-4, ge=0.0)


class SmokeSpec(_Model):
    """How artifacts are proven: resources for the container, time to ready, tolerances."""

    timeout_s: float = Field(default=120.0, gt=0)
    memory: str = Field(default="2g", pattern=MEMORY_PATTERN)
    cpus: float = Field(default=2.0, gt=0)
    request_cases: bool = Field(
        default=True,
        description="Also send the service's bad-request cases to every image (each must get a JSON 4xx).",
    )
    tolerance: dict[str, Tolerance] = Field(
        default_factory=lambda: {"default": Tolerance()},
        description="Per runtime ('torchscript', 'cpp', 'onnx', ...) or 'default'.",
    )

    def tolerance_for(self, runtime: str) -> Tolerance:
        return self.tolerance.get(runtime) or self.tolerance.get("default") or Tolerance()


Positive = Annotated[float, Field(gt=0)]


class BudgetsSpec(_Model):
    """Limits a release must stay within; exceeding one stops it before publishing."""

    max_image_mb: dict[str, Positive] = Field(default_factory=dict, description="Per variant, uncompressed MB.")
    max_p95_ms: dict[str, Positive] = Field(default_factory=dict, description="Per runtime, in-process p95.")
    min_cpp_speedup: float | None = Field(default=None, gt=0, description="C++ wheel vs eager baseline.")
    max_ready_s: dict[str, Positive] = Field(default_factory=dict, description="Per variant, start to ready.")


class ReleaseConfig(_Model):
    """The whole of ``release.toml``."""

    project: ProjectSpec
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    variants: tuple[VariantSpec, ...] = ()
    wheels: WheelsSpec = WheelsSpec()
    registries: RegistriesSpec = RegistriesSpec()
    smoke: SmokeSpec = SmokeSpec()
    budgets: BudgetsSpec = BudgetsSpec()

    # Where the file was read from; relative paths in it are relative to this folder.
    source_path: Path = Field(default=Path(DEFAULT_CONFIG), exclude=True)

    @property
    def root(self) -> Path:
        return self.source_path.resolve().parent

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def exporters_for(self, model: ModelSpec) -> tuple[str, ...]:
        if model.exporters is not None:
            return tuple(model.exporters)
        return ("torchscript", "onnx") if model.framework == "pytorch" else ("saved_model", "frozen_graph")

    def model_package(self, model: ModelSpec) -> str:
        """The distribution name of a model's package: its own ``package`` or '<project>-<model>'."""
        return model.package or f"{self.project.name}-{model.name}"

    def packaged_models(self) -> tuple[ModelSpec, ...]:
        """Models released as a package: PyTorch models with a TorchScript export."""
        return tuple(m for m in self.models if m.framework == "pytorch" and "torchscript" in self.exporters_for(m))

    def wheels_model(self) -> ModelSpec | None:
        if self.wheels.model:
            return self.model(self.wheels.model)
        return next((m for m in self.models if m.framework == "pytorch"), None)


# --------------------------------------------------------------------------------------------
# Loading and error reporting


def _dotted(loc: tuple[Any, ...], data: Any) -> str:
    """Turn a pydantic location into the key a user reads in TOML: models[0].input.height."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = _kebab(str(part))
            # Keep the user's own spelling where the key exists in the file.
            if isinstance(node, dict) and part in node:
                key = str(part)
            out += ("." if out else "") + key
        try:
            node = node[part] if not isinstance(node, dict) else node.get(part, node.get(_kebab(str(part))))
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    node = data
    for part in loc:
        try:
            if isinstance(node, dict):
                if part in node:
                    node = node[part]
                elif _kebab(str(part)) in node:
                    node = node[_kebab(str(part))]
                else:
                    return MISSING
            else:
                node = node[part]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return node


def _known_keys(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a table at ``loc`` accepts, for 'did you mean' suggestions."""
    cls: Any = model_cls
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        field = cls.model_fields.get(part) or next(
            (f for n, f in cls.model_fields.items() if _kebab(n) == part), None
        )
        if field is None:
            return []
        cls = _inner_model(field.annotation)
    if cls is None:
        return []
    return [_kebab(n) for n, f in cls.model_fields.items() if not f.exclude]


def _inner_model(annotation: Any) -> Any:
    """The BaseModel class inside ``tuple[X, ...]``, ``X | None`` or ``X``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


# Pydantic's words for a wrong TOML type, in TOML's words.
_TYPE_HELP = {
    "model_type": "expected a table ([name] or name = { ... })",
    "dict_type": "expected a table ({ key = value, ... })",
    "tuple_type": "expected an array ([...])",
    "list_type": "expected an array ([...])",
    "string_type": "expected a string (in quotes)",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
}


def _problems_from_validation(exc: ValidationError, data: dict[str, Any], file: str) -> list[ConfigProblem]:
    problems = []
    errors = exc.errors()
    failing = [tuple(e["loc"]) for e in errors]
    for err in errors:
        loc = tuple(err["loc"])
        # An array whose only items were refused is then also "too short": the items say it all.
        if err["type"] == "too_short" and any(len(f) > len(loc) and f[: len(loc)] == loc for f in failing):
            continue
        value = _value_at(data, loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            known = _known_keys(ReleaseConfig, loc[:-1])
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            message = "unknown key"
            if guess:
                message += f"; did you mean '{guess[0]}'?"
            elif known:
                message += f"; expected one of: {', '.join(sorted(known))}"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "literal_error":
            message = "expected " + err["msg"].removeprefix("Input should be ")
        elif err["type"] == "string_pattern_mismatch":
            pattern = (err.get("ctx") or {}).get("pattern", "")
            message = PATTERN_HELP.get(pattern, message)
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        elif err["type"] in _TYPE_HELP:
            message = _TYPE_HELP[err["type"]]
        elif err["type"] == "too_short" and isinstance(value, list):
            message = f"expected at least {(err.get('ctx') or {}).get('min_length', 1)} item(s)"
        problems.append(ConfigProblem(file, _dotted(loc, data), value, message))
    return problems


def _cross_reference_problems(data: dict[str, Any], file: str) -> list[ConfigProblem]:
    """Checks that span tables. Run on the raw data so they are reported beside type errors."""
    problems: list[ConfigProblem] = []
    models = data.get("models") if isinstance(data.get("models"), list) else []
    by_name: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            continue
        name = m.get("name")
        if isinstance(name, str):
            if name in by_name:
                problems.append(ConfigProblem(file, f"models[{i}].name", name, "duplicate model name"))
            by_name[name] = m
    variants = data.get("variants") if isinstance(data.get("variants"), list) else []
    seen: set[str] = set()
    for i, v in enumerate(variants):
        if not isinstance(v, dict):
            continue
        vname = v.get("name")
        if isinstance(vname, str):
            if vname in seen:
                problems.append(ConfigProblem(file, f"variants[{i}].name", vname, "duplicate variant name"))
            seen.add(vname)
        model_name = v.get("model", MISSING)
        if isinstance(model_name, str) and model_name not in by_name:
            guess = difflib.get_close_matches(model_name, list(by_name), n=1, cutoff=0.6)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            names = ", ".join(sorted(by_name)) or "none"
            problems.append(
                ConfigProblem(file, f"variants[{i}].model", model_name, f"no model of that name (models: {names}){hint}")
            )
        dockerfile = v.get("dockerfile")
        if isinstance(dockerfile, str):
            from slipway.paths import resolve

            if resolve(dockerfile, Path(file).resolve().parent) is None:
                problems.append(
                    ConfigProblem(
                        file, f"variants[{i}].dockerfile", dockerfile,
                        "file does not exist (looked beside the config file and in Slipway's own dockerfiles/)",
                    )
                )
    wheels = data.get("wheels")
    if isinstance(wheels, dict) and isinstance(wheels.get("model"), str) and wheels["model"] not in by_name:
        problems.append(ConfigProblem(file, "wheels.model", wheels["model"], "no model of that name"))
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            continue
        inp = m.get("input")
        if isinstance(inp, dict):
            channels = inp.get("channels", 3)
            for key in ("mean", "std"):
                seq = inp.get(key)
                if isinstance(seq, list) and isinstance(channels, int) and len(seq) != channels:
                    problems.append(
                        ConfigProblem(file, f"models[{i}].input.{key}", seq, f"expected {channels} values (one per channel)")
                    )
            std = inp.get("std")
            if isinstance(std, list) and any(isinstance(s, (int, float)) and s == 0 for s in std):
                problems.append(ConfigProblem(file, f"models[{i}].input.std", std, "must not contain 0"))
    project = data.get("project")
    if isinstance(project, dict) and isinstance(project.get("version"), str):
        from slipway.version import parse_version

        try:
            parse_version(project["version"])
        except ValueError as exc:
            problems.append(ConfigProblem(file, "project.version", project["version"], str(exc)))
    return problems


def _golden_problems(data: dict[str, Any], file: str) -> list[ConfigProblem]:
    """``models[].golden``: present, one of its two forms, and, for a COCO folder, usable as it is
    (folder and file there, enough images, every category a label of the model, every annotated
    image in the folder). A hook is imported only by the export, which reports what it does."""
    from model_export.golden import coco_problems

    problems: list[ConfigProblem] = []
    models = data.get("models") if isinstance(data.get("models"), list) else []
    root = Path(file).resolve().parent
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            continue
        name = m.get("name", f"#{i}")
        key = f"models[{i}].golden"
        golden = m.get("golden", MISSING)
        if golden is MISSING:
            problems.append(ConfigProblem(
                file, key, MISSING,
                f"model '{name}' must name its golden set: golden = {{ images = \"<folder>\", annotations = "
                f"\"<coco.json>\" }} or golden = {{ hook = \"module:callable\", count = 8, seed = 0 }}",
            ))
            continue
        if not isinstance(golden, dict):
            continue  # the type error is reported by validation
        has_hook, has_folder = "hook" in golden, "images" in golden or "annotations" in golden
        if has_hook and has_folder:
            problems.append(ConfigProblem(file, key, golden, "give either images + annotations or hook, not both"))
            continue
        if not has_hook and not has_folder:
            problems.append(ConfigProblem(file, key, golden, "expected images + annotations, or hook"))
            continue
        if has_hook:
            continue
        for part in ("images", "annotations"):
            if part not in golden:
                problems.append(ConfigProblem(file, f"{key}.{part}", MISSING, "required with a COCO golden set"))
        for part in ("count", "seed"):
            if part in golden:
                problems.append(ConfigProblem(file, f"{key}.{part}", golden[part], "applies only to a hook"))
        labels = m.get("labels")
        if (not isinstance(golden.get("images"), str) or not isinstance(golden.get("annotations"), str)
                or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            continue
        for part, value, message in coco_problems(root / golden["images"], root / golden["annotations"],
                                                  labels, str(name)):
            shown = golden[part] if value == str(root / golden[part]) else value
            problems.append(ConfigProblem(file, f"{key}.{part}", shown, message))
    return problems


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _array(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key)
    return [v if isinstance(v, dict) else {} for v in value] if isinstance(value, list) else []


def _duplicates(values: Any) -> list[Any]:
    if not isinstance(values, list):
        return []
    seen: list[Any] = []
    dups: list[Any] = []
    for v in values:
        if v in seen and v not in dups:
            dups.append(v)
        seen.append(v)
    return dups


def image_repository_problem(value: str) -> str | None:
    """Why ``value`` cannot prefix an image name ('host[:port]/path'), or None."""
    if not value.strip():
        return "expected a registry and path such as ghcr.io/my-org or 127.0.0.1:5000/slipway, not an empty string"
    if "://" in value:
        return "expected a registry and path without a scheme, such as ghcr.io/my-org (not a URL)"
    if not IMAGE_REPOSITORY.match(value.rstrip("/")):
        return (
            "not a valid image repository: expected [host[:port]/]path with lowercase path "
            "components, no spaces, tag or digest (such as ghcr.io/my-org or 127.0.0.1:5000/slipway)"
        )
    return None


def index_url_problem(value: str) -> str | None:
    """Why ``value`` cannot be a package index URL, or None."""
    from urllib.parse import urlsplit

    if any(c.isspace() for c in value):
        return "expected an http(s) URL without spaces, such as https://upload.pypi.org/legacy/"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        return "expected an http(s) URL such as https://upload.pypi.org/legacy/"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http(s) URL with a host, such as https://upload.pypi.org/legacy/ or http://127.0.0.1:8765/"
    if parts.query or parts.fragment:
        return "expected an index URL without query or fragment"
    return None


def dockerfile_targets(path: Path) -> list[str]:
    """The stage names (FROM ... AS name) a Dockerfile defines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return re.findall(r"(?im)^\s*FROM\s+(?:--\S+\s+)*\S+\s+AS\s+(\S+)\s*$", text)


def _more_problems(data: dict[str, Any], file: str) -> list[ConfigProblem]:
    """Cross-field checks beyond references: what each runtime needs, keys of per-runtime and
    per-variant tables, registry syntax, duplicates. Run on the raw data like the checks above."""
    from slipway.paths import resolve

    problems: list[ConfigProblem] = []

    def add(key: str, value: Any, message: str) -> None:
        problems.append(ConfigProblem(file, key, value, message))

    models = _array(data, "models")
    by_name: dict[str, dict[str, Any]] = {}
    for m in models:
        if isinstance(m.get("name"), str):
            by_name.setdefault(m["name"], m)
    model_exporters: dict[str, tuple[str, ...]] = {}
    for i, m in enumerate(models):
        fw = m.get("framework")
        exporters = m.get("exporters")
        can = FRAMEWORK_EXPORTERS.get(fw) if isinstance(fw, str) else None
        if isinstance(exporters, list):
            if not exporters:
                add(f"models[{i}].exporters", exporters,
                    f"expected at least one exporter{f' ({chr(44).join(can)})' if can else ''}; "
                    "leave the key out for all the framework supports")
            for j, e in enumerate(exporters):
                if can and isinstance(e, str) and e in EXPORTERS and e not in can:
                    add(f"models[{i}].exporters[{j}]", e, f"a {fw} model exports to {' or '.join(can)}, not {e}")
            for dup in _duplicates(exporters):
                add(f"models[{i}].exporters", exporters, f"'{dup}' is listed twice")
        if isinstance(m.get("name"), str) and can and m["name"] not in model_exporters:
            model_exporters[m["name"]] = (
                tuple(e for e in exporters if isinstance(e, str)) if isinstance(exporters, list) else can
            )
        labels = m.get("labels")
        if isinstance(labels, list):
            for j, label in enumerate(labels):
                if isinstance(label, str) and not label.strip():
                    add(f"models[{i}].labels[{j}]", label, "expected a non-empty label")
            for dup in _duplicates(labels):
                add(f"models[{i}].labels", labels, f"label '{dup}' is listed twice; class ids must map to one name each")

    variants = _array(data, "variants")
    variant_names = [v["name"] for v in variants if isinstance(v.get("name"), str)]
    for i, v in enumerate(variants):
        runtime = v.get("runtime")
        model = by_name.get(v.get("model")) if isinstance(v.get("model"), str) else None
        if isinstance(runtime, str) and runtime in RUNTIME_EXPORT and model is not None:
            fw = model.get("framework")
            need = RUNTIME_EXPORT[runtime]
            have = model_exporters.get(model.get("name"), ())
            if fw in FRAMEWORK_EXPORTERS and need not in FRAMEWORK_EXPORTERS[fw]:
                add(f"variants[{i}].runtime", runtime,
                    f"needs the '{need}' export, which a {fw} model ('{model['name']}') cannot produce; "
                    f"runtimes for {fw}: {', '.join(r for r, e in RUNTIME_EXPORT.items() if e in FRAMEWORK_EXPORTERS[fw])}")
            elif fw in FRAMEWORK_EXPORTERS and need not in have:
                add(f"variants[{i}].runtime", runtime,
                    f"needs the '{need}' export, but the exporters of model '{model['name']}' are {list(have)}; "
                    f"add '{need}' to its exporters")
        device = v.get("device", "cpu")
        if device == "gpu" and isinstance(runtime, str) and runtime in RUNTIMES and runtime not in GPU_RUNTIMES:
            add(f"variants[{i}].device", device,
                f"runtime '{runtime}' has no GPU build; GPU runtimes: {', '.join(GPU_RUNTIMES)}")
        platforms = v.get("platforms")
        for dup in _duplicates(platforms):
            add(f"variants[{i}].platforms", platforms, f"platform '{dup}' is listed twice")
        base = v.get("base-image", v.get("base_image"))
        if isinstance(base, str) and not IMAGE_REFERENCE.match(base):
            add(f"variants[{i}].base-image", base,
                "not a valid image reference: expected [host[:port]/]name[:tag][@sha256:digest], lowercase, no spaces")
        build_args = v.get("build-args", v.get("build_args"))
        if isinstance(build_args, dict):
            for k in build_args:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)):
                    add(f"variants[{i}].build-args", k, "expected build argument names of letters, digits and '_'")
        dockerfile, target = v.get("dockerfile"), v.get("target")
        if isinstance(dockerfile, str) and isinstance(target, str):
            found = resolve(dockerfile, Path(file).resolve().parent)
            if found is not None and found.is_file():
                targets = dockerfile_targets(found)
                if target not in targets:
                    guess = difflib.get_close_matches(target, targets, n=1, cutoff=0.6)
                    hint = f"; did you mean '{guess[0]}'?" if guess else ""
                    add(f"variants[{i}].target", target,
                        f"{dockerfile} defines no stage of that name (stages: {', '.join(targets) or 'none'}){hint}")

    wheels = _table(data, "wheels")
    for key in ("python", "platforms"):
        for dup in _duplicates(wheels.get(key)):
            add(f"wheels.{key}", wheels[key], f"'{dup}' is listed twice")
    wheels_model = by_name.get(wheels.get("model")) if isinstance(wheels.get("model"), str) else None
    if wheels_model is not None and wheels.get("enabled", True) is not False:
        if wheels_model.get("framework") not in FRAMEWORKS:
            pass  # reported on the model itself
        elif wheels_model.get("framework") != "pytorch":
            add("wheels.model", wheels["model"],
                f"the C++ runtime wheels run TorchScript: expected a pytorch model, '{wheels['model']}' is "
                f"{wheels_model.get('framework')}")
        elif "torchscript" not in model_exporters.get(wheels["model"], ("torchscript",)):
            add("wheels.model", wheels["model"], "the C++ runtime wheels need its 'torchscript' export; add it to its exporters")

    registries = _table(data, "registries")
    if isinstance(registries.get("images"), str):
        why = image_repository_problem(registries["images"])
        if why:
            add("registries.images", registries["images"], why)
    for key in ("packages", "packages-simple", "packages_simple"):
        if isinstance(registries.get(key), str):
            why = index_url_problem(registries[key])
            if why:
                add(f"registries.{key}", registries[key], why)

    project = _table(data, "project")
    source = project.get("source")
    if isinstance(source, str) and source and index_url_problem(source):
        add("project.source", source, "expected an http(s) URL of the source repository, or leave it out")

    smoke = _table(data, "smoke")
    tolerance = smoke.get("tolerance")
    if isinstance(tolerance, dict):
        allowed = ("default", *RUNTIMES)
        for k in tolerance:
            if k not in allowed:
                guess = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
                hint = f"; did you mean '{guess[0]}'?" if guess else ""
                add(f"smoke.tolerance.{k}", tolerance[k],
                    f"no runtime named '{k}' (expected one of: {', '.join(allowed)}){hint}")

    budgets = _table(data, "budgets")
    disabled = {v["name"] for v in variants if isinstance(v.get("name"), str) and v.get("enabled") is False}
    per_variant = {"max-image-mb": "max_image_mb", "max-ready-s": "max_ready_s"}
    for key, alias in per_variant.items():
        table = budgets.get(key, budgets.get(alias))
        if isinstance(table, dict):
            for name in table:
                if name in disabled:
                    add(f"budgets.{key}.{name}", table[name],
                        f"variant '{name}' is disabled (enabled = false), so this budget would never be "
                        "checked; remove it or enable the variant")
                elif name not in variant_names:
                    guess = difflib.get_close_matches(str(name), variant_names, n=1, cutoff=0.6)
                    hint = f"; did you mean '{guess[0]}'?" if guess else ""
                    add(f"budgets.{key}.{name}", table[name],
                        f"no variant named '{name}' (variants: {', '.join(variant_names) or 'none'}){hint}")
    speedup = budgets.get("min-cpp-speedup", budgets.get("min_cpp_speedup"))
    if speedup is not None and wheels.get("enabled") is False:
        add("budgets.min-cpp-speedup", speedup,
            "needs the C++ runtime wheels, but wheels.enabled = false: it would never be measured")
    p95 = budgets.get("max-p95-ms", budgets.get("max_p95_ms"))
    if isinstance(p95, dict):
        from slipway.benchmark.inprocess import RUNTIMES as BENCH_RUNTIMES

        allowed = sorted({r for rs in BENCH_RUNTIMES.values() for r in rs})
        for name in p95:
            if name not in allowed:
                add(f"budgets.max-p95-ms.{name}", p95[name],
                    f"no in-process runtime named '{name}' (expected one of: {', '.join(allowed)})")
    return problems


def file_problems(config: ReleaseConfig, models: list[str] | None = None) -> list[ConfigProblem]:
    """Files the configuration names that must exist before any work starts (run at plan):
    the weights of every model in ``models`` (default: all)."""
    file = str(config.source_path)
    problems = []
    for i, m in enumerate(config.models):
        if models is not None and m.name not in models:
            continue
        weights = m.weights if m.weights.is_absolute() else config.root / m.weights
        if not weights.is_file():
            shown = weights.relative_to(config.root) if weights.is_relative_to(config.root) else weights
            problems.append(ConfigProblem(
                file, f"models[{i}].weights", str(shown),
                "file does not exist (paths are relative to the folder of the config file)",
            ))
    return problems


def parse_config(data: dict[str, Any], file: str = DEFAULT_CONFIG) -> ReleaseConfig:
    """Validate raw TOML data; raise ConfigError listing every problem found."""
    problems: list[ConfigProblem] = []
    config = None
    golden = _golden_problems(data, file)
    replaced = {p.key for p in golden}
    try:
        config = ReleaseConfig.model_validate({**data, "source_path": Path(file)})
    except ValidationError as exc:
        # A missing golden set is reported once, by _golden_problems, with an example of each form.
        # A model that fails validation also leaves the models tuple "empty": noise beside the real problem.
        listed = isinstance(data.get("models"), list) and bool(data["models"])
        problems.extend(
            p for p in _problems_from_validation(exc, data, file)
            if p.key not in replaced and not (listed and p.key == "models" and "at least 1 item" in p.message)
        )
    problems.extend(_cross_reference_problems(data, file))
    problems.extend(golden)
    problems.extend(_more_problems(data, file))
    if problems:
        # One problem can be reported by both passes (e.g. a wrong type); keep the first.
        unique: dict[tuple[str, str], ConfigProblem] = {}
        for p in problems:
            unique.setdefault((p.key, p.message), p)
        raise ConfigError(list(unique.values()))
    assert config is not None
    # Relative paths in the file are relative to the file, wherever slipway runs from.
    root = config.root
    models = tuple(
        m.model_copy(update={"weights": (root / m.weights).resolve(), "golden": _resolved_golden(m.golden, root)})
        for m in config.models
    )
    return config.model_copy(update={"models": models})


def _resolved_golden(golden: GoldenSpec, root: Path) -> GoldenSpec:
    update = {k: (root / getattr(golden, k)).resolve() for k in ("images", "annotations") if getattr(golden, k)}
    return golden.model_copy(update=update)


def load_config(path: str | Path = DEFAULT_CONFIG) -> ReleaseConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([ConfigProblem(str(path), "", MISSING, "configuration file not found")])
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigProblem(
            f"{path}:{line}", "", MISSING,
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}; save the file as UTF-8",
        )]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "... (at line 3, column 7)"; show it as file:line:column like a compiler.
        message = str(exc)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        location = str(path)
        if where:
            message = message[: where.start()]
            location = f"{path}:{where[1]}:{where[2]}"
        elif m := re.search(r"\s*\(at end of document\)$", message):
            message = message[: m.start()] + " at the end of the file"
        raise ConfigError([ConfigProblem(location, "", MISSING, f"not valid TOML: {message}")]) from None
    return parse_config(data, str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of release.toml, as committed in scripts/slipway/release.schema.json."""
    schema = ReleaseConfig.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/slipway-ml/slipway/raw/main/scripts/slipway/release.schema.json"
    schema["title"] = "Slipway release.toml"
    schema.get("properties", {}).pop("source-path", None)
    return schema
