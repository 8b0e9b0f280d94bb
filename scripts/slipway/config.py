"""``release.toml``: parsed once into frozen, typed models; every default lives here.

All problems in a file are collected and reported together, each naming the file, the dotted
key, the value found and what was expected. Unknown keys get a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
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


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=_kebab, populate_by_name=True, strict=False
    )


Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)]


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
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
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
    platforms: tuple[str, ...] = ("linux/amd64",)
    build_args: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True


class WheelsSpec(_Model):
    """The C++ runtime wheels (Slipway's, at Slipway's version) and the project's model packages."""

    enabled: bool = True
    model: str | None = Field(default=None, description="Model whose golden outputs test the wheels.")
    python: tuple[str, ...] = ("3.10", "3.11", "3.12", "3.13")
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64")
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
    memory: str = Field(default="2g", pattern=r"^\d+[kmg]?$")
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


class BudgetsSpec(_Model):
    """Limits a release must stay within; exceeding one stops it before publishing."""

    max_image_mb: dict[str, float] = Field(default_factory=dict, description="Per variant, uncompressed MB.")
    max_p95_ms: dict[str, float] = Field(default_factory=dict, description="Per runtime, in-process p95.")
    min_cpp_speedup: float | None = Field(default=None, description="C++ wheel vs eager baseline.")
    max_ready_s: dict[str, float] = Field(default_factory=dict, description="Per variant, start to ready.")


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


def _problems_from_validation(exc: ValidationError, data: dict[str, Any], file: str) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
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
        elif isinstance(model_name, str):
            model = by_name[model_name]
            runtime = v.get("runtime")
            fw = model.get("framework")
            if runtime in ("torchscript", "cpp") and fw != "pytorch":
                problems.append(
                    ConfigProblem(file, f"variants[{i}].runtime", runtime, f"needs a pytorch model, '{model_name}' is {fw}")
                )
            if runtime in ("tensorflow", "tfserving") and fw != "tensorflow":
                problems.append(
                    ConfigProblem(
                        file, f"variants[{i}].runtime", runtime, f"needs a tensorflow model, '{model_name}' is {fw}"
                    )
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
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", MISSING, f"not valid TOML: {exc}")]) from exc
    return parse_config(data, str(path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of release.toml, as committed in scripts/slipway/release.schema.json."""
    schema = ReleaseConfig.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/slipway-ml/slipway/raw/main/scripts/slipway/release.schema.json"
    schema["title"] = "Slipway release.toml"
    schema.get("properties", {}).pop("source-path", None)
    return schema
