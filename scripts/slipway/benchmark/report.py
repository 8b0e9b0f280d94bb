"""The Markdown table and the PNG chart of one bench run.

Both are drawn from a single results.json and say which run and machine it was: numbers from
different runs or machines are never put side by side (``check_same_run`` refuses to).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from slipway.benchmark import grid
from slipway.benchmark.inprocess import LABELS

STAGES = ("decode", "preprocess", "inference", "postprocess")
STAGE_COLOURS = {"decode": "#9aa5b1", "preprocess": "#f0a35e", "inference": "#3d7ab8", "postprocess": "#6cb38a"}


class MixedRunsError(ValueError):
    """Numbers from two runs (or two machines) were about to be shown together."""


def check_same_run(*results: dict[str, Any]) -> None:
    ids = {(r.get("run_id"), r.get("machine", {}).get("fingerprint")) for r in results}
    if len(ids) > 1:
        raise MixedRunsError(f"numbers from different runs or machines cannot be compared: {sorted(map(str, ids))}")


# --------------------------------------------------------------------------------------------
# Markdown


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _mb(n: int | float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:,.1f} MB"


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[: n - 1] + "…"


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]


def machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    libs = m.get("libraries", {})
    lib_text = ", ".join(f"{k} {v}" for k, v in libs.items() if k in (
        "torch", "onnxruntime", "tensorflow", "tensorflow-cpu", "numpy", "pillow", "slipway_runtime"))
    cpus = f"{m.get('usable_cpus')} of {m.get('logical_cpus')} CPUs usable"
    load = m.get("load_average_before")
    load_text = f"; load average {load[0]:.1f} at the start" if load else ""
    return (f"{m.get('cpu_model', '?')}, {cpus}, {m.get('memory_gib', '?')} GiB, {m.get('os', '?')}, "
            f"Python {m.get('python', '?')}; {lib_text}{load_text}")


def busy_note(results: dict[str, Any]) -> str:
    """A warning when other work shared the CPUs: latency (p95 above all) then says more about it.

    Judged by what other processes used while the runtimes were timed; the load average, which
    counts the benchmark itself, only where that was not measured.
    """
    m = results.get("machine", {})
    cpus = m.get("usable_cpus") or m.get("logical_cpus") or 1
    others = [r["other_cpus_while_timed"] for runtimes in results.get("inprocess", {}).get("models", {}).values()
              for r in runtimes.values() if isinstance(r.get("other_cpus_while_timed"), (int, float))]
    if others:
        if max(others) > 0.25:
            return (f"Other processes used up to {max(others):.2f} of the {cpus} CPUs while runtimes were timed: "
                    "those latencies, p95 above all, include waiting for a CPU. Compare runtimes within this "
                    "run only.")
        return ""
    load = m.get("load_average_before")
    if load and load[0] > 0.5 * cpus:
        return (f"The machine was busy before the run (load average {load[0]:.1f} on {cpus} CPUs): latencies, "
                "p95 above all, may include waiting for a CPU. Compare runtimes within this run only.")
    return ""


def markdown(results: dict[str, Any]) -> str:
    s = results.get("settings", {})
    lines = [
        f"## Benchmark: {results.get('project', '')} {results.get('version', '')}",
        "",
        f"Run `{results.get('run_id')}` on {results.get('date')}, commit `{str(results.get('git_commit', ''))[:12]}`, "
        f"machine `{results.get('machine', {}).get('fingerprint')}`: {machine_line(results)}.",
        "Every number on this page comes from this one run on this one machine.",
        "",
    ]
    if busy_note(results):
        lines += [f"> {busy_note(results)}", ""]
    ip = results.get("inprocess", {})
    for model, runtimes in ip.get("models", {}).items():
        lines += [
            f"### In-process latency: {model}",
            "",
            f"Same golden images, {ip.get('threads')} threads, {ip.get('warmup')} warm-up then {ip.get('runs')} timed "
            f"runs per runtime, interleaved in batches of {ip.get('batch')}; milliseconds, p50 per stage.",
            "",
        ]
        rows = []
        notes = []
        for runtime, r in runtimes.items():
            label = LABELS.get(runtime, runtime)
            if not r.get("available"):
                rows.append([label, *(["-"] * 9), "not available: " + _short(r.get("reason", ""), 110), "-"])
                continue
            st = r["stages"]
            cells = [_ms(st[x]["p50"]) for x in STAGES]
            if runtime == "cpp" and r.get("stages_split_by", "").startswith("none"):
                combined = st["preprocess"]["p50"] + st["inference"]["p50"] + st["postprocess"]["p50"]
                cells[1:] = ["in predict", _ms(combined) + " ¹", "in predict"]
                notes.append("¹ the C++ wheel does preprocess, inference and postprocess in one `predict` call and "
                             "reports no split of it; this is the whole call.")
            speed = r.get("speedup_vs_eager", {}).get("p50")
            check = r.get("reference_check", {})
            match = "yes" if check.get("ok") else f"no (min IoU {check.get('min_iou', 0):.3f})"
            if runtime == "eager" and not check.get("ok"):
                notes.append("The eager baseline resizes with PIL (antialiased), not the contract's bilinear "
                             "resize, so its detections differ slightly from the reference.")
            other = r.get("other_cpus_while_timed")
            pipeline = r.get("pipeline", {}).get("p50")
            rows.append([label, *cells, f"**{_ms(r['total']['p50'])}**", _ms(r["total"]["p95"]),
                         _ms(r["total"]["min"]), "-" if pipeline is None else _ms(pipeline),
                         f"{speed:.2f}x" if speed else "-", match, "-" if other is None else f"{other:.2f}"])
            if r.get("pipeline_over_forward"):
                notes.append(f"{label}: image to detections (p50, binding included) is "
                             f"{r['pipeline_over_forward']:.2f}x its model's forward pass alone "
                             f"({_ms(pipeline)} against {_ms(st['inference']['p50'])}).")
        header = ["runtime", "decode", "preprocess", "inference", "postprocess", "total p50", "total p95",
                  "total best", "image → detections p50 ⁴", "speed-up vs eager ⁴", "matches reference",
                  "other load ³"]
        lines += _table(header, rows, "lrrrrrrrrrlr")
        notes.append("³ CPUs used on average by every other process on the machine while this runtime's runs "
                     "were timed (from /proc/stat); with 2 threads on 2 CPUs, torch slows down sharply when "
                     "this is not near 0.")
        notes.append("⁴ from the decoded uint8 image to detections (total less decoding, which is the same PNG "
                     "decoder for every runtime); the speed-up compares these p50s, same run.")
        if notes:
            lines += ["", *dict.fromkeys(notes)]
        lines.append("")

    served = results.get("served", {})
    if served:
        limits = next((f"`--cpus {r['cpus']:g} --memory {r['memory']}`" for r in served.values() if "cpus" in r),
                      "the smoke test's CPU and memory limits")
        lines += ["### Served: latency and throughput per image", "",
                  f"Each container runs with {limits}; a load generator on loopback (same machine, so it "
                  f"competes for the CPUs) sends the golden PNGs for {s.get('served_seconds')} s per concurrency "
                  f"level. Ready: container start to `/readyz` answering 200, median of {s.get('ready_runs')} starts.",
                  ""]
        rows = []
        notes = []
        for variant, r in served.items():
            ready = r.get("ready_s", {}).get("median")
            runtime = r.get("runtime", "-")
            if r.get("external_server"):
                runtime += " ²"
                notes.append(f"² {variant} forwards to an external model server: {r['external_server']}.")
            if not r.get("load"):
                rows.append([variant, runtime, _s(ready), "-", "-", "-", "-", "-", "-",
                             _short(r.get("reason", "not measured"), 100)])
                continue
            for i, load in enumerate(r["load"]):
                lat = load["latency_ms"]
                errors = sum(load["errors"].values())
                cpu = load.get("cpu_ms_per_request")
                memory = load.get("memory_mib")
                if memory is not None and load.get("memory_measure", "pss") != "pss":
                    notes.append(f"⁷ {variant}: memory is {load['memory_measure']} (the processes' smaps could "
                                 "not be read from here).")
                rows.append([variant if i == 0 else "", runtime if i == 0 else "",
                             _s(ready) if i == 0 else "", str(load["concurrency"]), f"{load['requests_per_s']:.1f}",
                             _ms(lat.get("p50")), _ms(lat.get("p95")), "-" if cpu is None else f"{cpu:.2f}",
                             "-" if memory is None else f"{memory:.0f}", str(errors) if errors else "0"])
        lines += _table(["variant", "runtime", "ready (s)", "concurrency", "requests/s", "p50 ms", "p95 ms",
                         "CPU ms / request ⁵", "memory MiB ⁶", "errors"], rows, "llrrrrrrrl")
        if any(load.get("cpu_ms_per_request") is not None for r in served.values() for load in r.get("load", [])):
            notes.append("⁵ CPU time of every process in the container while the level ran, divided by the requests "
                         "sent in that time (its warm-up requests included); the load generator's CPU is not in it.")
            notes.append("⁶ peak PSS of the container's processes during the level, sampled twice a second "
                         "(a page its processes share is counted once across them).")
        if notes:
            lines += ["", *dict.fromkeys(notes)]
        lines.append("")

    lines += grid.markdown(results)

    sizes = results.get("sizes", {})
    if sizes.get("images"):
        lines += ["### Image sizes", "",
                  "Compressed: the sum of each layer gzip-compressed at level 6 from `docker save`, what a pull "
                  "downloads (zlib's level 6 comes out about 3% under the Go gzip of `docker push`). "
                  "Uncompressed: as `docker image inspect` reports it.", ""]
        rows = []
        for variant, r in sizes["images"].items():
            if "compressed_bytes" not in r:
                rows.append([variant, "-", "-", "-", _short(r.get("reason", ""))])
                continue
            largest = "; ".join(f"{_mb(x['size'])} {_layer_label(x['created_by'])}" for x in r["largest_layers"][:2])
            rows.append([variant, _mb(r["compressed_bytes"]), _mb(r["uncompressed_bytes"]), str(r["layer_count"]),
                         largest])
        lines += _table(["image", "compressed", "uncompressed", "layers", "largest layers"], rows, "lrrrl")
        lines.append("")
    if sizes.get("wheels") is not None:
        lines += ["### Wheels", ""]
        if sizes["wheels"]:
            rows = [[w["file"], f"{w['mib']:.1f} MiB", f"{w['limit_mib']:g} MiB",
                     "yes" if w["within_limit"] else "**no**"] for w in sizes["wheels"]]
            lines += _table(["wheel", "size", "index limit", "within"], rows, "lrrl")
        else:
            lines.append("No wheels in this release's output.")
        lines.append("")
    if sizes.get("models"):
        rows = [[model, f["kind"], f["path"], _mb(f["bytes"])] for model, files in sizes["models"].items()
                for f in files]
        lines += ["### Model files", "", *_table(["model", "format", "path", "size"], rows, "lllr"), ""]

    imports = results.get("imports", {})
    if imports:
        rows = []
        for module, r in imports.items():
            if r.get("available"):
                rows.append([f"`import {module}`", f"{r['median_s']:.2f}", f"{r['first_s']:.2f}", str(len(r["runs_s"]))])
            else:
                rows.append([f"`import {module}`", "-", "-", "not available: " + _short(r.get("reason", ""), 80)])
        lines += ["### Import time", "", "Fresh interpreter each time; seconds for the import statement alone.", "",
                  *_table(["import", "median s", "first s", "runs"], rows, "lrrl"), ""]

    checks = results.get("budgets", {}).get("checks", [])
    lines += ["### Budgets", ""]
    if checks:
        rows = []
        for c in checks:
            bound = ">=" if c["unit"] == "x" else "<="
            measured = "-" if c["measured"] is None else f"{c['measured']:g} {c['unit']}".replace(" x", "x")
            status = c["status"] if c["status"] in ("ok", "skipped") else f"**{c['status'].upper()}**"
            rows.append([f"`{c['budget']}`", c["subject"], f"{bound} {c['limit']:g} {c['unit']}".replace(" x", "x"),
                         measured, status, _short(c["note"], 80)])
        lines += _table(["budget", "subject", "limit", "measured", "result", "note"], rows, "llrrll")
    else:
        lines.append("No budgets set in release.toml.")
    lines.append("")
    return "\n".join(lines)


def _layer_label(created_by: str) -> str:
    text = created_by.removesuffix(" # buildkit")
    if text.startswith("Imported from") or text == "(base image)":
        return "base image (imported root filesystem)"
    return f"`{_short(text, 60)}`"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------------------------
# Chart


def chart(results: dict[str, Any], path: Path) -> Path | None:
    """One PNG: latency per runtime (per stage), served throughput, size per image, start-up.
    None where matplotlib (the ``bench`` extra) is not installed: the JSON and the table are enough."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 11, "axes.titleweight": "bold",
                         "axes.spines.top": False, "axes.spines.right": False})
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=110)
    _latency_panel(axes[0][0], results)
    _served_panel(axes[0][1], results)
    _size_panel(axes[1][0], results)
    _startup_panel(axes[1][1], results)
    m = results.get("machine", {})
    fig.suptitle(f"{results.get('project', '')} {results.get('version', '')}: what this release costs",
                 fontsize=14, fontweight="bold", x=0.01, ha="left")
    footer = (f"All numbers from one run, {results.get('run_id')} ({results.get('date')}), on machine "
              f"{m.get('fingerprint')}: {machine_line(results)}. {busy_note(results)}")
    fig.text(0.01, 0.004, "\n".join(textwrap.wrap(footer, 235)[:3]), fontsize=7.5, color="#555555")
    fig.tight_layout(rect=(0, 0.045, 1, 0.97), h_pad=2.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", color="#777777", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _latency_panel(ax, results: dict[str, Any]) -> None:
    ip = results.get("inprocess", {})
    rows = []  # (label, stages p50 dict or None, total p50, total p95, speed-up, reason)
    models = ip.get("models", {})
    for model, runtimes in models.items():
        for runtime, r in runtimes.items():
            label = LABELS.get(runtime, runtime).replace(" (baseline)", "\n(baseline)")
            if len(models) > 1:
                label = f"{model}:\n{label}"
            if r.get("available"):
                stages = {x: r["stages"][x]["p50"] for x in STAGES}
                rows.append((label, stages, r["total"]["p50"], r["total"]["p95"],
                             r.get("speedup_vs_eager", {}).get("p50"), runtime))
            else:
                rows.append((label, None, None, None, None, r.get("reason", "")))
    ax.set_title(f"In-process latency per image, {ip.get('threads', '?')} threads (bars: p50 by stage; "
                 "line: to p95)", loc="left")
    if not rows:
        _empty(ax, "no model measured in this run")
        return
    rows.reverse()
    # The scale follows p50: on a busy machine one p95 can be ten times the p50 and would squash
    # every bar; a p95 beyond the edge is drawn to the edge with an arrow and written out.
    top = max([r[2] for r in rows if r[2]] or [1.0]) * 1.9
    first = next((k for k, r in enumerate(rows) if r[1] is not None), None)
    for i, (_, stages, p50, p95, speed, extra) in enumerate(rows):
        if stages is None:
            ax.text(top * 0.01, i, "not available: " + _short(extra, 75), va="center", color="#777777",
                    fontsize=8, style="italic")
            continue
        left = 0.0
        for stage in STAGES:
            ax.barh(i, stages[stage], left=left, color=STAGE_COLOURS[stage], height=0.55,
                    label=stage if i == first else None)
            left += stages[stage]
        end = min(p95, top * 0.98)
        ax.plot([left, end], [i, i], color="#333333", linewidth=1)
        ax.plot([end], [i], marker=">" if p95 > top else "|", color="#333333", markersize=7)
        text = f"p50 {p50:.1f} ms · p95 {p95:.1f} ms"
        if extra == "eager":
            text += " · baseline"
        elif speed:
            text += f" · {speed:.2f}x eager, image → detections"
        ax.text(left, i + 0.36, text, va="bottom", fontsize=8.5, fontweight="bold",
                ha="right" if left > top * 0.6 else "left")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.1)
    ax.set_xlim(0, top)
    ax.set_xlabel("milliseconds, PNG bytes to detections")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False, ncols=4)


