"""``slipway export``: export and verify every model the plan lists into ``models/<model>/``.

Each export is written to a temporary folder and moved into place only when verification
passed. An export whose inputs did not change since the last run is reused; its inputs
(``export_inputs``: config, weights, the project's model code, golden data, exporter code,
Slipway's version) are recorded in ``model.json`` so that later stages can tell a stale export.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from slipway import records
from slipway.context import StageContext, StageResult
from slipway.errors import BuildError, CheckError, ConfigError
from slipway.fsutil import replace_dir, sha256_file, sha256_tree

FINGERPRINT = ".fingerprint"


def code_location(module: str, root: Path) -> tuple[str, Path | None]:
    """The project code a ``module`` stands for: ``("package", folder)`` when its top-level
    package is a folder inside the project ``root``, else ``("module", file)`` for the module's own
    file (``None`` when it cannot be found). A project's own package is found without importing it."""
    import importlib.machinery
    import importlib.util

    top = module.split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, [str(root)])
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))).resolve()
        if folder.is_relative_to(root.resolve()):
            return "package", folder
    if spec is not None and spec.origin and Path(spec.origin).is_file() and top == module:
        return "module", Path(spec.origin).resolve()
    # Elsewhere (installed, editable, or a package outside the project folder): the module's own
    # file, as the import system finds it (this imports its parent packages, never the module).
    try:
        found = importlib.util.find_spec(module)
    except Exception:
        found = None
    if found is None or not found.origin or not Path(found.origin).is_file():
        return "module", None
    return "module", Path(found.origin).resolve()


def _code_hash(module: str, root: Path) -> str:
    kind, path = code_location(module, root)
    if path is None:
        return f"{module}: not found"
    return f"{kind} {path.name}: " + sha256_tree([path], base=path.parent)


def export_inputs(ctx: StageContext, model: Any) -> dict[str, str]:
    """Everything an export depends on, one hash (or value) per part: the model's config, its
    weights, the project's model code (the package of the entry point, or its module file), the
    golden data (the COCO folder and file, or the hook's code), the exporters' code and Slipway's
    version. Recorded in ``model.json`` (``inputs``); a change to any part re-exports, and
    ``slipway publish`` refuses an export whose parts no longer match (see ``stale_parts``)."""
    import model_export
    import slipway

    package = Path(model_export.__file__).parent
    golden = model.golden
    if golden.hook:
        golden_hash = _code_hash(golden.hook.partition(":")[0], ctx.root)
    else:
        golden_hash = "".join(
            sha256_tree([p], base=p.parent) for p in (golden.images, golden.annotations) if p is not None and p.exists()
        )
    # Paths by their place in the project, not on this machine: another checkout of the same
    # commit (a later GitHub job) must compute the same inputs.
    places = {k: os.path.relpath(getattr(golden, k), ctx.root) for k in ("images", "annotations") if getattr(golden, k)}
    config = json.dumps(
        # Exporters as the plan resolves them: an unset list and the framework's default are one.
        {"model": model.model_dump(mode="json", by_alias=True, exclude={"weights", "golden", "exporters"}),
         "golden": {**golden.model_dump(mode="json", exclude={"images", "annotations"}), **places},
         "exporters": ctx.config.exporters_for(model)},
        sort_keys=True,
    )
    return {
        "config": hashlib.sha256(config.encode()).hexdigest(),
        "weights": sha256_file(model.weights) if model.weights.is_file() else "missing",
        "model_code": _code_hash(model.entry_point.partition(":")[0], ctx.root),
        "golden": golden_hash,
        "exporter_code": sha256_tree([package], base=package.parent),
        "slipway": slipway.__version__,
        # model.json carries the release version, so a new version exports anew; the model does
        # not depend on it, so publish does not hold it against an export (see stale_parts).
        "release_version": ctx.plan.version,
    }


def _fingerprint(ctx: StageContext, model: Any) -> str:
    return json.dumps(export_inputs(ctx, model), sort_keys=True)


