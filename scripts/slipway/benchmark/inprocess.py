"""In-process latency of every runtime, side by side, and import times; one process per runtime.

Each runtime runs in a fresh subprocess (``slipway.benchmark.worker``), one after another, never
two at once: torch, TensorFlow and the C++ runtime (which refuses to load beside torch) never
share a process, and no runtime competes with another for the cores.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.tags import sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from slipway import records
from slipway.benchmark.machine import busy_cpu_seconds
from slipway.benchmark.stats import summarize
from slipway.benchmark.worker import MARKER, STAGES

RUNTIMES = {"pytorch": ("eager", "torchscript", "cpp", "onnx"), "tensorflow": ("tensorflow",)}
LABELS = {
    "eager": "eager PyTorch + PIL/numpy (baseline)",
    "torchscript": "TorchScript from Python",
    "cpp": "C++ wheel (slipway_runtime)",
    "onnx": "ONNX Runtime",
    "tensorflow": "TensorFlow SavedModel",
}
WORKER_TIMEOUT_S = 600
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
IDLE_WINDOW_S = 0.05
IDLE_TIMEOUT_S = 3.0


@dataclass
class Settings:
    threads: int = 2
    warmup: int = 10
    runs: int = 60
    # Small batches, many rounds: outside load, which comes and goes in seconds, then falls on
    # every runtime alike.
    batch: int = 5
    import_repeats: int = 3
    tolerance: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class CppEnv:
    """Where the C++ wheel was unpacked for the benchmark, or why it could not be."""

    wheel: Path | None = None
    site: Path | None = None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.site is not None

    def env(self) -> dict[str, str]:
        assert self.site is not None
        return {"PYTHONPATH": str(self.site)}


def thread_env(threads: int) -> dict[str, str]:
    """Thread counts for every library a worker may load, so none of them takes all cores."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _subprocess_env(extra: dict[str, str] | None, threads: int) -> dict[str, str]:
    env = {**os.environ, **thread_env(threads)}
    for key, value in (extra or {}).items():
        if key == "PYTHONPATH" and env.get("PYTHONPATH"):
            value = os.pathsep.join((value, env["PYTHONPATH"]))
        env[key] = value
    return env


class Worker:
    """One runtime's process; its answers arrive through a reader thread so every wait has a deadline."""

    def __init__(self, spec: dict[str, Any], *, env: dict[str, str] | None, threads: int):
        self.runtime = spec["runtime"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slipway.benchmark.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=_subprocess_env(env, threads),
        )
        self.answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        self.readers = [threading.Thread(target=self._read_stdout, daemon=True),
                        threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self.readers:
            reader.start()
        self.send(spec)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARKER):
                self.answers.put(json.loads(line[len(MARKER):]))
        self.answers.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr = [*self.stderr[-20:], line.rstrip()]

    def send(self, data: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(data) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = WORKER_TIMEOUT_S) -> dict[str, Any]:
        try:
            got = self.answers.get(timeout=timeout)
        except queue.Empty:
            self.close()
            return {"available": False, "error": True, "reason": f"no answer within {timeout:.0f}s"}
        if got is None:
            self.proc.wait(timeout=30)
            tail = " | ".join(self.stderr[-3:])
            return {"available": False, "error": True,
                    "reason": f"worker exited {self.proc.returncode} without an answer: {tail[-400:]}"}
        return got

    def ask(self, data: dict[str, Any], timeout: float = WORKER_TIMEOUT_S) -> dict[str, Any]:
        try:
            self.send(data)
        except (BrokenPipeError, OSError):
            return self.answer(timeout=5)
        return self.answer(timeout)

    def cpu_seconds(self) -> float | None:
        """CPU time of the worker's process so far (all its threads), from /proc."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def wait_idle(self, timeout: float = IDLE_TIMEOUT_S) -> float:
        """Wait until the worker's threads stop using CPU; return the seconds waited.

        An OpenMP runtime keeps its threads spinning for a while after each parallel region: a
        worker that has just answered can still be burning the CPUs the next one is timed on.
        """
        started = time.monotonic()
        last = self.cpu_seconds()
        while last is not None and time.monotonic() - started < timeout:
            time.sleep(IDLE_WINDOW_S)
            now = self.cpu_seconds()
            if now is None or now - last < 0.5 / CLOCK_TICKS:
                break
            last = now
        return time.monotonic() - started

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self.readers:
            reader.join(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def summarize_samples(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Samples -> p50/p95 per stage; the raw totals are kept for anyone who wants to re-plot."""
    out = {"stages": {s: summarize(samples[s]) for s in STAGES}, "total": summarize(samples["total"]),
           "total_samples_ms": samples["total"]}
    if samples.get("pipeline"):
        # Decoded uint8 image to detections (total less decoding), the C++ runtime's target measure.
        out["pipeline"] = summarize(samples["pipeline"])
    return out