def _served_panel(ax, results: dict[str, Any]) -> None:
    served = {v: r for v, r in results.get("served", {}).items() if r.get("load")}
    ax.set_title("Served: requests per second, by concurrency", loc="left")
    if not served:
        reasons = {r.get("reason", "") for r in results.get("served", {}).values()}
        _empty(ax, "no image served in this run" + (f"\n({_short(next(iter(reasons)), 80)})" if reasons else ""))
        return
    levels = sorted({load["concurrency"] for r in served.values() for load in r["load"]})
    height = 0.8 / len(levels)
    colours = ["#3d7ab8", "#f0a35e", "#6cb38a", "#b86d9a"]
    variants = list(served)[::-1]
    top = max(load["requests_per_s"] for r in served.values() for load in r["load"]) or 1.0
    for j, level in enumerate(levels):
        for i, variant in enumerate(variants):
            load = next((x for x in served[variant]["load"] if x["concurrency"] == level), None)
            if load is None:
                continue
            y = i + ((len(levels) - 1) / 2 - j) * height
            ax.barh(y, load["requests_per_s"], height=height * 0.92, color=colours[j % len(colours)],
                    label=f"concurrency {level}" if i == 0 else None)
            lat = load["latency_ms"]
            ax.text(load["requests_per_s"] + top * 0.01, y,
                    f"{load['requests_per_s']:.0f}/s · p50 {lat.get('p50', 0):.0f} ms · p95 {lat.get('p95', 0):.0f} ms",
                    va="center", fontsize=7.5)
    labels = [v + (" ²" if served[v].get("external_server") else "") for v in variants]
    ax.set_yticks(range(len(variants)), labels)
    ax.set_xlim(0, top * 1.6)
    ax.set_xlabel("requests per second (loopback, same machine)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    if any(r.get("external_server") for r in served.values()):
        ax.text(0.99, 0.99, "² via an external model server; see table.md", transform=ax.transAxes,
                ha="right", va="top", fontsize=7.5, color="#555555")


def _size_panel(ax, results: dict[str, Any]) -> None:
    images = {v: r for v, r in results.get("sizes", {}).get("images", {}).items() if "compressed_bytes" in r}
    limits = {c["subject"]: c["limit"] for c in results.get("budgets", {}).get("checks", [])
              if c["budget"].startswith("budgets.max-image-mb.")}
    ax.set_title("Image size (MB)", loc="left")
    if not images:
        _empty(ax, "no image measured in this run")
        return
    variants = list(images)[::-1]
    top = max([images[v]["uncompressed_bytes"] / 1e6 for v in variants] + [limits.get(v, 0) for v in variants])
    for i, v in enumerate(variants):
        r = images[v]
        un, comp = r["uncompressed_bytes"] / 1e6, r["compressed_bytes"] / 1e6
        ax.barh(i, un, color="#c9d6e3", height=0.6, label="uncompressed" if i == 0 else None)
        ax.barh(i, comp, color="#3d7ab8", height=0.6, label="compressed (gzip, pulled)" if i == 0 else None)
        ax.text(_label_x(un, limits.get(v), top), i, f"  {comp:,.0f} / {un:,.0f}", va="center", fontsize=8.5)
        if v in limits:
            ax.plot([limits[v], limits[v]], [i - 0.4, i + 0.4], color="#c0392b", linewidth=2,
                    label="budget" if v == next(x for x in variants if x in limits) else None)
    ax.set_yticks(range(len(variants)), variants)
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("MB (10^6 bytes)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)


def _label_x(value: float, limit: float | None, top: float) -> float:
    """Where a bar's label starts: at the bar's end, or past a budget marker that would cross it."""
    if limit is not None and value <= limit <= value + 0.15 * top:
        return limit
    return value


def _startup_panel(ax, results: dict[str, Any]) -> None:
    bars: list[tuple[str, float, str, float | None]] = []
    limits = {c["subject"]: c["limit"] for c in results.get("budgets", {}).get("checks", [])
              if c["budget"].startswith("budgets.max-ready-s.")}
    for variant, r in results.get("served", {}).items():
        if r.get("ready_s", {}).get("median") is not None:
            bars.append((f"{variant}: start → ready", r["ready_s"]["median"], "#3d7ab8", limits.get(variant)))
    for module, r in results.get("imports", {}).items():
        if r.get("available"):
            bars.append((f"import {module}", r["median_s"], "#f0a35e", None))
    ax.set_title("Start-up (seconds, median)", loc="left")
    if not bars:
        _empty(ax, "nothing started in this run")
        return
    bars.reverse()
    top = max([b[1] for b in bars] + [b[3] or 0 for b in bars])
    budget_shown = False
    for i, (_, value, colour, limit) in enumerate(bars):
        ax.barh(i, value, color=colour, height=0.6)
        ax.text(_label_x(value, limit, top), i, f"  {value:.2f} s", va="center", fontsize=8.5)
        if limit is not None:
            ax.plot([limit, limit], [i - 0.4, i + 0.4], color="#c0392b", linewidth=2,
                    label="budget" if not budget_shown else None)
            budget_shown = True
    ax.set_yticks(range(len(bars)), [b[0] for b in bars])
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("seconds")
    if budget_shown:
        ax.legend(loc="lower right", fontsize=8, frameon=False)
