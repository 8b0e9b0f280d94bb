"""The load generator: one asyncio loop on loopback, ``concurrency`` clients POSTing the golden PNGs.

Every server gets the same requests: the raw PNG as the body (``content-type: image/png``),
the golden images round-robin. A level runs ``warmup`` seconds unrecorded, then ``seconds``
recorded; a request counts when it answers 200.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from slipway.benchmark.served import check_loopback
from slipway.benchmark.stats import summarize

HEADERS = {"content-type": "image/png"}


async def _level(url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def user(k: int, until: float, record: bool) -> None:
            i = k
            while time.perf_counter() < until:
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=bodies[i % len(bodies)], headers=HEADERS)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                finally:
                    i += concurrency
                if not record:
                    continue
                if r.status_code == 200:
                    latencies.append((time.perf_counter() - t) * 1e3)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1

        if warmup > 0:
            until = time.perf_counter() + warmup
            await asyncio.gather(*(user(k, until, False) for k in range(concurrency)))
            errors.clear()
        started = time.perf_counter()
        await asyncio.gather(*(user(k, started + seconds, True) for k in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "seconds": round(wall, 3),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        "latency_ms": summarize(latencies),
        "errors": errors,
    }


def level(url: str, bodies: list[bytes], *, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    """One load level against ``url`` (loopback only): its rate, latency and errors."""
    check_loopback(url)
    return asyncio.run(_level(url, bodies, concurrency, seconds, warmup))


def detections(url: str, bodies: list[bytes]) -> list[list[dict[str, Any]]]:
    """The detections ``url`` answers for each body, one request at a time."""
    check_loopback(url)
    out = []
    with httpx.Client(timeout=60.0) as client:
        for body in bodies:
            r = client.post(url, content=body, headers=HEADERS)
            r.raise_for_status()
            data = r.json()
            out.append(data["detections"] if isinstance(data, dict) else data)
    return out