def stale_parts(ctx: StageContext, model: Any, model_dir: Path,
                ignore: tuple[str, ...] = ("release_version",)) -> list[str]:
    """The inputs of ``model`` that changed since ``model_dir`` was exported (empty: current).

    Read from ``model.json`` rather than the ``.fingerprint`` file: the manifest travels with the
    export everywhere (GitHub artifacts drop hidden files), and it is what the wheels and images
    were built from. An export that records no inputs is stale as a whole."""
    manifest_path = model_dir / "model.json"
    if not manifest_path.is_file():
        return ["no export"]
    recorded = records.read(manifest_path, records.ModelManifest).inputs
    if recorded is None:
        return ["export records no inputs"]
    current = export_inputs(ctx, model)
    return sorted(k for k in current.keys() | recorded.keys()
                  if k not in ignore and current.get(k) != recorded.get(k))


def run(ctx: StageContext, models: list[str] | None = None) -> StageResult:
    from model_export.errors import ExportError, VerificationError
    from model_export.export import export_model

    # A project's own model code (its entry points) lives beside its release.toml.
    if str(ctx.root) not in sys.path:
        sys.path.insert(0, str(ctx.root))

    entries = ctx.plan.matrix.export
    if models:
        unknown = sorted(set(models) - {e.model for e in entries})
        if unknown:
            raise ConfigError(f"--model {', '.join(unknown)}: not in the plan (plan has: "
                              f"{', '.join(e.model for e in entries)})")
        entries = [e for e in entries if e.model in models]
    root = ctx.out / "models"
    root.mkdir(parents=True, exist_ok=True)
    done, reused, rows = [], [], []
    for entry in entries:
        model = ctx.config.model(entry.model)
        # Exporters named in the plan win: a workflow may export a subset.
        if entry.exporters:
            model = model.model_copy(update={"exporters": tuple(entry.exporters.split(","))})
        target = root / model.name
        fingerprint = _fingerprint(ctx, model)
        if (target / FINGERPRINT).exists() and (target / FINGERPRINT).read_text() == fingerprint:
            ctx.log(f"{model.name}: unchanged since the last export, reusing {target}")
            reused.append(model.name)
            rows.extend(_rows(records.read(target / "model.json", records.ModelManifest)))
            continue
        tmp = root / f".{model.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        started = time.monotonic()
        ctx.log(f"{model.name}: exporting {', '.join(ctx.config.exporters_for(model))}")
        try:
            made = export_model(model, tmp, version=ctx.plan.version, git_commit=ctx.plan.sha, log=ctx.log)
        except ExportError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise (CheckError if isinstance(exc, VerificationError) else BuildError)(str(exc)) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The exporter's manifest, checked against the record's model, with what the export depends on.
        manifest = records.parse(tmp / "model.json", {**made, "inputs": json.loads(fingerprint)},
                                 records.ModelManifest)
        records.write(tmp / "model.json", manifest)
        (tmp / FINGERPRINT).write_text(fingerprint)
        replace_dir(tmp, target)
        ctx.log(f"{model.name}: exported and verified in {time.monotonic() - started:.1f}s")
        done.append(model.name)
        rows.extend(_rows(manifest))
    if rows:
        ctx.log("verification:\n" + _table(rows))
    summary = f"{len(done)} exported, {len(reused)} reused"
    return {"summary": summary, "exported": done, "reused": reused}


def _rows(manifest: records.ModelManifest) -> list[tuple[str, ...]]:
    out = []
    for run in manifest.verification.runs if manifest.verification else []:
        out.append(
            (
                manifest.name,
                run.format,
                f"{run.min_iou if run.min_iou is not None else float('nan'):.4f}",
                f"{run.max_score_diff if run.max_score_diff is not None else float('nan'):.2e}",
                "ok" if run.ok else "FAILED",
            )
        )
    return out


def _table(rows: list[tuple[str, ...]]) -> str:
    header = ("model", "format", "min IoU", "max score diff", "result")
    allrows = [header, *rows]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in allrows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
