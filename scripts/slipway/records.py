"""The typed records the stages exchange: the plan and every JSON file in ``dist/<version>/``.

Stages never import each other; the output folder is their only channel, and this module is its
contract. Every record is a pydantic model; stages read and write records only through
``read`` and ``write``:

- ``read(path, Model)``: a missing file (unless ``missing`` is given), a file that is not valid
  JSON, or one that does not match the model is a ``RecordError`` (exit code 4) naming the file
  and, for a mismatch, the field.
- ``write(path, record)``: atomic (a temporary file, then a rename), two-space indented, the keys
  in the order the model declares them. Fields that were never set are left out, so an optional
  part of a record is absent rather than ``null`` unless a stage set it to ``None``.

Records Slipway writes forbid unknown keys, so a misspelt key is an error where it is written,
not a silently ignored value where it is read. Parts that are measurements or reports of other
tools (a bench run's numbers, the per-image comparison of a smoke test, an exporter's details)
are typed as JSON objects (``JsonObject``): their schema says "object", their content is
described where it is made.

The JSON Schema of each record is committed under ``slipway/schemas/`` (``slipway schema
--records DIR`` writes them; a test fails when one is stale). ``SCHEMAS`` maps each file name
to its model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel, ValidationError

from slipway.errors import RecordError

# A JSON object whose content another part documents (measurements, tool output).
JsonObject = dict[str, JsonValue]
# A measured number: JSON does not tell 1 from 1.0, Python does, and a record keeps what it got.
Number = int | float


class Record(BaseModel):
    """A record Slipway writes: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


# --------------------------------------------------------------------------------------------
# plan.json (``slipway plan``)


class PlanRegistries(Record):
    images: str = Field(description="image registry and namespace, e.g. ghcr.io/acme")
    packages: str = Field(description="package index upload URL")


class PlanRuntime(Record):
    version: str = Field(description="Slipway's C++ runtime version (always Slipway's own)")
    publish: bool = Field(description="whether this release publishes the runtime wheels")


class PlanPackage(Record):
    model: str
    package: str = Field(description="distribution name of the model package")
    import_name: str = Field(alias="import", description="import name of the model package")


class ExportEntry(Record):
    model: str
    framework: str
    exporters: str = Field(description="comma-separated exporters")


class WheelTarget(Record):
    arch: str
    platform: str
    runner: str
    build: str = Field(description="cibuildwheel build selector, e.g. 'cp311-* cp312-*'")
    model: str = Field(description="the export whose golden outputs the wheel test checks")


class ImageEntry(Record):
    variant: str
    model: str
    framework: str
    runtime: str
    device: str
    dockerfile: str
    target: str
    platforms: str = Field(description="comma-separated platforms, e.g. linux/amd64,linux/arm64")
    image: str = Field(description="repository the variant is published to, without a tag")


class ImageBuild(ImageEntry):
    platform: str
    arch: str


class SmokeEntry(Record):
    artifact: str = Field(description="image:<variant> or wheels")
    kind: Literal["image", "wheel"]
    variant: str
    device: str
    arches: str = Field(description="comma-separated architectures it is smoke-tested on")


class PublishEntry(Record):
    kind: Literal["images", "wheels", "models"]


class PlanMatrix(Record):
    export: list[ExportEntry]
    wheels: list[WheelTarget]
    images: list[ImageEntry]
    image_builds: list[ImageBuild]
    smoke: list[SmokeEntry]
    publish: list[PublishEntry]


class SkippedVariant(Record):
    variant: str
    reason: str


class Plan(Record):
    """What a run builds and whether it publishes (``plan.json``; GitHub matrices come from it)."""

    schema_version: Literal[1]
    project: str
    version: str
    prerelease: bool
    dry_run: bool
    event: Literal["tag", "dispatch", "pull_request", "call", "local"]
    ref: str
    sha: str
    short_sha: str
    output_dir: str
    config: str
    registries: PlanRegistries
    runtime: PlanRuntime
    packages: list[PlanPackage]
    matrix: PlanMatrix
    stages: list[str]
    skipped: list[SkippedVariant]
    notes: list[str]


# --------------------------------------------------------------------------------------------
# stages.json


class StageStatus(Record):
    status: Literal["ok", "failed", "interrupted"]
    seconds: Number
    summary: str = ""


class StagesRecord(RootModel[dict[str, StageStatus]]):
    """stage name -> status, duration and one-line summary (the table ``slipway release`` prints)."""


