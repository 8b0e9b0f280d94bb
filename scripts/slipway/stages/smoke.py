"""``slipway smoke``: every artifact must answer the golden images like the original model.

- Each image of ``images.json`` runs with the memory and CPUs of ``[smoke]``, must answer /readyz
  within ``timeout-s``, and must return the export's reference detections for every golden image
  within the tolerance of its runtime. A ``tfserving`` image gets an external model server beside
  it (the real ``tensorflow/serving`` on GitHub, the REST stand-in ``slipway.tfserving_standin``
  elsewhere; the result names which). A GPU image on a machine without a GPU runs on the CPU and
  its result says that the GPU path was not exercised.
- Each wheel in ``wheels/`` is installed into a fresh virtualenv without torch and runs the same
  golden images through ``slipway_runtime.Detector``.
- Every artifact is also scored against the golden ground truth (the project's own golden set,
  ``models[].golden``): mAP@0.5 over the model's labels and, at the model's score threshold,
  precision and recall (``accuracy``). Below the model's ``min-map50`` the artifact fails.

Results: one file per artifact (``smoke/image-<variant>.json``, ``smoke/wheel-<file>.json``,
``smoke/wheels.json``; no ``:`` in a name, which GitHub artifacts refuse), and per platform: an
image tested on an arm64 machine writes ``smoke/image-<variant>.arm64.json`` (key
``image:<variant>@arm64`` in the summary), so the results of GitHub's amd64 and arm64 smoke jobs
both survive in the folder they are downloaded into. Then ``smoke/summary.json``
(earlier results of other artifacts are kept) and ``smoke/table.md``, the cross-runtime table:
the in-process numbers of the export's own verification beside every served and installed
artifact. The summary and the table are views rebuilt from the per-artifact files, so results
of separate runs (one GitHub job per artifact: ``--artifact``) merge by copying the files into one
folder and running ``slipway smoke --summarize``.

Where an image comes from: ``images.json`` and ``images/<variant>.json`` (see ``slipway images``).
An image built here is run by its ID; a dry run's image built by Buildx is ``docker load``-ed
from the tar its record names; a pushed one is pulled by its digest.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slipway import records
from slipway.context import StageContext, StageResult
from slipway.engine_images import materialize
from slipway.errors import CheckError, ConfigError
from slipway.fsutil import sha256_file
from slipway.github import add_summary
from slipway.outputs import PRIMARY_ARCH, image_records, smoke_file_stem, smoke_key, smoke_result_files
from slipway.request_cases import run_cases_against
from slipway.smoketest import (
    check_golden,
    has_gpu,
    interpreter_for,
    model_info,
    run_container,
    save_container_logs,
    smoke_wheel,
    tfserving_mode,
    tfserving_server,
)

# The names the service reports for its backend, per runtime of release.toml.
BACKEND_OF_RUNTIME = {
    "torchscript": "torchscript",
    "cpp": "cpp",
    "onnx": "onnx",
    "tensorflow": "tensorflow",
    "tfserving": "tfserving",
}
FORMAT_LABELS = {
    "torchscript": "TorchScript",
    "onnx": "ONNX",
    "saved_model": "TensorFlow SavedModel",
    "frozen_graph": "TensorFlow frozen graph",
}
WHEEL_CHECKS = {
    "self-contained": "slipway smoke: fresh virtualenv without torch",
    "thin": "slipway smoke: beside the installed torch",
    "model-package": "slipway smoke: fresh virtualenv with slipway-runtime, the package's load()",
}
FRAMEWORK_LABELS = {"pytorch": "PyTorch", "tensorflow": "TensorFlow/Keras"}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def host_arch() -> str:
    """This machine's platform architecture as Docker names it (amd64, arm64): the image's
    platform that the engine here runs."""
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def image_stem(variant: str, arch: str) -> str:
    """``image-<variant>`` on amd64, ``image-<variant>.<arch>`` elsewhere (results, logs)."""
    return smoke_file_stem(f"image-{_safe(variant)}", arch)


# --------------------------------------------------------------------------------------------
# Images


def smoke_image(
    ctx: StageContext, entry: records.ImageRecord, *, gpu_present: bool, tfserving: str | None = None
) -> records.SmokeResult:
    variant = entry.variant
    runtime = entry.runtime
    device = entry.device or "cpu"
    tolerance = ctx.config.smoke.tolerance_for(runtime)
    model_dir = ctx.out / "models" / entry.model
    arch = host_arch()
    result: dict[str, Any] = {
        "artifact": f"image:{variant}",
        "kind": "image",
        "variant": variant,
        "arch": arch,
        "model": entry.model,
        "image": entry.tag,
        "image_id": entry.id,
        **({"digest": entry.digest} if entry.digest else {}),
        **({"archive": entry.archive} if entry.archive else {}),
        "runtime": runtime,
        "device": device,
        "tolerance": tolerance.model_dump(),
        "limits": {
            "memory": ctx.config.smoke.memory,
            "cpus": ctx.config.smoke.cpus,
            "ready_timeout_s": ctx.config.smoke.timeout_s,
        },
    }
    if device == "gpu":
        result["gpu"] = {"requested": True, "available": gpu_present, "exercised": False}
        if not gpu_present:
            result["gpu"]["note"] = (
                "no GPU on this machine: the image ran on the CPU (the framework's fallback); "
                "its GPU path was NOT exercised"
            )
    started = time.monotonic()
    logs = ctx.out / "smoke" / f"{image_stem(variant, arch)}.log"
    server_logs = ctx.out / "smoke" / f"{image_stem(variant, arch)}.model-server.log"
    try:
        if not (model_dir / "golden" / "reference.json").exists():
            raise CheckError(f"no golden reference in {model_dir} (run 'slipway export')")
        with contextlib.ExitStack() as stack:
            env: dict[str, str] = {}
            if runtime == "tfserving":
                mode = tfserving_mode(tfserving)
                server = stack.enter_context(
                    tfserving_server(
                        model_dir,
                        mode=mode,
                        timeout=ctx.config.smoke.timeout_s,
                        memory=ctx.config.smoke.memory,
                        cpus=ctx.config.smoke.cpus,
                        logs_to=server_logs,
                        keep_logs=True,
                    )
                )
                env["TFSERVING_URL"] = server.url
                result["model_server"] = {
                    "kind": server.kind,
                    "description": server.description,
                    "ready_seconds": round(server.ready_seconds, 2),
                    **server.details,
                }
                ctx.log(f"{variant}: model server: {server.description} at {server.url}")
            running = stack.enter_context(
                run_container(
                    # By ID: another run of this version may have moved the tag since the build.
                    entry.id,
                    env=env,
                    memory=ctx.config.smoke.memory,
                    cpus=ctx.config.smoke.cpus,
                    timeout=ctx.config.smoke.timeout_s,
                    logs_to=logs,
                    gpus=device == "gpu" and gpu_present,
                )
            )
            result["ready_seconds"] = round(running.ready_seconds, 2)
            name = records.read(model_dir / "model.json", records.ModelManifest).name
            info = model_info(running.url, name)
            result["service"] = {
                k: info.get(k) for k in ("backend", "device", "runtime", "state") if k in info
            }
            result.update(check_golden(running.url, model_dir, iou=tolerance.iou, score=tolerance.score))
            # The same bad requests the service's own tests send in-process, now against the
            # container that ships: each must get a JSON 4xx and leave the service answering.
            cases = run_cases_against(running.url, name) if ctx.config.smoke.request_cases else []
            failed_cases = [f"{c.case}: {c.detail}" for c in cases if not c.ok]
            result["requests"] = {"cases": len(cases), "failed": failed_cases}
            if failed_cases and result["ok"]:
                result["ok"] = False
                result["error"] = f"{len(failed_cases)} of {len(cases)} request case(s) failed: {failed_cases[0]}"
            backend = info.get("backend")
            if backend and backend != BACKEND_OF_RUNTIME.get(runtime, runtime):
                result["ok"] = False
                result["error"] = (
                    f"the image serves with backend '{backend}', but the variant's runtime is '{runtime}'"
                )
            if device == "gpu":
                reported = str(info.get("device") or "")
                result["gpu"]["exercised"] = gpu_present and ("cuda" in reported or "gpu" in reported.lower())
                result["gpu"]["service_device"] = reported
                if gpu_present and not result["gpu"]["exercised"]:
                    result["ok"] = False
                    result["error"] = f"a GPU was given to the container but the service runs on '{reported}'"
            if not result["ok"]:
                save_container_logs(running.name, logs)  # the container goes away with the context
            if not result["ok"] and "error" not in result:
                bad = [r for r in result["per_image"] if not r["ok"]]
                result["error"] = (
                    f"{len(bad)} of {result['images']} golden image(s) differ from the reference "
                    f"(min IoU {result['min_iou']:.4f}, max score diff {result['max_score_diff']:.2e}; "
                    f"tolerance IoU >= {tolerance.iou}, score <= {tolerance.score})"
                )
    except CheckError as exc:
        result.update({"ok": False, "error": str(exc)})
    res = gate_accuracy(ctx, records.SmokeResult.model_validate(result))
    if res.ok:
        server_logs.unlink(missing_ok=True)
    else:
        res.logs = [str(p) for p in (logs, server_logs) if p.exists()]
    res.seconds = round(time.monotonic() - started, 1)
    return res


def gate_accuracy(ctx: StageContext, res: records.SmokeResult) -> records.SmokeResult:
    """Fail ``res`` when its mAP@0.5 is below the model's ``min-map50`` (release.toml); the error
    names the model, the artifact and both values. Results without accuracy are left alone."""
    name = res.model
    acc = res.accuracy
    if not name or not acc:
        return res
    try:
        index, model = next((i, m) for i, m in enumerate(ctx.config.models) if m.name == name)
    except StopIteration:
        return res
    res.min_map50 = model.min_map50
    map50 = acc.get("map50")
    if model.min_map50 is not None and isinstance(map50, int | float) and map50 < model.min_map50:
        message = (
            f"{res.artifact}: mAP@0.5 {map50:.4f} of model '{name}' against its golden "
            f"ground truth is below min-map50 {model.min_map50:g} (models[{index}].min-map50 in "
            f"{ctx.config.source_path.name})"
        )
        res.ok = False
        res.error = f"{res.error}; {message}" if res.error else message
    return res


# --------------------------------------------------------------------------------------------
# Wheels


def smoke_wheels(ctx: StageContext) -> dict[str, records.SmokeResult]:
    """One result per wheel file, and the aggregate ``wheels`` artifact the plan names."""
    from slipway.stages.wheels import runtime_wheels

    # Slipway's runtime wheels (wheels/ or runtime/) and the project's model packages (wheels/).
    wheels = list(dict.fromkeys([*runtime_wheels(ctx.out), *sorted((ctx.out / "wheels").glob("*.whl"))]))
    runtime = next((w for w in runtime_wheels(ctx.out) if w.name.startswith("slipway_runtime-")
                    and interpreter_for(w)[0] is not None), None)
    packages = {e.import_name: e.model for e in ctx.plan.packages}
    planned = any(e.kind == "wheel" for e in ctx.plan.matrix.smoke)
    if not wheels:
        if not planned:
            return {}
        return {
            "wheels": records.SmokeResult(
                artifact="wheels", kind="wheels", ok=False,
                error=f"no wheels in {ctx.out / 'wheels'} (run 'slipway wheels')",
            )
        }
    wheels_model = ctx.config.wheels_model()
    tolerance = ctx.config.smoke.tolerance_for("cpp")
    results: dict[str, records.SmokeResult] = {}
    for wheel in wheels:
        # A model package is checked on its own model; a runtime wheel on the wheels' model.
        import_name = wheel.name.split("-", 1)[0]
        model = ctx.config.model(packages[import_name]) if import_name in packages else wheels_model
        model_dir = ctx.out / "models" / (model.name if model else "")
        key = f"wheel:{wheel.name}"
        ctx.log(f"{wheel.name}: installing into a fresh virtualenv (no torch) and running the golden images")
        started = time.monotonic()
        base = {
            "artifact": key,
            "kind": "wheel",
            "file": wheel.name,
            "sha256": sha256_file(wheel),
            "model": model.name if model else None,
            "runtime": "cpp",
            "tolerance": tolerance.model_dump(),
        }
        if model is None or not (model_dir / "golden" / "reference.json").exists():
            res = {"ok": False, "error": f"no exported model with golden images for the wheels ({model_dir})"}
        else:
            res = smoke_wheel(
                wheel,
                model_dir,
                work=ctx.out / "smoke" / f".wheel-{_safe(wheel.stem)}",
                iou=tolerance.iou,
                score=tolerance.score,
                runtime=runtime,
            )
            if not res["ok"] and "error" not in res:
                bad = [r for r in res.get("per_image", []) if not r["ok"]]
                worst = (
                    f"min IoU {res.get('min_iou', 0):.4f}, max score diff {res.get('max_score_diff', 0):.2e}"
                )
                count = f"{len(bad)} of {res.get('images', 0)} golden image(s)"
                res["error"] = f"{count} differ from the reference ({worst})"
        if res.get("untested") and wheel.parent == ctx.out / "runtime":
            # A runtime wheel this release never publishes, for a Python or architecture this
            # machine lacks (GitHub's one smoke runner gets every Python and both architectures'
            # runtime): its build tested it in its own manylinux container, and the cpp image that
            # installs it is smoke-tested on each platform. Shown as untested, not a failure.
            res = {**res, "ok": True, "published": False}
        results[key] = gate_accuracy(ctx, records.SmokeResult.model_validate(
            {**base, **res, "seconds": round(time.monotonic() - started, 1)}))
    failed = [k for k, r in results.items() if not r.ok]
    results["wheels"] = records.SmokeResult(
        artifact="wheels",
        kind="wheels",
        ok=not failed,
        files={r.file or k: r.sha256 or "" for k, r in results.items() if k.startswith("wheel:")},
        error=("failed: " + ", ".join(failed)) if failed else "",
    )
    return results


# --------------------------------------------------------------------------------------------
# Summary and the cross-runtime table

_SUMMARY_KEYS = (
    "wheel_kind",
    "kind",
    "variant",
    "arch",
    "model",
    "runtime",
    "device",
    "image",
    "image_id",
    "digest",
    "file",
    "sha256",
    "min_iou",
    "max_score_diff",
    "images",
    "map50_vs_ground_truth",
    "accuracy",
    "min_map50",
    "export_inputs",
    "ready_seconds",
    "latency_ms",
    "tolerance",
    "gpu",
    "untested",
    "files",
)


def _summary_entry(res: records.SmokeResult) -> records.SmokeSummaryEntry:
    data = records.dump(res)
    entry = {"ok": res.ok, "error": res.error or ""}
    entry.update({k: data[k] for k in _SUMMARY_KEYS if k in data})
    if res.model_server is not None:
        entry["model_server"] = res.model_server.get("description")
    return records.SmokeSummaryEntry.model_validate(entry)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    value = max(0.0, float(value))
    return "0" if value == 0 else f"{value:.1e}"


def _accuracy_cell(acc: records.JsonObject | None) -> str:
    """``0.912 (0.95 / 0.88)``: mAP@0.5, then precision / recall at the model's score threshold."""
    if not acc:
        return "-"

    def two(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    return f"{acc['map50']:.3f} ({two(acc.get('precision'))} / {two(acc.get('recall'))})"


def _deviation(min_iou: float | None) -> float | None:
    return 1.0 - float(min_iou) if min_iou is not None else None


def image_row_name(variant: str, arch: str | None) -> str:
    """``image <variant>``, with `` (<arch>)`` for a platform other than amd64."""
    return f"image {variant}" + ("" if not arch or arch == PRIMARY_ARCH else f" ({arch})")


def table_rows(out: Path, artifacts: Mapping[str, records.SmokeSummaryEntry]) -> list[records.SmokeTableRow]:
    """Rows: each model's eager reference and in-process exports (model.json), then every tested artifact."""
    Row = records.SmokeTableRow
    rows: list[records.SmokeTableRow] = []
    manifests = {}
    for path in sorted((out / "models").glob("*/model.json")):
        m = records.read(path, records.ModelManifest)
        manifests[m.name] = m
    # Order of the issue: eager, TorchScript, C++ wheel, TensorFlow, ONNX, then the served images.
    order = {"torchscript": 1, "saved_model": 4, "frozen_graph": 5, "onnx": 6}
    in_process: list[tuple[int, records.SmokeTableRow]] = []
    for name, m in manifests.items():
        reference = out / "models" / name / "golden" / "reference.json"
        reference_images = records.read(reference, records.GoldenReference, None)
        count = len(reference_images.images) if reference_images is not None else None
        framework = FRAMEWORK_LABELS.get(m.framework, m.framework)
        in_process.append((
            0 if m.framework == "pytorch" else 3,
            Row(artifact=f"eager ({framework})", model=name, checked_by="reference: golden/reference.json",
                images=count, max_box_deviation=0.0, max_score_diff=0.0,
                accuracy=m.golden.eager_accuracy if m.golden else None, ok=True, note="reference"),
        ))
        for run in m.verification.runs if m.verification else []:
            in_process.append((
                order.get(run.format, 5),
                Row(artifact=FORMAT_LABELS.get(run.format, run.format), model=name,
                    checked_by="export verification, in-process (model.json)", images=run.images,
                    max_box_deviation=_deviation(run.min_iou), max_score_diff=run.max_score_diff, ok=run.ok,
                    tolerance=run.tolerance),
            ))
    for key, a in sorted(artifacts.items()):
        if a.kind == "wheel":
            in_process.append((
                2,
                Row(artifact=("model package " if a.wheel_kind == "model-package" else "C++ wheel ")
                    + str(a.file or key),
                    model=a.model, checked_by=WHEEL_CHECKS.get(a.wheel_kind or "", "slipway smoke"),
                    images=a.images, max_box_deviation=_deviation(a.min_iou), max_score_diff=a.max_score_diff,
                    accuracy=a.accuracy, ok=a.ok, tolerance=a.tolerance,
                    note=("untested here: " if a.untested else "") + (a.error or "")[:120]),
            ))
    rows.extend(r for _, r in sorted(in_process, key=lambda t: t[0]))
    for key, a in sorted(artifacts.items()):
        if a.kind != "image":
            continue
        notes = []
        if a.model_server:
            notes.append(f"model server: {a.model_server}")
        if a.gpu and a.gpu.requested and not a.gpu.exercised:
            notes.append("ran on CPU: GPU path not exercised")
        rows.append(Row(
            artifact=image_row_name(a.variant or key, a.arch),
            model=a.model,
            checked_by=f"slipway smoke: container, runtime {a.runtime or '?'}",
            images=a.images,
            max_box_deviation=_deviation(a.min_iou),
            max_score_diff=a.max_score_diff,
            accuracy=a.accuracy,
            ok=a.ok,
            tolerance=a.tolerance,
            ready_seconds=a.ready_seconds,
            p50_ms=a.latency_ms.p50 if a.latency_ms else None,
            note="; ".join(notes) if a.ok else (a.error or "")[:120],
        ))
    return rows


def table_markdown(rows: list[records.SmokeTableRow], title: str = "") -> str:
    head = [
        "artifact",
        "model",
        "checked by",
        "golden images",
        "mAP@0.5 vs ground truth (precision / recall)",
        "max box deviation (1 - min IoU)",
        "max score diff",
        "tolerance (IoU >=, score <=)",
        "result",
        "notes",
    ]
    lines = [f"# {title}\n" if title else "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tol = r.tolerance
        tol_text = f"{tol.iou}, {tol.score:g}" if tol else "-"
        result = "reference" if r.note == "reference" else ("ok" if r.ok else "**FAILED**")
        notes = "" if r.note == "reference" else (r.note or "")
        if r.p50_ms is not None:
            notes = f"ready {r.ready_seconds} s, p50 {r.p50_ms:.1f} ms" + (
                f"; {notes}" if notes else ""
            )
        cells = [
            r.artifact,
            str(r.model or "-"),
            r.checked_by,
            str(r.images) if r.images is not None else "-",
            _accuracy_cell(r.accuracy),
            _number(r.max_box_deviation),
            _number(r.max_score_diff),
            tol_text,
            result,
            notes.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in lines if line != "") + "\n"


# --------------------------------------------------------------------------------------------


def _artifact_selection(
    ctx: StageContext, artifact: str, variants: list[str] | None
) -> tuple[list[str], bool]:
    """(variants, test the wheels) for ``--artifact image:<variant>`` or ``--artifact wheels``."""
    known = [e.artifact for e in ctx.plan.matrix.smoke]
    if artifact not in known:
        raise ConfigError(f"--artifact {artifact}: not in the plan (planned: {', '.join(known) or 'none'})")
    if variants:
        raise ConfigError("--artifact names what to test; leave out --variant")
    if artifact == "wheels":
        return [], True
    return [artifact.split(":", 1)[1]], False


def summarize(ctx: StageContext, *, drop_wheels: bool = False, gpu_present: bool | None = None) -> records.SmokeSummary:
    """Rebuild ``smoke/summary.json`` and ``smoke/table.md`` from the per-artifact result files."""
    previous = ctx.read("smoke/summary.json", records.SmokeSummary, None)
    artifacts = dict(previous.artifacts) if previous else {}
    if drop_wheels:
        # The wheels folder was tested as a whole: results of wheel files no longer there are gone.
        artifacts = {k: v for k, v in artifacts.items() if not k.startswith("wheel:") and k != "wheels"}
    for key, res in smoke_result_files(ctx.out).items():
        artifacts[key] = _summary_entry(res)
    if gpu_present is None:
        gpu_present = bool(previous and previous.gpu_present) or any(
            a.gpu is not None and a.gpu.available for a in artifacts.values()
        )
    rows = table_rows(ctx.out, artifacts)
    failed = sorted(k for k, a in artifacts.items() if not a.ok)
    summary = records.SmokeSummary(
        ok=not failed,
        failed=failed,
        version=ctx.plan.version,
        sha=ctx.plan.sha,
        gpu_present=gpu_present,
        artifacts=dict(sorted(artifacts.items())),
        table=rows,
    )
    ctx.write("smoke/summary.json", summary)
    title = f"Cross-runtime agreement: {ctx.plan.project} {ctx.plan.version}"
    (ctx.out / "smoke" / "table.md").write_text(table_markdown(rows, title))
    return summary


def run(
    ctx: StageContext,
    variants: list[str] | None = None,
    tfserving: str | None = None,
    wheels: bool | None = None,
    artifact: str | None = None,
    summarize_only: bool = False,
) -> StageResult:
    """Smoke-test the planned images (``variants`` narrows them) and, unless narrowed, the wheels.

    ``artifact`` (``image:<variant>`` or ``wheels``, as in the plan's smoke matrix) tests just that
    one; ``summarize_only`` tests nothing and rebuilds the summary and the table.
    """
    if summarize_only:
        summary = summarize(ctx)
        return {"summary": f"{len(summary.artifacts)} result(s), {len(summary.failed)} failed",
                **records.dump(summary)}
    if artifact:
        variants, wheels = _artifact_selection(ctx, artifact, variants)
    images = image_records(ctx.out)
    planned = [e for e in ctx.plan.matrix.smoke if e.kind == "image"]
    if variants is not None and (variants or artifact):
        unknown = sorted(set(variants) - {e.variant for e in planned})
        if unknown:
            raise ConfigError(f"--variant {', '.join(unknown)}: not in the plan")
        planned = [e for e in planned if e.variant in variants]
    test_wheels = wheels if wheels is not None else not variants
    if tfserving is not None or any(
        e.variant in images and images[e.variant].runtime == "tfserving" for e in planned
    ):
        tfserving_mode(tfserving)  # a wrong --tfserving or SLIPWAY_TFSERVING fails before anything starts
    gpu_present = has_gpu()
    arch = host_arch()
    results: dict[str, records.SmokeResult] = {}
    for entry in planned:
        variant = entry.variant
        if variant not in images:
            res = records.SmokeResult(
                artifact=f"image:{variant}",
                kind="image",
                variant=variant,
                arch=arch,
                ok=False,
                error="no image built for this variant (run 'slipway images')",
            )
            ctx.log(f"{variant}: FAILED: no image built")
        else:
            try:
                record = materialize(ctx, images[variant])
            except CheckError as exc:
                record = None
                failed_image = images[variant]
                res = records.SmokeResult(
                    artifact=f"image:{variant}", kind="image", variant=variant, arch=arch, ok=False, error=str(exc),
                    **{k: getattr(failed_image, k) for k in ("digest", "archive") if getattr(failed_image, k)})
                ctx.log(f"{variant}: FAILED: {exc}")
            if record is not None:
                ctx.log(f"{variant}: smoke test of {record.tag}")
                res = smoke_image(ctx, record, gpu_present=gpu_present, tfserving=tfserving)
                state = "ok" if res.ok else "FAILED"
                detail = f": {res.error}" if not res.ok else ""
                numbers = (f"min IoU {_shown(res.min_iou)}, max score diff {_shown(res.max_score_diff)}, "
                           f"mAP@0.5 {(res.accuracy or {}).get('map50', '-')}")
                ctx.log(f"{variant}: {state} (ready in {_shown(res.ready_seconds)}s, {numbers}){detail}")
        results[smoke_key(res.artifact, arch)] = res
        # Every result gets its file, failures too: the summary is rebuilt from these files. One
        # file per platform: on GitHub the amd64 and arm64 jobs' folders are merged into one.
        ctx.write(f"smoke/{image_stem(variant, arch)}.json", res)
    if test_wheels:
        for stale in [*(ctx.out / "smoke").glob("wheel-*.json"), ctx.out / "smoke" / "wheels.json"]:
            stale.unlink(missing_ok=True)
        for key, res in smoke_wheels(ctx).items():
            results[key] = res
            name = "wheels" if key == "wheels" else f"wheel-{_safe(res.file or key)}"
            ctx.write(f"smoke/{name}.json", res)
            if key != "wheels":
                state = "ok" if res.ok else "FAILED"
                ctx.log(f"{res.file}: {state}{': ' + (res.error or '') if not res.ok else ''}")

    summary = summarize(ctx, drop_wheels=test_wheels, gpu_present=gpu_present)
    rows = summary.table
    ctx.log("cross-runtime table (smoke/table.md):\n" + table_markdown(rows))
    tested = [r for r in rows if r.artifact.startswith(("image ", "C++ wheel", "model package"))]
    if artifact:
        # This job's own rows; the merged table is the release notes' (smoke --summarize).
        mine = {image_row_name(v, arch) for v in (variants or [])}
        tested = [r for r in tested
                  if r.artifact in mine or (test_wheels and r.artifact.startswith(("C++", "model package")))]
    add_summary(f"### Smoke test: {artifact or 'all artifacts'}\n\n" + table_markdown(tested))
    now_failed = [k for k, r in results.items() if not r.ok]
    if now_failed:
        details = "; ".join(f"{k}: {results[k].error or ''}"[:300] for k in now_failed)
        raise CheckError(
            f"smoke test failed for {', '.join(now_failed)} ({details}); details in {ctx.out / 'smoke'}"
        )
    return {"summary": f"{len(results)} artifact(s) answered correctly",
            "results": {key: records.dump(res) for key, res in results.items()}}


def _shown(value: float | None) -> str:
    return "-" if value is None else str(value)
