"""``peers.md`` and ``peers.svg`` from one ``peers.json``: the table, the goals, the settings and the machine.

The chart is plain SVG written here (grouped bars of req/s per concurrency, and memory), so the
report needs nothing beyond the standard library.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from slipway.benchmark.peers.results import detections_equal, rate

COMMAND = "make bench-peers"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _level(config: dict[str, Any], conc: int, key: str) -> float | None:
    lv = (config.get("summary") or {}).get("levels", {}).get(str(conc))
    return lv.get(key) if lv else None


def machine_text(data: dict[str, Any]) -> list[str]:
    m = data.get("machine", {})
    s = data.get("settings", {})
    libs = m.get("libraries", {})
    load = m.get("load_average_before")
    return [
        f"- CPU: {m.get('cpu_model', '?')}, {m.get('logical_cpus', '?')} logical CPUs "
        f"({m.get('usable_cpus', '?')} usable), {m.get('memory_gib', '?')} GiB memory",
        f"- OS: {m.get('os', '?')}; Python {m.get('python', '?')}; Java: {m.get('java') or 'none'}",
        f"- Libraries (in every peer's virtualenv and in Slipway's images): torch {libs.get('torch', '?')}, "
        f"numpy {libs.get('numpy', '?')}, pillow {libs.get('pillow', '?')}",
        f"- Servers pinned to CPUs {s.get('server_cpus', '?')}; load generator: "
        + (f"CPUs {s['client_cpus']}" if str(s.get("client_cpus", "")[:1]).isdigit() else "shared with the servers"),
        *([f"- CPUs in use by other work in the 3 s before the start: {m['cpus_in_use_before']}"]
          if m.get("cpus_in_use_before") is not None else []),
        f"- Load average at the start: {' '.join(str(x) for x in load) if load else '?'}; "
        f"at the end: {' '.join(str(x) for x in m.get('load_average_after') or []) or '?'}",
        f"- Run {data.get('run_id', '?')} ({data.get('date', '?')}), machine fingerprint {m.get('fingerprint', '?')}, "
        f"{data.get('seconds_total', 0) / 60:.1f} minutes",
    ]


BUSY_SHARE = 0.25


def busy_note(data: dict[str, Any]) -> str:
    """A warning when the machine had other work at the start: other processes using more than a
    quarter of its CPUs in the seconds before the run (a run recorded without that measurement: a
    1-minute load average above half its CPUs). The load at the end is the benchmark's own."""
    m = data.get("machine", {})
    cpus = m.get("usable_cpus") or m.get("logical_cpus") or 1
    in_use = m.get("cpus_in_use_before")
    before = m.get("load_average_before")
    if in_use is not None:
        busy, what = in_use > cpus * BUSY_SHARE, f"{in_use:.2f} of {cpus} CPUs in use just before the start"
    else:
        busy = bool(before) and before[0] > cpus / 2
        what = f"load average {before[0]:.1f} on {cpus} CPUs at the start" if before else ""
    if busy:
        return (f"**The machine was busy** ({what}): other work competed for the CPUs, so these numbers show "
                "that the benchmark runs, not how the servers compare. Run it on a quiet machine for a result.")
    return ""


def recorded_as_rss(configs: list[dict[str, Any]]) -> bool:
    """A run recorded before PSS was measured: every memory figure is an RSS sum (the report says so once)."""
    measured = [(c.get("summary") or {}) for c in configs if (c.get("summary") or {}).get("memory_mib") is not None]
    return bool(measured) and all((m.get("memory_measure") or "rss") == "rss" for m in measured)