# --------------------------------------------------------------------------------------------
# models/<model>/model.json and golden/reference.json (``slipway export``)


class FileListing(Record):
    path: str
    size: int
    sha256: str


class FileEntry(Record):
    """A file, or a folder (then ``files`` lists each file in it and ``sha256`` hashes the list)."""

    path: str
    size: int
    sha256: str
    files: list[FileListing] | None = None


class InputSpec(Record):
    height: int
    width: int
    channels: int
    dtype: str
    resize: str
    mean: list[Number]
    std: list[Number]


class OutputSpec(Record):
    format: Literal["candidates", "detections"]
    score_threshold: Number
    nms_iou: Number
    max_detections: int


class GoldenInfo(Record):
    dir: str
    reference: str
    count: int
    source: JsonObject = Field(description="where the golden set came from (release.toml's models[].golden)")
    eager_accuracy: JsonObject | None = Field(default=None, description="the original model's accuracy on it")


class ExportSource(Record):
    entry_point: str
    weights: str
    weights_sha256: str


class Tolerance(Record):
    iou: Number
    score: Number


class VerificationRun(Record):
    """One export format run on the golden images in a fresh process, against the eager outputs."""

    format: str
    ok: bool
    min_iou: Number | None = None
    max_score_diff: Number | None = None
    images: int | None = None
    detections: int | None = None
    seconds: Number | None = None
    tolerance: Tolerance | None = None
    table: str | None = Field(default=None, description="what differed, when a run failed")
    error: str | None = None


class Verification(Record):
    ok: bool
    runs: list[VerificationRun]


class ModelManifest(Record):
    """``models/<model>/model.json``: what an export holds, how it was made and verified."""

    name: str
    version: str
    framework: str
    framework_version: str | None = None
    input: InputSpec
    labels: list[str]
    output: OutputSpec
    parameters: int | None = None
    files: dict[str, FileEntry]
    exporters: dict[str, JsonObject] = Field(description="format -> what its exporter recorded")
    golden: GoldenInfo | None = None
    source: ExportSource | None = None
    git_commit: str | None = None
    verification: Verification | None = None
    inputs: dict[str, str] | None = Field(
        default=None, description="a hash per part the export depends on (slipway.stages.export.export_inputs)"
    )


class GroundTruth(Record):
    box: list[Number]
    class_id: int
    label: str


class Detection(Record):
    box: list[Number]
    score: Number
    class_id: int
    label: str | None = None


class GoldenImage(Record):
    file: str
    width: int
    height: int
    source: str
    ground_truth: list[GroundTruth]
    detections: list[Detection]


class GoldenReference(Record):
    """``models/<model>/golden/reference.json``: ground truth and the eager model's detections."""

    images: list[GoldenImage]


# --------------------------------------------------------------------------------------------
# images.json and images/<variant>.json (``slipway images``)


class ImageLayer(Record):
    size: int
    created_by: str


class ImageRecord(Record):
    """One variant's image: built here (``tag``, ``id``, ``size``, ``layers``...) or recorded after a
    build elsewhere (``--step record``: ``digest`` or the saved ``archive``)."""

    variant: str
    model: str
    runtime: str
    device: str
    platforms: str | None = None
    image: str
    tag: str | None = None
    digest: str | None = None
    version: str | None = None
    sha: str | None = None
    dry_run: bool | None = None
    base_image: str | None = None
    build_seconds: Number | None = None
    export_inputs: str | None = Field(default=None, description="the export it was built from, hashed")
    archive: str | None = Field(default=None, description="the saved image, relative to images/")
    archive_size: int | None = None
    id: str | None = Field(default=None, description="the local image ID")
    size: int | None = None
    layers: list[ImageLayer] | None = None
    labels: dict[str, str] | None = None
    tuned_from: str | None = Field(default=None, description="slipway bench --tune: the built image's ID")
    serving_defaults: dict[str, str] | None = Field(
        default=None, description="slipway bench --tune: the serving knobs the tuned image sets (ENV)")


class ImagesIndex(RootModel[dict[str, ImageRecord]]):
    """``images.json``: variant -> image record, for the images built on this machine."""


# --------------------------------------------------------------------------------------------
# wheels/wheels.json (``slipway wheels``)


class RuntimeWheel(Record):
    name: str
    kind: Literal["self-contained", "thin"]
    size: int
    size_mib: Number
    sha256: str
    builder: str
    python_tag: str
    abi_tag: str
    platform_tag: str
    check: JsonObject = Field(description="the golden-output check of the wheel (empty when not run)")
    package: str
    published: bool
    folder: str = Field(description="wheels or runtime: the folder of dist/<version>/ holding it")


