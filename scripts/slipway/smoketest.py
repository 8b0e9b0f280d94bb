"""Running a served image against the golden images: start, wait for ready, predict, compare.

Shared by ``slipway smoke`` and ``slipway bench``; a container is always removed afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from slipway import services
from slipway.errors import CheckError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    name: str
    url: str
    ready_seconds: float


@contextlib.contextmanager
def run_container(
    image: str,
    *,
    env: dict[str, str] | None = None,
    memory: str = "2g",
    cpus: float = 2.0,
    timeout: float = 120.0,
    logs_to: Path | None = None,
    keep_logs: bool = False,
) -> Iterator[Running]:
    """Start ``image`` with host networking on a free port; yield once /readyz answers 200.

    The container's log is written to ``logs_to`` when startup fails, when the body raises, or
    when ``keep_logs`` is set; the container is removed in every case.
    """
    port = free_port()
    name = f"slipway-smoke-{uuid.uuid4().hex[:10]}"
    args = ["run", "-d", "--name", name, "--network", "host", "--memory", memory, "--cpus", str(cpus),
            "-e", f"PORT={port}", "-e", "HOST=127.0.0.1"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    started = time.monotonic()
    services.docker(*args, image, timeout=60)
    url = f"http://127.0.0.1:{port}"
    failed = True
    try:
        ready = wait_ready(url, name, timeout)
        yield Running(name=name, url=url, ready_seconds=ready - started)
        failed = False
    finally:
        if logs_to is not None and (failed or keep_logs):
            logs = services.docker("logs", name, check=False, timeout=30)
            logs_to.parent.mkdir(parents=True, exist_ok=True)
            logs_to.write_text((logs.stdout or "") + (logs.stderr or ""))
        services.docker("rm", "-f", name, check=False, timeout=60)


def wait_ready(url: str, name: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return time.monotonic()
            last = f"/readyz answered {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        state = services.docker("inspect", "-f", "{{.State.Status}}", name, check=False, timeout=30).stdout.strip()
        if state in ("exited", "dead"):
            raise CheckError(f"container {name} exited before it was ready ({last})")
        time.sleep(0.2)
    raise CheckError(f"container {name} not ready after {timeout:.0f}s ({last})")


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def predict(url: str, model: str, body: bytes, content_type: str = "image/png") -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    r = httpx.post(f"{url}/v1/models/{model}:predict", content=body, headers={"content-type": content_type},
                   timeout=60)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise CheckError(f"predict answered {r.status_code}: {r.text[:300]}")
    return r.json(), elapsed


def check_golden(url: str, model_dir: Path, *, iou: float, score: float) -> dict[str, Any]:
    """Send every golden image; compare with the reference detections and the ground truth."""
    from model_export.compare import compare_detections, mean_average_precision

    manifest = json.loads((model_dir / "model.json").read_text())
    reference = json.loads((model_dir / "golden" / "reference.json").read_text())["images"]
    name = manifest["name"]
    results, latencies, got_all = [], [], []
    for entry in reference:
        body = png_bytes(model_dir / "golden" / entry["file"])
        answer, seconds = predict(url, name, body)
        latencies.append(seconds * 1000)
        got = answer.get("detections", [])
        got_all.append(got)
        cmp = compare_detections(entry["detections"], got, iou=iou, score=score)
        results.append({"file": entry["file"], **cmp.to_json(), "differences": cmp.table()})
    gt = [e["ground_truth"] for e in reference]
    map50, _ = mean_average_precision(gt, got_all, num_classes=len(manifest["labels"]))
    ok = all(r["ok"] for r in results)
    return {
        "ok": ok,
        "model": name,
        "images": len(results),
        "min_iou": min((r["min_iou"] for r in results), default=1.0),
        "max_score_diff": max((r["max_score_diff"] for r in results), default=0.0),
        "map50_vs_ground_truth": map50,
        "latency_ms": {"p50": _pct(latencies, 50), "max": max(latencies, default=0.0)},
        "per_image": results,
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


__all__ = ["Running", "check_golden", "free_port", "io", "predict", "run_container", "wait_ready"]