def pipeline_p(result: dict[str, Any], q: str) -> float:
    """Image-to-detections time at quantile q (results without it, from older runs: the total)."""
    return (result.get("pipeline") or result["total"])[q]


def add_ratios(runtimes: dict[str, dict[str, Any]], baseline: str = "eager") -> None:
    """Speed-up of each runtime against the baseline of the same model, same run: baseline / runtime."""
    base = runtimes.get(baseline)
    if not base or not base.get("available"):
        return
    for result in runtimes.values():
        if result.get("available"):
            # On the decoded image: every runtime decodes the same PNG with the same library.
            result["speedup_vs_" + baseline] = {
                q: round(pipeline_p(base, q) / pipeline_p(result, q), 3) for q in ("p50", "p95")
            }
    for result in runtimes.values():
        if result.get("available") and result.get("pipeline") and result.get("stages_split_by") == "runtime":
            # The runtime's whole call, binding included, against its model's forward pass alone.
            result["pipeline_over_forward"] = round(
                result["pipeline"]["p50"] / result["stages"]["inference"]["p50"], 3)


def measure_model(model_dir: Path, manifest: records.ModelManifest, settings: Settings, *, eager: dict[str, Any],
                  cpp: CppEnv, log=print, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every runtime that fits the model's framework, interleaved; those that cannot run say why.

    Workers start (load + warm-up) one at a time. Then rounds: each live worker in turn makes one
    batch of timed runs, the order rotating every round, until each has ``settings.runs`` samples.
    """
    name = manifest.name
    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    try:
        for runtime in RUNTIMES.get(manifest.framework, ()):
            if only and runtime not in only:
                continue
            spec = {"runtime": runtime, "model_dir": str(model_dir), "threads": settings.threads,
                    "warmup": settings.warmup,
                    "tolerance": settings.tolerance.get(runtime) or settings.tolerance.get("default") or {}}
            env = None
            reason = ""
            if runtime == "eager":
                reason = eager.get("reason", "")
                spec.update(entry_point=eager.get("entry_point"), weights=eager.get("weights"),
                            sys_path=eager.get("sys_path", []))
            if runtime == "cpp":
                reason = cpp.reason if not cpp.available else ""
                env = cpp.env() if cpp.available else None
            if reason:
                results[runtime] = {"runtime": runtime, "available": False, "reason": reason}
                log(f"{name}: {LABELS[runtime]}: not available: {reason}")
                continue
            log(f"{name}: {LABELS[runtime]}: loading and {settings.warmup} warm-up runs")
            worker = Worker(spec, env=env, threads=settings.threads)
            ready = worker.answer()
            results[runtime] = {"runtime": runtime, "label": LABELS[runtime], **ready}
            if runtime == "cpp" and cpp.wheel is not None:
                results[runtime]["wheel"] = cpp.wheel.name
            if ready.get("available"):
                workers[runtime] = worker
            else:
                worker.close()
                log(f"{name}: {LABELS[runtime]}: not available: {ready.get('reason')}")
        samples = {rt: {s: [] for s in (*STAGES, "total", "pipeline")} for rt in workers}
        idle_waits: dict[str, list[float]] = {rt: [] for rt in workers}
        others: dict[str, list[float]] = {rt: [] for rt in workers}
        rounds = max(1, math.ceil(settings.runs / settings.batch))
        if workers:
            log(f"{name}: {settings.runs} timed runs each of {', '.join(workers)}, interleaved in {rounds} rounds "
                f"({settings.threads} threads)")
        for r in range(rounds):
            n = min(settings.batch, settings.runs - r * settings.batch)
            order = list(workers)
            order = order[r % len(order):] + order[:r % len(order)] if order else order
            for runtime in order:
                busy0, own0, t0 = busy_cpu_seconds(), workers[runtime].cpu_seconds(), time.monotonic()
                got = workers[runtime].ask({"cmd": "run", "n": n})
                busy1, own1, t1 = busy_cpu_seconds(), workers[runtime].cpu_seconds(), time.monotonic()
                if None not in (busy0, own0, busy1, own1) and t1 > t0:
                    # CPUs used by everything else while this runtime was being timed.
                    others[runtime].append(max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0)))
                if "samples_ms" not in got:
                    results[runtime].update(available=False, error=True, reason=got.get("reason", "no samples"))
                    workers.pop(runtime).close()
                    samples.pop(runtime)
                    log(f"{name}: {runtime}: {results[runtime]['reason']}")
                    continue
                for key, values in got["samples_ms"].items():
                    samples[runtime][key].extend(values)
                idle_waits[runtime].append(workers[runtime].wait_idle())
        for runtime, worker in workers.items():
            final = worker.ask({"cmd": "finish"})
            results[runtime].update(final)
            results[runtime].update(summarize_samples(samples[runtime]))
            waits = idle_waits[runtime]
            # How long its threads kept a CPU busy after answering (the next runtime waited for that).
            results[runtime]["busy_after_batch_s"] = {"max": round(max(waits), 3),
                                                      "median": round(statistics.median(waits), 3)}
            if others[runtime]:
                results[runtime]["other_cpus_while_timed"] = round(statistics.fmean(others[runtime]), 2)
            check = final.get("reference_check") or {}
            total = results[runtime]["total"]
            log(f"{name}: {runtime}: p50 {total['p50']:.2f} ms, p95 {total['p95']:.2f} ms; "
                f"matches the reference: {check.get('ok')} (min IoU {check.get('min_iou', float('nan')):.4f})")
    finally:
        for worker in workers.values():
            worker.close()
    add_ratios(results)
    return results


# --------------------------------------------------------------------------------------------
# The C++ wheel


def _wheel_fits(name: str) -> bool:
    """A wheel for this interpreter and this machine (by its file name's tags)."""
    try:
        tags = parse_wheel_filename(name)[3]
    except InvalidWheelFilename:
        return False
    return not tags.isdisjoint(sys_tags())


def find_cpp_wheel(wheels_dir: Path) -> tuple[Path | None, str]:
    """The C++ runtime wheel for this interpreter; prefer a repaired (self-contained) wheel."""
    if not wheels_dir.is_dir():
        return None, f"no {wheels_dir.name}/ folder in the output (run 'slipway wheels')"
    wheels = sorted(wheels_dir.glob("slipway_runtime-*.whl"))
    if not wheels:
        return None, f"no slipway_runtime wheel in {wheels_dir.name}/ (run 'slipway wheels')"
    fitting = [w for w in wheels if _wheel_fits(w.name)]
    if not fitting:
        names = ", ".join(w.name for w in wheels)
        return None, (f"no slipway_runtime wheel for this interpreter (cp{sys.version_info.major}"
                      f"{sys.version_info.minor}, {sys.platform} {platform.machine()}); found: {names}")
    fitting.sort(key=lambda w: ("manylinux" in w.name, w.stat().st_size))
    return fitting[-1], ""


def prepare_cpp(wheels_dir: Path, work_dir: Path, log=print) -> CppEnv:
    """Unpack the wheel into a folder of its own, put on PYTHONPATH only for the C++ worker.

    pip installs it with ``--no-deps --target``: nothing from an index, nothing in the host's
    environment changes. Whether it imports is the worker's business, which reports the error.
    """
    wheel, reason = find_cpp_wheel(wheels_dir)
    if wheel is None:
        return CppEnv(reason=reason)
    site = work_dir / "cpp-site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
           str(wheel)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        # pip missing from the environment: a wheel is a zip whose root is the install layout.
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(site)
        except (zipfile.BadZipFile, OSError) as exc:
            return CppEnv(wheel=wheel, reason=f"cannot unpack {wheel.name}: {exc}; pip said: {res.stderr[-300:]}")
    log(f"C++ runtime: {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB) unpacked for the benchmark")
    return CppEnv(wheel=wheel, site=site)


# --------------------------------------------------------------------------------------------
# Import times


def import_time(module: str, *, env: dict[str, str] | None = None, repeats: int = 3,
                threads: int = 2) -> dict[str, Any]:
    """Seconds for ``import <module>`` in fresh interpreters (interpreter start-up not counted)."""
    code = ("import time; t = time.perf_counter(); import " + module +
            "; print('IMPORT_SECONDS', time.perf_counter() - t)")
    runs: list[float] = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=_subprocess_env(env, threads), timeout=300)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("IMPORT_SECONDS ")), None)
        if proc.returncode != 0 or line is None:
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
            return {"module": module, "available": False, "reason": f"import failed: {tail[-300:]}"}
        runs.append(round(float(line.split()[1]), 4))
    return {"module": module, "available": True, "runs_s": runs, "median_s": round(statistics.median(runs), 4),
            "first_s": runs[0]}