class ModelPackageWheel(Record):
    name: str
    kind: Literal["model-package"]
    package: str
    import_name: str = Field(alias="import")
    model: str
    size: int
    size_mib: Number
    sha256: str
    requires: str
    folder: str | None = None


class NotBuiltHere(Record):
    python: str
    platform: str
    reason: str


class LibtorchPruning(Record):
    rules: JsonValue
    bytes: JsonValue


class WheelsRecord(Record):
    """``wheels/wheels.json``: the runtime wheels and model packages this release built."""

    version: str
    release_version: str
    model: str
    builder: str
    builder_reason: str
    max_size_mib: Number
    build_seconds: Number
    fingerprint: str
    runtime_cache: str
    publish_runtime: bool
    ok: bool
    problems: list[str]
    wheels: list[RuntimeWheel]
    packages: list[ModelPackageWheel]
    not_built_here: list[NotBuiltHere]
    libtorch_pruning: LibtorchPruning | None = None


# --------------------------------------------------------------------------------------------
# smoke/<artifact>.json and smoke/summary.json (``slipway smoke``)


class SmokeLimits(Record):
    memory: str | None = None
    cpus: Number | None = None
    ready_timeout_s: Number | None = None


class GpuUse(Record):
    requested: bool
    available: bool
    exercised: bool
    note: str | None = None
    service_device: str | None = None


class LatencyMs(Record):
    p50: Number | None = None
    max: Number | None = None


class RequestCases(Record):
    cases: int
    failed: list[str]


class SmokeResult(Record):
    """One artifact's smoke test on one platform: ``image:<variant>``, ``wheel:<file>`` or the
    aggregate ``wheels``. Failures are recorded too (``ok`` false, ``error`` says why)."""

    artifact: str
    kind: Literal["image", "wheel", "wheels"]
    ok: bool
    error: str | None = None
    variant: str | None = None
    arch: str | None = None
    model: str | None = None
    image: str | None = None
    image_id: str | None = None
    digest: str | None = None
    archive: str | None = None
    file: str | None = None
    sha256: str | None = None
    wheel_kind: str | None = None
    runtime: str | None = None
    device: str | None = None
    tolerance: Tolerance | None = None
    limits: SmokeLimits | None = None
    gpu: GpuUse | None = None
    model_server: JsonObject | None = Field(default=None, description="the external model server (tfserving)")
    ready_seconds: Number | None = None
    service: JsonObject | None = None
    images: int | None = None
    min_iou: Number | None = None
    max_score_diff: Number | None = None
    map50_vs_ground_truth: Number | None = None
    export_inputs: str | None = None
    accuracy: JsonObject | None = None
    min_map50: Number | None = None
    latency_ms: LatencyMs | None = None
    per_image: list[JsonObject] | None = None
    requests: RequestCases | None = None
    untested: bool | None = None
    published: bool | None = None
    module: str | None = None
    runtime_version: str | None = None
    torch_imported: bool | None = None
    torch_installed: bool | None = None
    installed: dict[str, str] | None = None
    log: str | None = None
    logs: list[str] | None = None
    files: dict[str, str] | None = Field(default=None, description="wheels: file -> sha256 of each tested wheel")
    seconds: Number | None = None


class SmokeSummaryEntry(Record):
    """A result as the summary keeps it: the verdict and the numbers, not the per-image detail."""

    ok: bool
    error: str = ""
    wheel_kind: str | None = None
    artifact: str | None = None
    kind: str | None = None
    variant: str | None = None
    arch: str | None = None
    model: str | None = None
    runtime: str | None = None
    device: str | None = None
    image: str | None = None
    image_id: str | None = None
    digest: str | None = None
    file: str | None = None
    sha256: str | None = None
    min_iou: Number | None = None
    max_score_diff: Number | None = None
    images: int | None = None
    map50_vs_ground_truth: Number | None = None
    accuracy: JsonObject | None = None
    min_map50: Number | None = None
    export_inputs: str | None = None
    ready_seconds: Number | None = None
    latency_ms: LatencyMs | None = None
    tolerance: Tolerance | None = None
    gpu: GpuUse | None = None
    untested: bool | None = None
    files: dict[str, str] | None = None
    model_server: str | None = Field(default=None, description="the model server's description")


