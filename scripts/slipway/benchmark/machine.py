"""Which machine and software stack produced a set of numbers, and which run they came from.

Numbers are only comparable within one run on one machine: every results.json carries a run id
and a fingerprint of the machine (hardware, kernel, Python, library versions), and the report
refuses to put two runs side by side.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "onnxruntime", "numpy", "pillow", "tensorflow", "tensorflow-cpu", "httpx", "matplotlib")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None


def cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup (v2), if one is set."""
    text = _read("/sys/fs/cgroup/cpu.max").split()
    if len(text) == 2 and text[0] != "max":
        return round(int(text[0]) / int(text[1]), 2)
    return None


def library_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    out: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out.update(extra or {})
    return out


def machine_info(libraries: dict[str, str] | None = None) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cgroup_cpus": cgroup_cpus(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "libraries": library_versions(libraries),
    }
    # The machine id is hashed: results are published, the id of the machine need not be.
    machine_id = _read("/etc/machine-id").strip() or platform.node()
    identity = {**info, "machine": hashlib.sha256(machine_id.encode()).hexdigest()}
    info["fingerprint"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return info


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_seconds() -> float | None:
    """CPU time all processes on the machine have used so far (the non-idle part of /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def cpus_in_use(seconds: float = 3.0) -> float | None:
    """CPUs the machine's processes keep busy, on average over the next ``seconds``: what other work
    takes now (a load average still carries the last minutes, such as a benchmark that just ended)."""
    before = busy_cpu_seconds()
    time.sleep(seconds)
    after = busy_cpu_seconds()
    return None if before is None or after is None else round(max(0.0, after - before) / seconds, 2)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def new_run() -> dict[str, str]:
    now = dt.datetime.now(dt.timezone.utc)
    return {"run_id": f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}", "date": now.isoformat(timespec="seconds")}
