"""Inference worker processes: for runtimes whose pre- and postprocessing run in Python.

A TorchScript module or an ONNX Runtime session runs concurrent inferences on one loaded model,
but decoding, preprocessing and postprocessing in Python hold the interpreter's lock; with the
web server's own Python on the same lock, slots on threads stop scaling at about 1.4x one
client's throughput (measured on 2 CPUs: 273 req/s at 8 clients against 189 at one). Here each
slot is a process of its own, with its own copy of the model, running one inference at a time:
the service's process keeps the HTTP side, admission, metrics and every protocol; a worker gets
the encoded image and sends back its detections and stage timings.

The service imports the framework once and forks the workers while it still has one thread (when
the app is created, before the server starts), so the framework's pages are shared between them
(copy-on-write) and no third process holds a copy. A worker that dies is replaced by a fork of
the running service, which closes the sockets it inherited (the service's listening socket and
client connections) before anything else. A worker ignores SIGINT and ends when the service's
end of its socket closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import multiprocessing
import os
import pickle
import signal
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.backends.base import ERROR, READY, Backend, BackendError, BackendUnavailable, Detection
from serving.images import ImageRejected

log = logging.getLogger("serving.workers")

# What the service imports once for every worker before forking them, per backend (a module that
# cannot be imported is left to the worker, which then says why it cannot start).
PRELOAD = {
    "torchscript": ("torch", "serving.backends.torchscript"),
    "onnx": ("onnxruntime", "serving.backends.onnx"),
    "cpp": ("slipway_runtime", "serving.backends.cpp"),
    "tensorflow": ("tensorflow", "serving.backends.tensorflow"),
}
# Images below this size go to a worker as one frame (header and bytes joined); larger ones in pieces.
SMALL_FRAME = 256 * 1024
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


def _close_inherited_sockets(keep: int) -> None:
    """Close every socket but ``keep``: a worker forked from the running service must not hold its
    listening socket or its clients' connections open (a client would never see them closed).
    Pipes stay: multiprocessing's sentinels are pipes."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(name)
        if fd <= 2 or fd == keep:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)