class SmokeTableRow(Record):
    artifact: str
    model: str | None = None
    checked_by: str
    images: int | None = None
    max_box_deviation: Number | None = None
    max_score_diff: Number | None = None
    accuracy: JsonObject | None = None
    ok: bool
    tolerance: Tolerance | None = None
    ready_seconds: Number | None = None
    p50_ms: Number | None = None
    note: str | None = None


class SmokeSummary(Record):
    """``smoke/summary.json``: every artifact's verdict (rebuilt from the per-artifact files)."""

    ok: bool
    failed: list[str]
    version: str
    sha: str
    gpu_present: bool | None = None
    artifacts: dict[str, SmokeSummaryEntry]
    table: list[SmokeTableRow]


# --------------------------------------------------------------------------------------------
# bench/results.json (``slipway bench``)


class BenchSettingsRecord(Record):
    threads: int
    warmup: int
    runs: int
    served_seconds: Number
    concurrency: list[int]
    ready_runs: int
    import_repeats: int
    grid: bool | None = None
    grid_seconds: Number | None = None


class BenchScope(Record):
    models: list[str]
    variants: list[str]


class BenchBudgets(Record):
    ok: bool
    checks: list[JsonObject]


class BenchResults(Record):
    """``bench/results.json``: one bench run's numbers; ``slipway.benchmark.report`` renders them."""

    schema_: int = Field(alias="schema")
    run_id: str
    date: str
    project: str | None = None
    version: str | None = None
    git_commit: str | None = None
    machine: JsonObject
    settings: BenchSettingsRecord
    scope: BenchScope
    inprocess: JsonObject
    imports: JsonObject
    served: JsonObject
    grid: JsonObject | None = Field(default=None, description="the serving grid (bench/grid.json), or why not")
    sizes: JsonObject
    seconds: Number
    budgets: BenchBudgets | None = None


class BenchGrid(Record):
    """``bench/grid.json``: the serving grid ``slipway bench --tune`` measured on the built images."""

    target: int = Field(description="the concurrency the choice is made at")
    seconds: Number
    cpus: int
    rule: str
    images: dict[str, JsonObject] = Field(
        description="variant -> grid points measured (workers, slots, threads, batching; the service's default "
        "flagged \"default\"), the chosen one and how it compares with the default")
    measured_by: str | None = None


# --------------------------------------------------------------------------------------------
# publish/<variant>.json, publish-plan.json, release.json (``slipway publish``)


class PublishedImage(Record):
    """``publish/<variant>.json``: the tags given to one variant's pushed digest."""

    variant: str
    image: str
    digest: str
    dry_run: bool
    tags: dict[str, str | None] = Field(description="tag -> 'tagged' or why it was left (same, skip...)")


class PublishAction(Record):
    action: Literal["push", "keep", "skip", "refuse", "upload", "asset"]
    what: str = Field(description="image, wheel or release asset")
    ref: str
    image_id: str | None = None
    sha256: str | None = None
    index: str | None = None
    state: str | None = None
    immutable: bool | None = None
    to: str | None = None


class PublishPlan(Record):
    """``publish-plan.json``: what publish found and would do, before it pushes anything."""

    dry_run: bool
    actions: list[PublishAction]
    conflicts: list[str]


class SbomRef(Record):
    file: str
    sha256: str
    components: dict[str, int] | None = None


class ImageSmokeNumbers(Record):
    min_iou: Number | None = None
    max_score_diff: Number | None = None
    model_server: str | JsonObject | None = None
    gpu: GpuUse | None = None


class ReleaseImage(Record):
    image: str
    image_id: str | None = None
    digest: str | None = None
    tags: dict[str, str | None]
    platforms: str | None = None
    sbom: SbomRef | None = None
    smoke: ImageSmokeNumbers


class ReleaseWheel(Record):
    file: str
    sha256: str
    index: str
    sbom: SbomRef | None = None


class ReleaseModel(Record):
    asset: str
    sha256: str
    manifest_sha256: str
    files: dict[str, FileEntry]


class ReleaseSbom(Record):
    artifact: str
    file: str
    sha256: str
    format: str | None = None
    components: dict[str, int] | None = None


class ReleaseSmoke(Record):
    ok: bool
    gpu_present: bool | None = None


class ReleaseAssets(Record):
    folder: str
    files: dict[str, str] = Field(description="file name -> sha256")


class ReleaseChecksums(Record):
    file: str
    sha256: str