def markdown(data: dict[str, Any]) -> str:
    s = data.get("settings", {})
    conc = [int(c) for c in s.get("concurrency", [1, 8])]
    top = max(conc)
    configs = data.get("configs", [])
    project = data.get("project")
    rss_run = recorded_as_rss(configs)
    lines = [
        "# Slipway against TorchServe, LitServe and BentoML" + (f": {project}" if project else ""),
        "",
        f"The same exported TorchScript model ({data.get('model', '?')}), the same golden PNGs, the same "
        "pre/postprocessing (Slipway's `model_export` inside every peer's handler), every server pinned to the "
        f"same CPUs ({s.get('server_cpus', '?')}), one load generator on loopback; {s.get('warmup_s')} s warm-up "
        f"then {s.get('seconds')} s per concurrency level, {s.get('rounds')} interleaved rounds, medians. " +
        (f"Memory: the peak RSS sum of the server's whole process tree during the c={top} level (median over "
         "rounds); this run is from before PSS was measured, and the RSS sum counts the pages that the processes "
         "of a multi-process server share once per process. " if rss_run else
         f"Memory: the peak PSS of the server's whole process tree during the c={top} level (median over rounds); "
         "PSS charges a page shared by several processes to each in part, so shared libraries and the "
         "copy-on-write pages of forked workers count once, where the RSS sum (beside it) counts them once "
         "per process. ") +
        "Detections: each server's answers on the golden images against the export's reference (the smoke "
        "test's tolerance) and against the first Slipway image's answers. "
        f"Written by `{data.get('command') or COMMAND}` from one run; the numbers are in `peers.json`.",
        "",
    ]
    header = ["server", "settings"] + [f"req/s c={c}" for c in conc] + [f"p50 ms c={c}" for c in conc] + [
        *(["memory under load (RSS sum)"] if rss_run else ["memory under load (PSS)", "RSS sum"]), "detections"]
    lines += ["| " + " | ".join(header) + " |",
              "|---|---|" + "---:|" * (len(header) - 3) + "---|"]
    best = {c: max((rate(x, c) or 0) for x in configs) for c in conc}
    for c in configs:
        cells = [c["label"], _settings_cell(c)]
        for k in conc:
            value = rate(c, k)
            text = _num(value)
            cells.append(f"**{text}**" if value is not None and value == best[k] and value > 0 else text)
        cells += [_num(_level(c, k, "p50_ms"), 2) for k in conc]
        summary = c.get("summary") or {}
        if rss_run:
            cells.append(f"{summary['memory_mib']} MiB" if summary.get("memory_mib") is not None else "-")
        else:
            cells.append(_memory_cell(summary))
            cells.append(f"{summary['rss_mib']} MiB" if summary.get("rss_mib") is not None else "-")
        cells.append(detections_equal(c.get("check")))
        lines.append("| " + " | ".join(cells) + " |")
    failures = [(c["key"], f) for c in configs for f in c.get("failures", [])]
    if failures:
        lines += ["", "Failures:", *(f"- {k}: {f}" for k, f in failures)]
    note = busy_note(data)
    if note:
        lines += ["", note]
    lines += ["", "## Goals", "",
              "Each Slipway image against the best peer configuration at every concurrency (req/s at or above it) "
              "and against the peer with the least memory (below it):", ""]
    for g in data.get("goals", []):
        parts = [f"{ch['what']}: {_num(ch['slipway'])} vs {_num(ch['peer'])} ({ch['peer_key']}, "
                 f"{ch['ratio']}x) {'met' if ch['met'] else 'MISSED'}" for ch in g["checks"]]
        verdict = "no peer measured" if not parts else "all met" if g["met"] else "missed"
        lines.append(f"- {g['key']}: {verdict}" + (f"; {'; '.join(parts)}" if parts else ""))
    if not data.get("goals"):
        lines.append("- no Slipway image was measured in this run")
    lines += ["", "## Settings", ""]
    for c in configs:
        actual = c.get("actual") or {}
        detail = ", ".join(f"{k}={v}" for k, v in actual.items() if k not in ("image", "parallelism"))
        where = f" `{actual['image']}`" if actual.get("image") else ""
        said_parts = [f"ran with {detail}"] if detail else []
        if isinstance(actual.get("parallelism"), dict):
            said_parts.append(f"the service reports {parallelism_text(actual['parallelism'])}")
        lines.append(f"- {c['key']}: {c['settings']}{where}" + (f" ({'; '.join(said_parts)})" if said_parts else ""))
    peers = s.get("peers", {})
    lines += ["", "Peers, each in its own virtualenv: " + ", ".join(f"{k} {v}" for k, v in peers.items()) + ".",
              "", "## Machine", "", *machine_text(data), ""]
    return "\n".join(lines)


def parallelism_text(p: dict[str, Any]) -> str:
    """The service's own account of how it runs (``parallelism`` of /v1/models/<name>), in words."""
    workers, slots, threads = p.get("workers") or 1, p.get("slots"), p.get("threads_per_slot")
    if workers > 1:
        text = f"{workers} worker processes x {threads} thread{'s' if threads != 1 else ''}"
    else:
        text = f"{slots} slot{'s' if slots != 1 else ''} x {threads} thread{'s' if threads != 1 else ''}"
    if (p.get("batch_max") or 1) > 1:
        text += f", batch {p['batch_max']}, {p.get('batch_delay_ms') or 0} ms delay"
    return text