def worker_main(conn, spec: WorkerSpec, index: int) -> None:
    """A worker process: load and warm up the model, say so, then answer images until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _close_inherited_sockets(keep=conn.fileno())
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
        self.fd = conn.fileno()
        self.inbox = bytearray()  # the reply being read


class ProcessBackend(Backend):
    """``workers`` processes, each with the backend ``spec.backend`` and one inference at a time.

    ``start`` forks the workers and waits until every one has loaded and warmed up its model. The
    service calls ``submit`` on its event loop with the encoded image: the loop writes it to an idle
    worker's socket and reads the answer when the socket is readable, so a request costs two
    wake-ups (the worker's and the loop's), not four as through a thread of the service.
    """

    staged = False

    def __init__(self, spec: WorkerSpec, *, workers: int):
        super().__init__(spec.model_dir, spec.manifest, threads=spec.threads, device=spec.device, **spec.options)
        self.name = spec.backend  # type: ignore[misc]
        self.spec = spec
        self.workers = workers
        # Idle workers (appended from the start and replacement threads, taken on the loop: deque
        # appends and pops are atomic) and the requests waiting for one (loop only).
        self._idle: collections.deque[_Worker] = collections.deque()
        self._waiting: collections.deque[tuple[bytes, asyncio.Future]] = collections.deque()
        self._alive: dict[int, _Worker] = {}
        self._describe: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.restarts = 0
        self.released_bytes = 0
        self._ctx = multiprocessing.get_context("fork")
        for module in ("serving.slot", *PRELOAD.get(spec.backend, ())):
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        # Forked now, while the service has one thread; they load and warm up their models while
        # the service starts, and ``load`` waits for them.
        self._forked = [self._spawn(i) for i in range(workers)]

    # --- Backend ---------------------------------------------------------------------------------
    def load(self) -> None:
        started, self._forked = self._forked, []
        if not started:
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
            self._add_idle(worker)
        # The service runs no inference: the framework's code only its import used goes (serving/memory.py).
        framework = PRELOAD.get(self.spec.backend, ())
        if framework:
            from serving.memory import release_framework_pages

            self.released_bytes = release_framework_pages(framework[0])

    def warmup(self) -> None:
        """Each worker warmed up its own model before it said it was ready."""

    def _predict(self, image) -> list[Detection]:  # pragma: no cover - the service calls submit()
        raise BackendError("a process backend takes encoded images: call submit()")

    def describe(self) -> dict[str, Any]:
        return {**self._describe, "worker_processes": self.workers, "worker_restarts": self.restarts}

    @property
    def alive(self) -> int:
        return sum(1 for w in list(self._alive.values()) if w.process.is_alive())

    # --- the service's call (on its event loop) ---------------------------------------------------
    def submit(self, data: bytes) -> asyncio.Future:
        """A future of (detections, stage seconds) for one encoded image; raises ``ImageRejected``,
        ``BackendUnavailable``, ``WorkerDied`` or ``BackendError`` as the worker answered."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        future = loop.create_future()
        if self.state == ERROR or self._closed:
            future.set_exception(BackendUnavailable(self.error or "the worker processes are gone"))
            return future
        self._waiting.append((data, future))
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        while self._waiting and self._idle:
            data, future = self._waiting.popleft()
            worker = self._idle.popleft()
            if not worker.process.is_alive():
                self._waiting.appendleft((data, future))
                self._lost(worker, "found dead while idle")
                continue
            frame = memoryview(struct.pack("!i", len(data)) + data) if len(data) < SMALL_FRAME else None
            self._write(worker, frame if frame is not None else _Frame(data), future)

    def _write(self, worker: _Worker, frame, future: asyncio.Future, registered: bool = False) -> None:
        """Write what is left of ``frame`` without blocking; the rest when the socket has room."""
        loop = self._loop
        try:
            while True:
                chunk = frame.pending() if isinstance(frame, _Frame) else frame
                if not len(chunk):
                    break
                n = os.write(worker.fd, chunk)
                if isinstance(frame, _Frame):
                    frame.advance(n)
                else:
                    frame = frame[n:]
        except BlockingIOError:
            if not registered:
                loop.add_writer(worker.fd, self._write, worker, frame, future, True)
            elif isinstance(frame, memoryview):
                loop.add_writer(worker.fd, self._write, worker, frame, future, True)  # the rest of it
            return
        except OSError:
            if registered:
                loop.remove_writer(worker.fd)
            self._died(worker, future)
            return
        if registered:
            loop.remove_writer(worker.fd)
        worker.inbox.clear()
        loop.add_reader(worker.fd, self._read, worker, future)

    def _read(self, worker: _Worker, future: asyncio.Future) -> None:
        try:
            chunk = os.read(worker.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._loop.remove_reader(worker.fd)
            self._died(worker, future)
            return
        worker.inbox += chunk
        if len(worker.inbox) < 4:
            return
        (size,) = struct.unpack("!i", worker.inbox[:4])
        if len(worker.inbox) < 4 + size:
            return
        self._loop.remove_reader(worker.fd)
        reply = pickle.loads(worker.inbox[4:4 + size])
        worker.inbox.clear()
        self._idle.append(worker)
        self._dispatch()
        if future.done():  # the request's wait was cancelled; the work is done all the same
            return
        kind = reply[0]
        if kind == "ok":
            future.set_result((reply[1], reply[2]))
        elif kind == "rejected":
            future.set_exception(ImageRejected(reply[1], reply[2], reply[3]))
        elif kind == "unavailable":
            future.set_exception(BackendUnavailable(reply[1]))
        else:
            future.set_exception(BackendError(f"worker {worker.index}: {reply[1]}"))

    def _died(self, worker: _Worker, future: asyncio.Future) -> None:
        self._lost(worker, "ended during an inference")
        if not future.done():
            future.set_exception(WorkerDied(f"worker process {worker.index} ended during an inference "
                                            f"({self._exit_reason(worker)}); it is being replaced"))

    def _add_idle(self, worker: _Worker) -> None:
        """A ready worker (from any thread): idle, and given the next waiting request."""
        os.set_blocking(worker.fd, False)
        self._idle.append(worker)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch)

    def _fail_waiting(self) -> None:
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(BackendUnavailable(self.error or "the worker processes are gone"))

    def close(self) -> None:
        """End every worker: close its socket (it returns on EOF), then make sure it is gone."""
        self._closed = True
        workers = list(self._alive.values())
        for w in workers:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(w.fd)
                    self._loop.remove_writer(w.fd)
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
        """None once the worker says it is ready; otherwise why it is not (blocking: a start thread)."""
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

    def _lost(self, worker: _Worker, how: str) -> None:
        """A worker that died: logged, and replaced on a thread of its own."""
        log.error("worker process %d %s (%s); starting a replacement", worker.index, how, self._exit_reason(worker))
        worker.conn.close()
        self._alive.pop(worker.index, None)
        if not self._closed:
            threading.Thread(target=self._replace, args=(worker.index,), name=f"replace-worker-{worker.index}",
                             daemon=True).start()

    def _replace(self, index: int) -> None:
        worker = self._spawn(index)
        problem = self._await_ready(worker, timeout=RESTART_TIMEOUT_S)
        if self._closed:
            return
        if problem:
            # The model no longer starts: the service is not ready, and says why in its log.
            log.error("replacement worker %d did not start: %s", index, problem)
            self._alive.pop(index, None)
            worker.conn.close()
            self.state = ERROR
            self.error = f"worker process {index} could not be replaced: {problem}"
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._fail_waiting)
            return
        self.restarts += 1
        log.info("worker process %d replaced", index)
        self._add_idle(worker)


class _Frame:
    """A large image's frame, written in pieces without joining the header and the bytes."""

    def __init__(self, data: bytes):
        self.parts = [memoryview(struct.pack("!i", len(data))), memoryview(data)]

    def pending(self) -> memoryview:
        while self.parts and not len(self.parts[0]):
            self.parts.pop(0)
        return self.parts[0] if self.parts else memoryview(b"")

    def advance(self, n: int) -> None:
        self.parts[0] = self.parts[0][n:]
