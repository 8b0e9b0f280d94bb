"""From the rounds of a peer run to its summary: medians per level, memory, and the goals met or missed.

Pure functions over the JSON the runner records, so the report can be rebuilt (and tested) from a
recorded results file.
"""

from __future__ import annotations

from typing import Any

from slipway.benchmark.stats import median

MIB = 1024 * 1024


def round_order(keys: list[str], round_index: int) -> list[str]:
    """The order of the configurations in round ``round_index`` (0-based): rotated by one each round,
    so no server always runs first (a cold machine) or right after the same neighbour."""
    if not keys:
        return []
    shift = round_index % len(keys)
    return keys[shift:] + keys[:shift]


def summarize_config(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, per concurrency: req/s, p50 and p95 latency; memory: the median of each
    round's peak PSS of the process tree under load (``memory_mib``), and of its peak RSS sum
    (``rss_mib``). ``memory_measure`` says how the figure was had: ``pss``, or where a process's
    smaps could not be read, with RSS for it; a run recorded before PSS has ``rss``."""
    by_conc: dict[int, list[dict[str, Any]]] = {}
    for r in rounds:
        for lv in r.get("levels", []):
            by_conc.setdefault(int(lv["concurrency"]), []).append(lv)
    levels = {}
    for conc, lvs in sorted(by_conc.items()):
        ok = [lv for lv in lvs if lv.get("requests")]
        levels[str(conc)] = {
            "rounds": len(lvs),
            "requests_per_s": round(median([lv["requests_per_s"] for lv in lvs]), 1),
            "p50_ms": round(median([lv["latency_ms"]["p50"] for lv in ok]), 2) if ok else None,
            "p95_ms": round(median([lv["latency_ms"]["p95"] for lv in ok]), 2) if ok else None,
            "errors": sum(sum(lv.get("errors", {}).values()) for lv in lvs),
        }
    peaks = [max(r["memory_bytes"]) for r in rounds if r.get("memory_bytes")]
    rss_peaks = [max(r["rss_bytes"]) for r in rounds if r.get("rss_bytes")]
    # Runs recorded before PSS was measured hold the RSS sum in memory_bytes and have no measure.
    measures = sorted({r.get("memory_measure", "rss") for r in rounds if r.get("memory_bytes")})
    ready = [r["ready_s"] for r in rounds if isinstance(r.get("ready_s"), (int, float))]
    return {
        "levels": levels,
        "memory_mib": round(median(peaks) / MIB) if peaks else None,
        "memory_measure": "; ".join(measures) if measures else None,
        "rss_mib": round(median(rss_peaks) / MIB) if rss_peaks else None,
        "ready_s": round(median(ready), 2) if ready else None,
    }


def rate(config: dict[str, Any], conc: int) -> float | None:
    lv = (config.get("summary") or {}).get("levels", {}).get(str(conc))
    return lv["requests_per_s"] if lv else None


def goals(configs: list[dict[str, Any]], concurrency: list[int]) -> list[dict[str, Any]]:
    """Per Slipway image: at or above the best peer's req/s at every concurrency, in less memory
    than every peer? Each comparison names the peer configuration it was made against."""
    peers = [c for c in configs if c["server"] != "slipway" and c.get("summary")]
    out = []
    for c in configs:
        if c["server"] != "slipway" or not c.get("summary"):
            continue
        row: dict[str, Any] = {"key": c["key"], "checks": []}
        for conc in concurrency:
            ranked = [(rate(p, conc), p["key"]) for p in peers if rate(p, conc) is not None]
            mine = rate(c, conc)
            if not ranked or mine is None:
                continue
            best, key = max(ranked)
            row["checks"].append({"what": f"req/s at c={conc}", "slipway": mine, "peer": best, "peer_key": key,
                                  "met": mine >= best, "ratio": round(mine / best, 2) if best else None})
        mems = [(p["summary"]["memory_mib"], p["key"]) for p in peers if p["summary"].get("memory_mib")]
        mine_mem = c["summary"].get("memory_mib")
        if mems and mine_mem:
            least, key = min(mems)
            row["checks"].append({"what": "memory under load (MiB)", "slipway": mine_mem, "peer": least,
                                  "peer_key": key, "met": mine_mem < least,
                                  "ratio": round(mine_mem / least, 2) if least else None})
        row["met"] = all(ch["met"] for ch in row["checks"]) if row["checks"] else None
        out.append(row)
    return out


def detections_equal(check: dict[str, Any] | None) -> str:
    if not check:
        return "not checked"
    if check.get("error"):
        return "error"
    return "equal" if check.get("ok") else "DIFFERENT"