class ReleaseRecord(Record):
    """``release.json`` (``release.dry-run.json`` for a dry run after a real publish): what was
    published where, with every digest and sha256."""

    project: str
    version: str
    sha: str
    ref: str | None = None
    prerelease: bool
    dry_run: bool
    images: dict[str, ReleaseImage]
    wheels: list[ReleaseWheel]
    models: dict[str, ReleaseModel]
    sboms: list[ReleaseSbom]
    smoke: ReleaseSmoke
    assets: ReleaseAssets | None = None
    checksums: ReleaseChecksums | None = None


# --------------------------------------------------------------------------------------------
# Reading and writing

M = TypeVar("M", bound=BaseModel)
# The committed JSON Schemas (slipway/schemas/ in the installed package).
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
REQUIRED: Any = object()  # "no default": a missing file is an error

# File name in slipway/schemas/ -> the model it describes (what 'slipway schema --records' writes).
SCHEMAS: dict[str, type[BaseModel]] = {
    "plan.schema.json": Plan,
    "stages.schema.json": StagesRecord,
    "model.schema.json": ModelManifest,
    "golden-reference.schema.json": GoldenReference,
    "image.schema.json": ImageRecord,
    "images.schema.json": ImagesIndex,
    "wheels.schema.json": WheelsRecord,
    "smoke-result.schema.json": SmokeResult,
    "smoke-summary.schema.json": SmokeSummary,
    "bench-results.schema.json": BenchResults,
    "bench-grid.schema.json": BenchGrid,
    "publish-image.schema.json": PublishedImage,
    "publish-plan.schema.json": PublishPlan,
    "release-record.schema.json": ReleaseRecord,
}


def location(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as a dotted key: ``matrix.images[0].variant``."""
    text = ""
    for part in (p for p in loc if p != "root"):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the whole record)"


def describe(exc: ValidationError, limit: int = 3) -> str:
    """The first problems of a validation error, each as ``field: message (got value)``."""
    parts = []
    for err in exc.errors()[:limit]:
        where = location(err["loc"])
        shown = "" if err["type"] in ("missing",) else f" (got {json.dumps(err.get('input'), default=str)[:60]})"
        parts.append(f"{where}: {err['msg']}{shown}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse(path: Path | str, data: object, model: type[M]) -> M:
    """``data`` (already parsed JSON from ``path``) as a ``model``; a mismatch is a ``RecordError``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecordError(path, f"does not match {model.__name__}: {describe(exc)}") from None


def read(path: Path | str, model: type[M], missing: Any = REQUIRED) -> M:
    """The record at ``path`` as a ``model``.

    A file that is not there is ``missing`` when one is given (an optional record is then absent),
    else a ``RecordError``. A file that is there but unreadable, not valid JSON or not of the
    model's shape is always a ``RecordError`` naming the file (and the field): a damaged record
    never passes for an absent one.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is REQUIRED:
            raise RecordError(path, "is missing") from None
        return missing
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError(path, f"is not valid JSON ({exc})") from None
    return parse(path, data, model)


def dump(record: BaseModel) -> Any:
    """The JSON data of ``record`` as ``write`` writes it (aliases, unset fields left out)."""
    return record.model_dump(mode="json", by_alias=True, exclude_unset=True)


def dumps(record: BaseModel, *, indent: int | None = 2) -> str:
    if indent is None:
        return json.dumps(dump(record), separators=(",", ":"))
    return json.dumps(dump(record), indent=indent) + "\n"


def write(path: Path | str, record: BaseModel) -> Path:
    """Write ``record`` to ``path`` atomically: a crash never leaves half a JSON file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(record)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def json_schemas() -> dict[str, str]:
    """File name -> the JSON Schema text of each record (what slipway/schemas/ holds)."""
    out = {}
    for name, model in SCHEMAS.items():
        schema = model.model_json_schema(by_alias=True, mode="validation")
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": name, **schema}
        out[name] = json.dumps(schema, indent=2) + "\n"
    return out


__all__ = [
    "SCHEMAS",
    "BenchResults",
    "GoldenReference",
    "ImageRecord",
    "ImagesIndex",
    "JsonObject",
    "ModelManifest",
    "Plan",
    "PublishPlan",
    "PublishedImage",
    "Record",
    "ReleaseRecord",
    "SmokeResult",
    "SmokeSummary",
    "StagesRecord",
    "WheelsRecord",
    "dump",
    "dumps",
    "json_schemas",
    "parse",
    "read",
    "write",
]
