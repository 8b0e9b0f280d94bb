"""The serving grid: which workers x slots x threads (and batching) an image should run with by default.

For each image, ``slipway bench`` starts the container once per grid point with the service's
knobs set (``SLIPWAY_WORKERS``, ``SLIPWAY_SLOTS``, ``SLIPWAY_THREADS``, ``SLIPWAY_BATCH_MAX``,
``SLIPWAY_BATCH_DELAY_MS``), loads it at concurrency 1 and at the target concurrency, and
``choose`` picks the best point by the rule below. The grid is small on purpose:

- every split of the container's CPUs into slots x threads in one process (slots x threads =
  CPUs), and the single-thread single-slot point;
- for runtimes whose service can run worker processes (TorchScript, ONNX Runtime), every split
  into worker processes, each one inference at a time: workers = slots = d, threads = CPUs / d,
  for every divisor d > 1 of the CPUs (each worker holds its own copy of the model);
- for runtimes whose models take a stacked batch, one batching point (one slot with every
  thread, up to ``BATCH_MAX`` images per forward, ``BATCH_DELAY_MS`` to fill it);
- the service's own default for that runtime on those CPUs (``default_parallelism``, the rule of
  serving.limits.default_parallelism), flagged ``"default": True``, so the table shows what the
  measured choice gains over the image left alone.

The rule (``choose``): the highest req/s at the target concurrency among the points whose
single-client latency (p50 at concurrency 1) is within ``LATENCY_TOLERANCE`` (10%) of the best
single-client p50 in the grid; ties (within 2%) go to the point with fewer threads in all, then
without batching, then with fewer worker processes. Throughput is what the defaults are for; the
tolerance stops a gain in throughput being bought with a slower answer for a lone client.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from serving.limits import PROCESS_BACKENDS
from serving.limits import default_parallelism as service_default_parallelism

# Runtimes whose model takes a stacked batch in the service (serving.config.BATCHING_BACKENDS).
BATCHING_RUNTIMES = ("torchscript", "onnx")
# Runtimes whose grid has worker-process points (SLIPWAY_WORKERS > 1): those the service runs in
# worker processes by default.
WORKER_RUNTIMES = PROCESS_BACKENDS
BATCH_MAX = 8
BATCH_DELAY_MS = 2
LATENCY_TOLERANCE = 0.10
THROUGHPUT_TIE = 0.02
KNOBS = ("SLIPWAY_WORKERS", "SLIPWAY_SLOTS", "SLIPWAY_THREADS", "SLIPWAY_BATCH_MAX", "SLIPWAY_BATCH_DELAY_MS")
RULE = (f"the highest req/s at the target concurrency among the points whose p50 at concurrency 1 is within "
        f"{LATENCY_TOLERANCE:.0%} of the grid's best; ties (within {THROUGHPUT_TIE:.0%}) go to fewer threads in "
        "all, then to no batching, then to fewer worker processes.")
LABEL_PREFIX = "dev.slipway.serving."


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def default_parallelism(cpus: int, backend: str, device: str = "cpu",
                        batch_max: int | None = None) -> tuple[int, int, int]:
    """(workers, slots, threads) the service picks when none of its knobs is set: the service's own
    rule (``serving.limits.default_parallelism``), without its memory cap (which only lowers the
    worker count for models too large to copy into every worker)."""
    return service_default_parallelism(cpus, backend, device, batch_max)


def point(slots: int, threads: int, *, workers: int = 1, batch_max: int = 1, batch_delay_ms: int = 0,
          default: bool = False) -> dict[str, Any]:
    """A grid point; ``default`` only when it is the service's own choice."""
    out: dict[str, Any] = {"workers": workers, "slots": slots, "threads": threads, "batch_max": batch_max,
                           "batch_delay_ms": batch_delay_ms}
    if default:
        out["default"] = True
    return out


