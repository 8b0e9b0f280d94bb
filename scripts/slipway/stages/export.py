"""``slipway export``: export and verify every model the plan lists into ``models/<model>/``.

Each export is written to a temporary folder and moved into place only when verification
passed. An export whose inputs did not change since the last run is reused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from slipway.context import StageContext
from slipway.errors import BuildError, CheckError, ConfigError
from slipway.fsutil import replace_dir, sha256_file, sha256_tree

FINGERPRINT = ".fingerprint"


def _fingerprint(ctx: StageContext, model: Any) -> str:
    """Everything an export depends on: the model's config, weights, exporter code, version."""
    import model_export

    package = Path(model_export.__file__).parent
    parts = {
        "model": model.model_dump(mode="json", by_alias=True),
        "exporters": ctx.config.exporters_for(model),
        "weights": sha256_file(model.weights) if model.weights.is_file() else "missing",
        "code": sha256_tree([package], base=package.parent),
        "version": ctx.plan["version"],
    }
    return json.dumps(parts, sort_keys=True)


def run(ctx: StageContext, models: list[str] | None = None) -> dict[str, Any]:
    import sys

    from model_export.errors import ExportError
    from model_export.export import export_model

    # A project's own model code (its entry points) lives beside its release.toml.
    if str(ctx.root) not in sys.path:
        sys.path.insert(0, str(ctx.root))

    entries = ctx.plan["matrix"]["export"]
    if models:
        unknown = sorted(set(models) - {e["model"] for e in entries})
        if unknown:
            raise ConfigError(f"--model {', '.join(unknown)}: not in the plan (plan has: "
                              f"{', '.join(e['model'] for e in entries)})")
        entries = [e for e in entries if e["model"] in models]
    root = ctx.out / "models"
    root.mkdir(parents=True, exist_ok=True)
    done, reused, rows = [], [], []
    for entry in entries:
        model = ctx.config.model(entry["model"])
        # Exporters named in the plan win: a workflow may export a subset.
        if entry.get("exporters"):
            model = model.model_copy(update={"exporters": tuple(entry["exporters"].split(","))})
        target = root / model.name
        fingerprint = _fingerprint(ctx, model)
        if (target / FINGERPRINT).exists() and (target / FINGERPRINT).read_text() == fingerprint:
            ctx.log(f"{model.name}: unchanged since the last export, reusing {target}")
            reused.append(model.name)
            rows.extend(_rows(json.loads((target / "model.json").read_text())))
            continue
        tmp = root / f".{model.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        started = time.monotonic()
        ctx.log(f"{model.name}: exporting {', '.join(ctx.config.exporters_for(model))}")
        try:
            manifest = export_model(
                model, tmp, version=ctx.plan["version"], git_commit=ctx.plan["sha"], log=ctx.log
            )
        except ExportError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            failed_check = "verification" in str(exc).lower()
            raise (CheckError if failed_check else BuildError)(str(exc)) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / FINGERPRINT).write_text(fingerprint)
        replace_dir(tmp, target)
        ctx.log(f"{model.name}: exported and verified in {time.monotonic() - started:.1f}s")
        done.append(model.name)
        rows.extend(_rows(manifest))
    if rows:
        ctx.log("verification:\n" + _table(rows))
    summary = f"{len(done)} exported, {len(reused)} reused"
    return {"summary": summary, "exported": done, "reused": reused}


def _rows(manifest: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for run in manifest.get("verification", {}).get("runs", []):
        out.append(
            (
                manifest["name"],
                run.get("format", "?"),
                f"{run.get('min_iou', float('nan')):.4f}",
                f"{run.get('max_score_diff', float('nan')):.2e}",
                "ok" if run.get("ok") else "FAILED",
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
