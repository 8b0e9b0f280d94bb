"""The limits in ``[budgets]`` of release.toml, checked against the results of one bench run.

A budget whose subject was part of this run but could not be measured fails: a release that asks
for a C++ speed-up must show one. A budget whose subject was outside this run (a variant not
selected, a runtime no model in the run uses) is listed as skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OK, EXCEEDED, NOT_MEASURED, SKIPPED = "ok", "exceeded", "not measured", "skipped"


@dataclass(frozen=True)
class Check:
    budget: str  # the key in release.toml, e.g. "budgets.max-image-mb.pytorch-cpu"
    subject: str  # what was measured: a variant, "model/runtime"
    limit: float
    measured: float | None
    unit: str
    status: str
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status in (EXCEEDED, NOT_MEASURED)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _get(budgets: Any, name: str) -> Any:
    return budgets.get(name) if isinstance(budgets, dict) else getattr(budgets, name, None)


def _in_process(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    return results.get("inprocess", {}).get("models", {})


def evaluate(budgets: Any, results: dict[str, Any]) -> list[Check]:
    """Every budget set in ``budgets`` (a BudgetsSpec or its dict) against ``results`` (results.json)."""
    checks: list[Check] = []
    scope_variants = set(results.get("scope", {}).get("variants", []))
    served = results.get("served", {})
    images = results.get("sizes", {}).get("images", {})
    models = _in_process(results)

    for variant, limit in sorted((_get(budgets, "max_image_mb") or {}).items()):
        key = f"budgets.max-image-mb.{variant}"
        if variant not in scope_variants:
            checks.append(Check(key, variant, limit, None, "MB", SKIPPED, "variant not in this run"))
        elif variant not in images or "uncompressed_bytes" not in images[variant]:
            reason = images.get(variant, {}).get("reason", "no image size measured")
            checks.append(Check(key, variant, limit, None, "MB", NOT_MEASURED, reason))
        else:
            mb = images[variant]["uncompressed_bytes"] / 1e6
            checks.append(Check(key, variant, limit, round(mb, 1), "MB", OK if mb <= limit else EXCEEDED,
                                "uncompressed"))

    for runtime, limit in sorted((_get(budgets, "max_p95_ms") or {}).items()):
        key = f"budgets.max-p95-ms.{runtime}"
        subjects = [(m, r[runtime]) for m, r in sorted(models.items()) if runtime in r]
        if not subjects:
            checks.append(Check(key, runtime, limit, None, "ms", SKIPPED, "no model in this run uses this runtime"))
        for model, res in subjects:
            subject = f"{model}/{runtime}"
            if not res.get("available"):
                checks.append(Check(key, subject, limit, None, "ms", NOT_MEASURED, res.get("reason", "")))
                continue
            p95 = res["total"]["p95"]
            checks.append(Check(key, subject, limit, round(p95, 2), "ms", OK if p95 <= limit else EXCEEDED,
                                "in-process p95, decode to detections"))

    min_speedup = _get(budgets, "min_cpp_speedup")
    if min_speedup is not None:
        key = "budgets.min-cpp-speedup"
        subjects = [(m, r) for m, r in sorted(models.items()) if "cpp" in r]
        if not subjects:
            checks.append(Check(key, "cpp", min_speedup, None, "x", SKIPPED, "no PyTorch model in this run"))
        for model, res in subjects:
            subject = f"{model}/cpp"
            cpp, eager = res["cpp"], res.get("eager", {})
            if not cpp.get("available"):
                status = SKIPPED if cpp.get("skipped") else NOT_MEASURED
                checks.append(Check(key, subject, min_speedup, None, "x", status, f"C++ wheel: {cpp.get('reason', '')}"))
            elif not eager.get("available"):
                checks.append(Check(key, subject, min_speedup, None, "x", NOT_MEASURED,
                                    f"eager baseline: {eager.get('reason', '')}"))
            else:
                speedup = (eager.get("pipeline") or eager["total"])["p50"] / (cpp.get("pipeline") or cpp["total"])["p50"]
                checks.append(Check(key, subject, min_speedup, round(speedup, 2), "x",
                                    OK if speedup >= min_speedup else EXCEEDED,
                                    "eager p50 / C++ p50, uint8 image to detections, same run"))

    for variant, limit in sorted((_get(budgets, "max_ready_s") or {}).items()):
        key = f"budgets.max-ready-s.{variant}"
        entry = served.get(variant, {})
        if variant not in scope_variants:
            checks.append(Check(key, variant, limit, None, "s", SKIPPED, "variant not in this run"))
        elif entry.get("skipped"):
            checks.append(Check(key, variant, limit, None, "s", SKIPPED, entry.get("reason", "")))
        elif "ready_s" not in entry:
            checks.append(Check(key, variant, limit, None, "s", NOT_MEASURED, entry.get("reason", "not started")))
        else:
            ready = entry["ready_s"]["median"]
            n = len(entry["ready_s"]["runs"])
            checks.append(Check(key, variant, limit, round(ready, 2), "s", OK if ready <= limit else EXCEEDED,
                                f"median of {n} starts to /readyz"))
    return checks


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:g}{unit}" if unit == "x" else f"{value:g} {unit}"


def table(checks: list[Check], *, failed_only: bool = False) -> str:
    """A plain-text table for the terminal and the CheckError message."""
    rows = [("budget", "subject", "limit", "measured", "result", "note")]
    for c in checks:
        if failed_only and not c.failed:
            continue
        bound = ">= " if c.unit == "x" else "<= "
        rows.append((c.budget, c.subject, bound + _fmt(c.limit, c.unit), _fmt(c.measured, c.unit),
                     c.status.upper() if c.failed else c.status, c.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