def knobs(p: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """What the service runs with at a point (the ``default`` flag aside); a point without ``workers`` has 1."""
    return (int(p.get("workers", 1)), int(p["slots"]), int(p["threads"]), int(p.get("batch_max", 1)),
            int(p.get("batch_delay_ms", 0)))


def points(cpus: int, runtime: str, device: str = "cpu") -> list[dict[str, Any]]:
    """The grid for a container with ``cpus`` CPUs (see the module's docstring); the service's default is flagged."""
    cpus = max(1, int(cpus))
    grid = [point(s, cpus // s) for s in _divisors(cpus)]
    if cpus > 1:
        grid.insert(0, point(1, 1))
    if runtime in WORKER_RUNTIMES:
        grid += [point(d, cpus // d, workers=d) for d in _divisors(cpus) if d > 1]
    if runtime in BATCHING_RUNTIMES:
        grid.append(point(1, cpus, batch_max=BATCH_MAX, batch_delay_ms=BATCH_DELAY_MS))
    workers, slots, threads = default_parallelism(cpus, runtime, device)
    default = point(slots, threads, workers=workers)
    for p in grid:
        if knobs(p) == knobs(default):
            p["default"] = True
            break
    else:
        grid.append({**default, "default": True})
    return grid


def env(point: dict[str, Any]) -> dict[str, str]:
    """The service's environment for a grid point (THREADS too, which older services read)."""
    workers, slots, threads, batch_max, delay = knobs(point)
    return {"SLIPWAY_WORKERS": str(workers), "SLIPWAY_SLOTS": str(slots), "SLIPWAY_THREADS": str(threads),
            "THREADS": str(threads), "SLIPWAY_BATCH_MAX": str(batch_max), "SLIPWAY_BATCH_DELAY_MS": str(delay)}


def image_env(point: dict[str, Any]) -> dict[str, str]:
    """What a tuned image sets: the service's knobs only (THREADS is the older name of SLIPWAY_THREADS)."""
    return {k: v for k, v in env(point).items() if k in KNOBS}


def image_labels(point: dict[str, Any], tuned_from: str, cpus: int | None = None) -> dict[str, str]:
    workers, slots, threads, batch_max, delay = knobs(point)
    measured_on = {f"{LABEL_PREFIX}measured-cpus": str(cpus)} if cpus else {}
    return {**measured_on, f"{LABEL_PREFIX}workers": str(workers), f"{LABEL_PREFIX}slots": str(slots),
            f"{LABEL_PREFIX}threads": str(threads), f"{LABEL_PREFIX}batch-max": str(batch_max),
            f"{LABEL_PREFIX}batch-delay-ms": str(delay),
            f"{LABEL_PREFIX}tuned-from": tuned_from, f"{LABEL_PREFIX}rule": "slipway bench grid: " + RULE}


def dockerfile(base: str, point: dict[str, int], tuned_from: str, cpus: int | None = None) -> str:
    """The tuned image: the built image, plus its measured defaults as ENV and LABEL, and nothing else."""
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    env_line = " ".join(f"{k}={v}" for k, v in image_env(point).items())
    label_line = " \\\n      ".join(f"{k}={quote(v)}" for k, v in image_labels(point, tuned_from, cpus).items())
    return f"FROM {base}\nENV {env_line}\nLABEL {label_line}\n"


# The service's names in the ``parallelism`` of /v1/models/<name> for a point's knobs.
REPORTED = {"workers": "workers", "slots": "slots", "threads_per_slot": "threads", "batch_max": "batch_max"}


def reported_differs(point: dict[str, Any], reported: dict[str, Any]) -> str:
    """What the service says it runs with, where that differs from the point it was started at (an
    older service ignores knobs it does not know); empty when it agrees on every knob it reports."""
    wanted = dict(zip(("workers", "slots", "threads", "batch_max"), knobs(point)[:4], strict=True))
    diffs = [f"{ours}={reported[theirs]} (asked {wanted[ours]})" for theirs, ours in REPORTED.items()
             if theirs in reported and str(reported[theirs]) != str(wanted[ours])]
    if wanted["workers"] > 1 and "workers" not in reported:
        diffs.append("no worker processes (it reports none: a service from before SLIPWAY_WORKERS)")
    return ", ".join(diffs)


def untuned_tag(tag: str) -> str:
    """The local tag that keeps the built image once its tag names the tuned one (never pushed)."""
    return f"{tag}-untuned"


def derive_image(base_id: str, tag: str, point: dict[str, int], cpus: int | None = None, log=print) -> str:
    """Build the tuned image from ``base_id`` under ``tag``; returns its ID.

    The built image keeps a local tag (``untuned_tag``): a build resolves FROM by name, and an
    image without a tag would be removed, with it the ID that ``tuned_from`` names.
    """
    import tempfile
    from pathlib import Path

    from slipway import engine

    base_tag = untuned_tag(tag)
    engine.tag(base_id, base_tag)
    with tempfile.TemporaryDirectory(prefix="slipway-tune-") as tmp:
        (Path(tmp) / "Dockerfile").write_text(dockerfile(base_tag, point, base_id, cpus))
        log(f"{tag}: defaults {label(point)} as a layer of ENV and LABEL on {base_id[:19]}")
        return engine.build(Path(tmp), tag, timeout=300)


def label(point: dict[str, Any]) -> str:
    workers, slots, threads, batch_max, delay = knobs(point)
    plural = "s" if threads != 1 else ""
    if workers > 1:
        text = f"{workers} workers x {threads} thread{plural}"
        if slots != workers:
            text += f" ({slots} slots)"
    else:
        text = f"{slots} slot{'s' if slots != 1 else ''} x {threads} thread{plural}"
    if batch_max > 1:
        text += f", batch {batch_max} / {delay} ms"
    return text


def _rate(result: dict[str, Any], conc: int) -> float | None:
    for lv in result.get("load", []):
        if lv.get("concurrency") == conc and lv.get("requests"):
            return float(lv["requests_per_s"])
    return None


def _p50(result: dict[str, Any], conc: int) -> float | None:
    for lv in result.get("load", []):
        if lv.get("concurrency") == conc and lv.get("requests"):
            return float(lv["latency_ms"]["p50"])
    return None


def choose(results: list[dict[str, Any]], target: int, tolerance: float = LATENCY_TOLERANCE) -> dict[str, Any]:
    """The best grid point by the rule in this module's docstring, with the numbers that decided it.

    ``results``: one entry per point, ``{"point": {...}, "load": [load results]}`` (a point that
    failed has ``"reason"`` and no load). Returns ``{"point", "why", "eligible"}``, or
    ``{"point": None, "why": ...}`` when no point was measured at both concurrencies.
    """
    measured = [r for r in results if _rate(r, target) is not None and _p50(r, 1) is not None]
    if not measured:
        return {"point": None, "why": f"no grid point was measured at concurrency 1 and {target}"}
    best_single = min(_p50(r, 1) for r in measured)
    limit = best_single * (1 + tolerance)
    eligible = [r for r in measured if _p50(r, 1) <= limit]
    top = max(_rate(r, target) for r in eligible)
    near = [r for r in eligible if _rate(r, target) >= top * (1 - THROUGHPUT_TIE)]
    near.sort(key=lambda r: (r["point"]["slots"] * r["point"]["threads"], r["point"].get("batch_max", 1) > 1,
                             r["point"].get("workers", 1), -_rate(r, target)))
    pick = near[0]
    why = (f"{label(pick['point'])}: {_rate(pick, target):.0f} req/s at c={target} (best {top:.0f}), "
           f"p50 {_p50(pick, 1):.2f} ms at c=1 (best {best_single:.2f} ms, limit {limit:.2f} ms: "
           f"+{tolerance:.0%})")
    out = {"point": pick["point"], "why": why, "eligible": [label(r["point"]) for r in eligible],
           "requests_per_s": _rate(pick, target), "p50_ms_c1": _p50(pick, 1)}
    default = next((r for r in results if r["point"].get("default")), None)
    if default is not None:
        out["default"] = vs_default(pick, default, target)
    return out


def vs_default(pick: dict[str, Any], default: dict[str, Any], target: int) -> dict[str, Any]:
    """The chosen point against the service's default: each one's numbers and the ratios (chosen / default)."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    got = {"point": default["point"], "requests_per_s": _rate(default, target), "p50_ms_c1": _p50(default, 1),
           "is_chosen": knobs(default["point"]) == knobs(pick["point"])}
    if default.get("reason"):
        got["reason"] = default["reason"]
    got["throughput_ratio"] = ratio(_rate(pick, target), got["requests_per_s"])
    got["p50_ratio"] = ratio(_p50(pick, 1), got["p50_ms_c1"])
    return got


# --------------------------------------------------------------------------------------------
# Where a request's time goes: the service's Server-Timing header and stage histograms

_TIMING = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:;(.*))?$")


def parse_server_timing(header: str) -> dict[str, float]:
    """``read;dur=0.04, decode;dur=1.2`` -> {"read": 0.04, "decode": 1.2} (ms); entries without dur are left out."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        m = _TIMING.match(part)
        if not m:
            continue
        for param in (m.group(2) or "").split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                with contextlib.suppress(ValueError):
                    out[m.group(1)] = float(value.strip('"'))
    return out


_METRIC = re.compile(r'^slipway_stage_seconds_(sum|count)\{([^}]*)\}\s+([0-9.eE+-]+|NaN)$')


def parse_stage_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text -> per stage of ``slipway_stage_seconds``: count, total seconds and the mean in ms."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line.strip())
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        stage = labels.get("stage")
        if stage is None:
            continue
        (sums if m.group(1) == "sum" else counts)[stage] = float(m.group(3))
    return {stage: {"count": int(counts.get(stage, 0)), "sum_s": round(sums[stage], 6),
                    "mean_ms": round(sums[stage] / counts[stage] * 1e3, 4) if counts.get(stage) else None}
            for stage in sums}


def stage_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Mean ms per stage over the requests between two scrapes of the histograms."""
    out: dict[str, float | None] = {}
    for stage, a in after.items():
        b = before.get(stage, {"count": 0, "sum_s": 0.0})
        n = a["count"] - b["count"]
        out[stage] = round((a["sum_s"] - b["sum_s"]) / n * 1e3, 4) if n > 0 else None
    return out


# --------------------------------------------------------------------------------------------
# The table's sections

STAGE_ORDER = ("read", "decode", "preprocess", "infer", "inference", "postprocess", "encode", "total")


def default_text(chosen: dict[str, Any], target: int) -> str:
    """One line: the choice against the default, in req/s at the target and single-client p50."""
    d = chosen["default"]
    if d.get("is_chosen"):
        return f"the default, {label(d['point'])}, is the choice"
    if d.get("throughput_ratio") is None or d.get("p50_ratio") is None:
        return f"{label(chosen['point'])} chosen; the default {label(d['point'])} was not measured" + (
            f" ({d['reason'][:80]})" if d.get("reason") else "")
    return (f"{label(chosen['point'])} chosen over the default {label(d['point'])}: "
            f"{chosen['requests_per_s']:.0f} vs {d['requests_per_s']:.0f} req/s at c={target} "
            f"({d['throughput_ratio']:.2f}x), p50 at c=1 {chosen['p50_ms_c1']:.2f} vs {d['p50_ms_c1']:.2f} ms "
            f"({d['p50_ratio']:.2f}x)")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> list[str]:
    """The per-request breakdown and the grid, for ``bench/table.md``."""
    lines: list[str] = []
    served = results.get("served", {})
    breakdowns = {}
    for variant, r in served.items():
        first = next((lv for lv in r.get("load", []) if lv.get("breakdown_ms") or lv.get("stage_metrics_ms")), None)
        if first:
            breakdowns[variant] = (first["concurrency"], first.get("breakdown_ms") or first.get("stage_metrics_ms"))
    if breakdowns:
        stages = [s for s in STAGE_ORDER if any(s in b for _, b in breakdowns.values())]
        stages += sorted({s for _, b in breakdowns.values() for s in b} - set(stages))
        rows = [[variant, str(conc), *(_f(b.get(s), 3) for s in stages)] for variant, (conc, b) in breakdowns.items()]
        lines += ["### Served: where a request's time goes", "",
                  "Median milliseconds per stage, as the service reports them (its `Server-Timing` header, else "
                  "the `slipway_stage_seconds` histograms), at the lowest concurrency measured.", "",
                  *_table(["image", "concurrency", *stages], rows), ""]
    grid = results.get("grid") or {}
    if grid.get("images"):
        lines += ["### Serving grid: the image's defaults", "",
                  f"Each image served once per grid point ({grid.get('seconds')} s per level, concurrency 1 and "
                  f"{grid.get('target')}). Rule: {grid.get('rule')}", ""]
        rows = []
        for variant, g in grid["images"].items():
            chosen = (g.get("chosen") or {}).get("point")
            if not g.get("points"):
                rows.append([variant, "-", "-", "-", "-", g.get("reason", "not measured")])
                continue
            for i, p in enumerate(g["points"]):
                marks = ["**chosen**"] if chosen is not None and knobs(chosen) == knobs(p["point"]) else []
                if p["point"].get("default"):
                    marks.append("default")
                if p.get("reason"):
                    marks.append(f"failed: {p['reason'][:80]}")
                elif isinstance(p.get("reported"), dict) and reported_differs(p["point"], p["reported"]):
                    marks.append(f"ran with {reported_differs(p['point'], p['reported'])}")
                rows.append([variant if i == 0 else "", label(p["point"]), _f(_rate(p, 1), 0),
                             _f(_rate(p, grid.get("target", 8)), 0), _f(_p50(p, 1)), ", ".join(marks)])
        lines += _table(["image", "workers x slots x threads", "req/s c=1", f"req/s c={grid.get('target')}",
                         "p50 ms c=1", ""], rows)
        compared = [(v, g["chosen"]) for v, g in grid["images"].items()
                    if isinstance(g.get("chosen"), dict) and g["chosen"].get("point") and g["chosen"].get("default")]
        if compared:
            lines += ["", "The chosen point against the service's default (\"default\": what the image runs with "
                      "when none of its knobs is set, on these CPUs):", ""]
            lines += [f"- {v}: {default_text(c, grid.get('target', 8))}" for v, c in compared]
        tuned = [(v, g) for v, g in grid["images"].items() if g.get("tuned_image")]
        if tuned:
            lines += ["", "These images carry their chosen point as defaults: a layer of ENV and LABEL on the "
                      "built image, made by `slipway bench --tune` before smoke, so smoke and this bench ran the "
                      "image as it is published:", ""]
            lines += [f"- {v}: {label(g['chosen']['point'])} (`{g['tuned_image']['id'][:19]}` from "
                      f"`{g['tuned_image']['tuned_from'][:19]}`)" for v, g in tuned]
        lines.append("")
    return lines
