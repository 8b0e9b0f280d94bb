"""``slipway smoke``: every artifact must answer the golden images like the original model.

One result file per artifact in ``smoke/``; ``smoke/summary.json`` says whether all passed.
``slipway publish`` reads only that summary.
"""

from __future__ import annotations

import time
from typing import Any

from slipway.context import StageContext
from slipway.errors import CheckError, ConfigError
from slipway.smoketest import check_golden, run_container


def smoke_image(ctx: StageContext, entry: dict[str, Any]) -> dict[str, Any]:
    variant = entry["variant"]
    tolerance = ctx.config.smoke.tolerance_for(entry["runtime"])
    model_dir = ctx.out / "models" / entry["model"]
    result: dict[str, Any] = {"artifact": f"image:{variant}", "kind": "image", "variant": variant,
                              "image": entry["tag"], "image_id": entry["id"], "runtime": entry["runtime"],
                              "tolerance": tolerance.model_dump()}
    started = time.monotonic()
    try:
        with run_container(
            entry["tag"],
            memory=ctx.config.smoke.memory,
            cpus=ctx.config.smoke.cpus,
            timeout=ctx.config.smoke.timeout_s,
            logs_to=ctx.out / "smoke" / f"image-{variant}.log",
        ) as running:
            result["ready_seconds"] = round(running.ready_seconds, 2)
            result.update(check_golden(running.url, model_dir, iou=tolerance.iou, score=tolerance.score))
    except CheckError as exc:
        result.update({"ok": False, "error": str(exc)})
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def run(ctx: StageContext, variants: list[str] | None = None) -> dict[str, Any]:
    images = ctx.read_json("images.json") if (ctx.out / "images.json").exists() else {}
    planned = [e for e in ctx.plan["matrix"]["smoke"] if e["kind"] == "image"]
    if variants:
        unknown = sorted(set(variants) - {e["variant"] for e in planned})
        if unknown:
            raise ConfigError(f"--variant {', '.join(unknown)}: not in the plan")
        planned = [e for e in planned if e["variant"] in variants]
    results: dict[str, dict[str, Any]] = {}
    for entry in planned:
        variant = entry["variant"]
        if variant not in images:
            results[f"image:{variant}"] = {"artifact": f"image:{variant}", "ok": False,
                                           "error": "no image built for this variant (run 'slipway images')"}
            continue
        ctx.log(f"{variant}: smoke test of {images[variant]['tag']}")
        res = smoke_image(ctx, images[variant])
        results[res["artifact"]] = res
        ctx.write_json(f"smoke/image-{variant}.json", res)
        state = "ok" if res["ok"] else "FAILED"
        ctx.log(f"{variant}: {state} (ready in {res.get('ready_seconds', '-')}s, min IoU {res.get('min_iou', '-')}, "
                f"max score diff {res.get('max_score_diff', '-')}){' ' + res.get('error', '') if not res['ok'] else ''}")
    summary_path = ctx.out / "smoke" / "summary.json"
    summary = ctx.read_json("smoke/summary.json") if summary_path.exists() else {"artifacts": {}}
    for key, res in results.items():
        summary["artifacts"][key] = {"ok": res["ok"], "error": res.get("error", ""),
                                     "image_id": res.get("image_id")}
    summary["ok"] = all(a["ok"] for a in summary["artifacts"].values())
    ctx.write_json("smoke/summary.json", summary)
    failed = [k for k, r in results.items() if not r["ok"]]
    if failed:
        raise CheckError(f"smoke test failed for {', '.join(failed)} (details in {ctx.out / 'smoke'})")
    return {"summary": f"{len(results)} artifact(s) answered correctly"}
