"""Inference worker processes: for runtimes whose pre- and postprocessing run in Python.

A TorchScript module or an ONNX Runtime session runs concurrent inferences on one loaded model,
but decoding, preprocessing and postprocessing in Python hold the interpreter's lock; with the
web server's own Python on the same lock, slots on threads stop scaling at about 1.1x one
client's throughput (measured on 2 CPUs: 227 req/s at 8 clients against 187 at one). Here each
slot is a process of its own, with its own copy of the model, running one inference at a time:
the service's process keeps the HTTP side, admission, metrics and every protocol; a worker gets
the encoded image and sends back its detections and stage timings.

Workers are forked from a fork server that imported the framework once, so the framework's
pages are shared between them (copy-on-write) and a worker that dies is replaced without
forking the multi-threaded service process. A worker ignores SIGINT and ends when the
service's end of its pipe closes.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.backends.base import ERROR, READY, Backend, BackendError, BackendUnavailable, Detection
from serving.images import ImageRejected

log = logging.getLogger("serving.workers")

# What the fork server imports once for every worker, per backend (a module that is missing is
# skipped by the fork server; the worker then imports it itself).
PRELOAD = {
    "torchscript": ("torch", "serving.backends.torchscript"),
    "onnx": ("onnxruntime", "serving.backends.onnx"),
    "cpp": ("serving.backends.cpp",),
    "tensorflow": ("tensorflow", "serving.backends.tensorflow"),
}
# Seconds a replacement worker may take to load and warm up before the service gives up on it.
RESTART_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to build its backend (picklable)."""

    backend: str
    model_dir: Path
    manifest: dict[str, Any]
    threads: int
    device: str
    options: dict[str, Any]
    draft_to: tuple[int, int] | None
    max_pixels: int