def _memory_cell(summary: dict[str, Any]) -> str:
    """The memory figure; where it is not PSS alone (a process's smaps unreadable, an older run), how it was had."""
    mem = summary.get("memory_mib")
    if mem is None:
        return "-"
    measure = summary.get("memory_measure") or "rss"  # a run recorded before PSS was measured
    return f"{mem} MiB" if measure == "pss" else f"{mem} MiB ({measure})"


def _settings_cell(c: dict[str, Any]) -> str:
    actual = c.get("actual") or {}
    if c["server"] == "slipway" and isinstance(actual.get("parallelism"), dict):
        return parallelism_text(actual["parallelism"])
    if c["server"] == "slipway":
        keys = [k for k in ("SLIPWAY_WORKERS", "SLIPWAY_SLOTS", "SLIPWAY_THREADS", "SLIPWAY_BATCH_MAX", "THREADS")
                if k in actual]
        return ", ".join(f"{k.removeprefix('SLIPWAY_').lower()} {actual[k]}" for k in keys) or "image defaults"
    parts = []
    if "workers" in actual:
        parts.append(f"{actual['workers']} worker{'s' if actual['workers'] != 1 else ''} x {actual.get('threads', '?')}"
                     f" thread{'s' if actual.get('threads') != 1 else ''}")
    if actual.get("batch_max", 1) > 1:
        parts.append(f"batch {actual['batch_max']}, {actual.get('batch_delay_ms', 0)} ms delay")
    return ", ".join(parts) or c["settings"]


# --------------------------------------------------------------------------------------------
# SVG

COLOURS = ("#3d7ab8", "#f0a35e", "#6cb38a", "#9aa5b1")


def svg(data: dict[str, Any]) -> str:
    """Horizontal bars: req/s at each concurrency (left) and memory under load (right), per configuration."""
    conc = [int(c) for c in data.get("settings", {}).get("concurrency", [1, 8])]
    configs = [c for c in data.get("configs", []) if c.get("summary")]
    label_w, panel_w, gap, bar_h, pad = 340, 340, 40, 12, 6
    row_h = bar_h * len(conc) + pad * 2
    top, width = 56, label_w + panel_w * 2 + gap + 30
    height = top + row_h * max(1, len(configs)) + 40
    rates = [rate(c, k) or 0 for c in configs for k in conc]
    mems = [c["summary"].get("memory_mib") or 0 for c in configs]
    max_rate, max_mem = max([*rates, 1]), max([*mems, 1])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(_title(data))}</text>',
           f'<text x="{label_w}" y="44">requests per second (higher is better)</text>',
           f'<text x="{label_w + panel_w + gap}" y="44">memory under load ({"RSS sum" if recorded_as_rss(configs) else "PSS"}), MiB '
           '(lower is better)</text>']
    for i, c in enumerate(configs):
        y0 = top + i * row_h
        if i % 2 == 0:
            out.append(f'<rect x="0" y="{y0}" width="{width}" height="{row_h}" fill="#f4f6f8"/>')
        name = c["label"] + ("" if c["server"] == "slipway" else f" ({_settings_cell(c)})")
        weight = ' font-weight="bold"' if c["server"] == "slipway" else ""
        out.append(f'<text x="10" y="{y0 + row_h / 2 + 4:.0f}" font-size="11"{weight}>{escape(name[:52])}</text>')
        for j, k in enumerate(conc):
            value = rate(c, k) or 0
            w = panel_w * 0.85 * value / max_rate
            y = y0 + pad + j * bar_h
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{COLOURS[j % 4]}"/>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}" font-size="10">{value:,.0f}</text>')
        mem = c["summary"].get("memory_mib") or 0
        w = panel_w * 0.85 * mem / max_mem
        x = label_w + panel_w + gap
        out.append(f'<rect x="{x}" y="{y0 + pad}" width="{w:.1f}" height="{bar_h * len(conc) - 2}" fill="#8c6bb1"/>')
        out.append(f'<text x="{x + w + 4:.1f}" y="{y0 + row_h / 2 + 4:.0f}" font-size="10">{mem:,}</text>')
    ly = height - 16
    for j, k in enumerate(conc):
        out.append(f'<rect x="{label_w + j * 90}" y="{ly - 9}" width="10" height="10" fill="{COLOURS[j % 4]}"/>')
        out.append(f'<text x="{label_w + j * 90 + 14}" y="{ly}">c={k}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _title(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    s = data.get("settings", {})
    return (f"{data.get('model', '?')}: same model, same CPUs ({s.get('server_cpus', '?')}), "
            f"medians of {s.get('rounds', '?')} rounds; {m.get('cpu_model', '?')}")
