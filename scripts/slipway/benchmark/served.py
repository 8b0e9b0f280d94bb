"""Served latency and throughput of a running image, from a load generator on loopback.

The load generator is one asyncio loop with ``concurrency`` connections (httpx), each sending the
golden PNGs one after another for a fixed time; it shares the machine with the container, which
the results say. Requests go to 127.0.0.1 only. Where the service sends a ``Server-Timing`` header,
the median time of each stage it names (read, decode, preprocess, infer, postprocess, encode) is
kept as the per-request breakdown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from slipway.benchmark.grid import parse_server_timing
from slipway.benchmark.stats import median, summarize

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only talks to loopback, not {host!r}")


async def _load(url: str, model: str, bodies: list[bytes], concurrency: int, seconds: float,
                warmup: int) -> dict[str, Any]:
    endpoint = f"{url}/v1/models/{model}:predict"
    headers = {"content-type": "image/png"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    server_ms: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        # Open every connection and let the service settle before the clock starts.
        await asyncio.gather(*(client.post(endpoint, content=bodies[i % len(bodies)], headers=headers)
                               for i in range(max(warmup, concurrency))))
        started = time.perf_counter()
        deadline = started + seconds

        async def user(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(endpoint, content=bodies[i % len(bodies)], headers=headers)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                finally:
                    i += concurrency
                elapsed = (time.perf_counter() - t) * 1e3
                if r.status_code == 200:
                    latencies.append(elapsed)
                    timing = r.json().get("timing_ms") or {}
                    if isinstance(timing.get("total"), (int, float)):
                        server_ms.append(float(timing["total"]))
                    for stage, ms in parse_server_timing(r.headers.get("server-timing", "")).items():
                        stages.setdefault(stage, []).append(ms)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

        await asyncio.gather(*(user(k) for k in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "seconds": round(wall, 3),
        "requests": len(latencies),
        # Sent before the clock started (not in the rates; in a CPU count taken around the call).
        "warmup_requests": max(warmup, concurrency),
        "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        "latency_ms": summarize(latencies),
        "server_total_ms": summarize(server_ms) if server_ms else None,
        # Median ms per stage from the service's Server-Timing header (None: the service sent none).
        "breakdown_ms": {k: round(median(v), 4) for k, v in stages.items()} or None,
        "errors": errors,
    }


def load_test(url: str, model: str, bodies: list[bytes], *, concurrency: int, seconds: float,
              warmup: int = 4) -> dict[str, Any]:
    """``concurrency`` clients sending ``bodies`` round-robin for ``seconds``; rate and latency."""
    check_loopback(url)
    return asyncio.run(_load(url, model, bodies, concurrency, seconds, warmup))