def worker_main(conn, spec: WorkerSpec, index: int) -> None:
    """A worker process: load and warm up the model, say so, then answer images until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from PIL import Image

    from serving.backends import create_backend
    from serving.images import probe_image
    from serving.limits import lower_priority
    from serving.slot import run_slot

    lower_priority()
    Image.MAX_IMAGE_PIXELS = spec.max_pixels
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")
    backend = create_backend(spec.backend, spec.model_dir, spec.manifest, threads=spec.threads, slots=1,
                             device=spec.device, **spec.options)
    backend.start()
    if backend.state != READY:
        conn.send(("error", backend.error or f"backend {spec.backend} did not start"))
        return
    conn.send(("ready", {"load_seconds": backend.load_seconds, "warmup_seconds": backend.warmup_seconds,
                         "describe": backend.describe()}))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            probe = probe_image(data, max_pixels=spec.max_pixels, draft_to=spec.draft_to)
            del data
            detections, timings = run_slot(backend, None, probe)
            reply: tuple = ("ok", detections, timings)
        except ImageRejected as exc:
            reply = ("rejected", exc.status, exc.code, exc.message)
        except BackendUnavailable as exc:
            reply = ("unavailable", str(exc))
        except Exception as exc:
            logging.getLogger("serving.workers").exception("inference failed")
            reply = ("failed", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


class WorkerDied(BackendError):
    """A worker process ended while it held a request (answered 500; the worker is replaced)."""


class _Worker:
    def __init__(self, index: int, process, conn):
        self.index = index
        self.process = process
        self.conn = conn


class ProcessBackend(Backend):
    """``workers`` processes, each with the backend ``spec.backend`` and one inference at a time.

    The service calls ``run`` (on one of its slot threads) with the encoded image; ``start`` forks
    the workers and waits until every one has loaded and warmed up its model.
    """

    staged = False

    def __init__(self, spec: WorkerSpec, *, workers: int):
        super().__init__(spec.model_dir, spec.manifest, threads=spec.threads, device=spec.device, **spec.options)
        self.name = spec.backend  # type: ignore[misc]
        self.spec = spec
        self.workers = workers
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._alive: dict[int, _Worker] = {}
        self._describe: dict[str, Any] = {}
        self._closed = False
        self.restarts = 0
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["serving.workers", "serving.slot", *PRELOAD.get(spec.backend, ())])
        self._ctx = ctx

    # --- Backend ---------------------------------------------------------------------------------
    def load(self) -> None:
        started = [self._spawn(i) for i in range(self.workers)]
        failures = []
        for worker in started:
            problem = self._await_ready(worker, timeout=None)
            if problem:
                failures.append(f"worker {worker.index}: {problem}")
        if failures:
            self.close()
            raise BackendError("; ".join(failures))
        for worker in started:
            self._idle.put(worker)

    def warmup(self) -> None:
        """Each worker warmed up its own model before it said it was ready."""

    def _predict(self, image) -> list[Detection]:  # pragma: no cover - the service calls run()
        raise BackendError("a process backend takes encoded images: call run()")

    def describe(self) -> dict[str, Any]:
        return {**self._describe, "worker_processes": self.workers, "worker_restarts": self.restarts}

    @property
    def alive(self) -> int:
        return sum(1 for w in list(self._alive.values()) if w.process.is_alive())

    # --- the service's call -----------------------------------------------------------------------
    def run(self, data: bytes) -> tuple[list[Detection], dict[str, float]]:
        """Detections and stage seconds for one encoded image, from the next idle worker."""
        while True:
            try:
                worker = self._idle.get(timeout=1.0)
                break
            except queue.Empty:
                if self.state == ERROR or self._closed:
                    raise BackendUnavailable(self.error or "the worker processes are gone") from None
        try:
            worker.conn.send_bytes(data)
            reply = worker.conn.recv()
        except (EOFError, OSError) as exc:
            self._lost(worker, exc)
            raise WorkerDied(f"worker process {worker.index} ended during an inference "
                             f"({self._exit_reason(worker)}); it is being replaced") from None
        self._idle.put(worker)
        kind = reply[0]
        if kind == "ok":
            return reply[1], reply[2]
        if kind == "rejected":
            raise ImageRejected(reply[1], reply[2], reply[3])
        if kind == "unavailable":
            raise BackendUnavailable(reply[1])
        raise BackendError(f"worker {worker.index}: {reply[1]}")

    def close(self) -> None:
        """End every worker: close its pipe (it returns on EOF), then make sure it is gone."""
        self._closed = True
        workers = list(self._alive.values())
        for w in workers:
            w.conn.close()
        deadline = time.monotonic() + 5.0
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1.0)
        self._alive.clear()

    # --- workers ---------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=worker_main, args=(child, self.spec, index),
                                    name=f"slipway-worker-{index}", daemon=True)
        process.start()
        child.close()
        worker = _Worker(index, process, parent)
        self._alive[index] = worker
        return worker

    def _await_ready(self, worker: _Worker, timeout: float | None) -> str | None:
        """None once the worker says it is ready; otherwise why it is not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not worker.conn.poll(0.2):
            if not worker.process.is_alive():
                return f"the process ended while loading the model ({self._exit_reason(worker)})"
            if deadline is not None and time.monotonic() > deadline:
                return f"not ready after {timeout:.0f}s"
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            return f"the process ended while loading the model ({self._exit_reason(worker)})"
        if kind != "ready":
            return str(payload)
        if not self._describe:
            self._describe = dict(payload.get("describe") or {})
            self.load_seconds = payload.get("load_seconds")
        return None

    @staticmethod
    def _exit_reason(worker: _Worker) -> str:
        worker.process.join(0.5)
        code = worker.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _lost(self, worker: _Worker, exc: BaseException) -> None:
        """A worker that died holding a request: logged, and replaced on a thread of its own."""
        log.error("worker process %d ended during an inference (%s); starting a replacement",
                  worker.index, self._exit_reason(worker))
        worker.conn.close()
        self._alive.pop(worker.index, None)
        if not self._closed:
            threading.Thread(target=self._replace, args=(worker.index,), name=f"replace-worker-{worker.index}",
                             daemon=True).start()

    def _replace(self, index: int) -> None:
        worker = self._spawn(index)
        problem = self._await_ready(worker, timeout=RESTART_TIMEOUT_S)
        if problem:
            # The model no longer starts: the service is not ready, and says why in its log.
            log.error("replacement worker %d did not start: %s", index, problem)
            self._alive.pop(index, None)
            worker.conn.close()
            self.state = ERROR
            self.error = f"worker process {index} could not be replaced: {problem}"
            return
        self.restarts += 1
        log.info("worker process %d replaced", index)
        self._idle.put(worker)
