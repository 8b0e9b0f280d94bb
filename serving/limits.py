"""How much work the service takes on at once, derived from the container's memory limit.

Every predict request costs memory in two places before the model sees it: its body, buffered
while it arrives, and its decoded pixels (Pillow's image, the RGB conversion, the uint8 array).
Both are bounded here, as byte budgets taken from the memory limit of the container (cgroup v2
``memory.max``, or v1 ``memory.limit_in_bytes``), so that no mix of requests can get the process
killed for memory; what does not fit waits in a short queue, and beyond it is refused with 503.

Defaults, for a limit of L bytes (each one overridable, see serving/README.md):
- decoded pixels in memory: 40% of L (the model, its framework and Python keep the rest);
- bodies being received: 10% of L, at least two bodies of the maximum size;
- requests decoding or predicting at once: the inference slots (SLIPWAY_SLOTS, times
  SLIPWAY_BATCH_MAX when batching); waiting for one: 4 x that (at least 8), 5 s at most.

Admission and the inference slots are one mechanism: each admitted request holds a slot (a worker
thread that decodes, preprocesses, runs the shared model and postprocesses it, in one call)
until its answer is ready; the slot count and the intra-op threads of each (SLIPWAY_THREADS) are
chosen from the CPUs the container may use (``available_cpus``) unless set.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
# Without a limit (no cgroup, or "max"), budgets are taken from this much.
UNLIMITED_FALLBACK = 4096 * MiB
# Peak bytes per decoded pixel: Pillow holds RGB as 4 bytes, a conversion from another mode
# (palette, RGBA, 16-bit) holds a second 4-byte image, and the uint8 array handed to the model 3.
BYTES_PER_PIXEL = 4 + 3
CONVERT_BYTES_PER_PIXEL = 4


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup in bytes, or None when there is none."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            value = int(raw)
        except ValueError:
            continue
        # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages).
        return value if 0 < value < 1 << 60 else None
    return None


def cgroup_memory_peak(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup's peak memory use in bytes (v2 memory.peak, v1 max_usage_in_bytes), if known."""
    for path in (root / "memory.peak", root / "memory" / "memory.max_usage_in_bytes"):
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup may use per period (v2 ``cpu.max``, v1 cfs quota/period), or None when unlimited."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1] if len(fields) > 1 else 100000)
        if fields:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity (``--cpuset-cpus``), capped by the cgroup quota
    (``--cpus``, rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None and quota > 0:
        cpus = min(cpus, max(1, math.ceil(quota - 0.01)))
    return max(1, cpus)


def parallelism(cpus: int, slots: int | None, threads: int | None) -> tuple[int, int]:
    """(slots, threads per slot) for ``cpus`` CPUs: whichever is set is kept, the other fills the
    CPUs; with neither, one slot per CPU and two threads per slot (one on a single CPU).

    Measured on 2 CPUs with both examples, TorchScript and ONNX Runtime (serving/README.md): inferences
    side by side gain the most under concurrency, and a second thread per inference keeps the
    single-client latency of a forward-dominated model; 2 x 2 was at or above 2 x 1 and 1 x 2 at
    1 and 8 clients. Oversubscribed only under full load, where the threads sleep at barriers
    (OMP_WAIT_POLICY=PASSIVE) instead of spinning."""
    if slots and threads:
        return slots, threads
    if threads:
        return max(1, cpus // threads), threads
    if slots:
        return slots, max(1, cpus // slots)
    return cpus, min(2, cpus)


# Runtimes whose slots are worker processes by default (serving/workers.py): decoding,
# preprocessing and postprocessing run in Python (under its lock) for TorchScript and ONNX Runtime,
# and decoding for the C++ runtime, beside the web side's own Python.
PROCESS_BACKENDS = ("torchscript", "onnx", "cpp")


# What one worker process is assumed to hold beyond its model's file (interpreter, framework heap,
# warm-up, decode buffers): measured about 140 MiB unshared for torch on the shapes example.
WORKER_BASE_BYTES = 256 * 1024 * 1024
# The share of the memory limit the workers' models may take by default; the rest is for decoding
# (the decode budget is 40% of the limit) and the service's own process.
WORKER_MEMORY_SHARE = 0.5


def default_parallelism(cpus: int, backend: str, device: str, batch_max: int | None = 1, *,
                        model_bytes: int = 0, memory_bytes: int | None = None) -> tuple[int, int, int]:
    """(worker processes, slots, threads per slot) when none of SLIPWAY_WORKERS, SLIPWAY_SLOTS,
    SLIPWAY_THREADS is set.

    TorchScript, ONNX Runtime and the C++ runtime on the CPU, unbatched, on 2 or more CPUs: one
    worker process per CPU, one thread each. Measured on 2 CPUs (shapes example, 8 clients, the
    images' req/s): threads sharing one model stopped at 1.4x one client's throughput (273 against
    189 for TorchScript), held back by Python's lock; a process per CPU does not share it (346
    against 202; C++ 412 against 362 on threads). Everything else keeps one process: TensorFlow
    (its runtime is large to copy, and its graph holds the pre- and postprocessing), a GPU (it
    gains from batching rather than from copies of the model), and one CPU (nothing to gain).

    A worker holds a copy of the model: with ``memory_bytes`` (the container's memory limit) the
    workers are capped so that each may take ``WORKER_BASE_BYTES`` plus three times
    ``model_bytes`` (the model file: weights, their loaded copy, the runtime's work space) within
    half of it; the CPUs left over become threads of each worker. Below two workers, one process.
    """
    cpus = max(1, int(cpus))
    if backend in PROCESS_BACKENDS and device == "cpu" and (batch_max or 1) <= 1 and cpus >= 2:
        workers = cpus
        if memory_bytes:
            per_worker = WORKER_BASE_BYTES + 3 * max(0, int(model_bytes))
            workers = min(workers, int(memory_bytes * WORKER_MEMORY_SHARE // per_worker))
        if workers >= 2:
            return workers, workers, max(1, cpus // workers)
    slots, threads = parallelism(cpus, None, None)
    return 1, slots, threads


@dataclass(frozen=True)
class Limits:
    memory_limit_bytes: int | None
    decode_budget_bytes: int
    body_budget_bytes: int
    max_inflight: int
    max_queue: int
    queue_timeout_s: float
    max_image_pixels: int

    @classmethod
    def derive(cls, *, slots: int, max_body_bytes: int, max_image_pixels: int, batch_max: int = 1,
               memory_limit_bytes: int | None = None, decode_budget_bytes: int | None = None,
               body_budget_bytes: int | None = None, max_inflight: int | None = None,
               max_queue: int | None = None, queue_timeout_s: float | None = None) -> Limits:
        limit = memory_limit_bytes if memory_limit_bytes is not None else cgroup_memory_limit()
        base = limit or UNLIMITED_FALLBACK
        decode = decode_budget_bytes or max(64 * MiB, int(base * 0.40))
        body = body_budget_bytes or max(2 * max_body_bytes, int(base * 0.10))
        # The largest image whose decode fits the whole budget; Pillow's own guard is set to it too.
        pixels = min(max_image_pixels, decode // (BYTES_PER_PIXEL + CONVERT_BYTES_PER_PIXEL))
        # One request per slot (per place in a batch when batching); MAX_INFLIGHT is the older name.
        inflight = max_inflight or max(1, slots * max(1, batch_max))
        return cls(
            memory_limit_bytes=limit,
            decode_budget_bytes=decode,
            body_budget_bytes=body,
            max_inflight=inflight,
            max_queue=max_queue if max_queue is not None else max(8, 4 * inflight),
            queue_timeout_s=queue_timeout_s if queue_timeout_s is not None else 5.0,
            max_image_pixels=max(1, pixels),
        )

    def describe(self) -> dict[str, object]:
        return {
            "memory_limit_bytes": self.memory_limit_bytes,
            "decode_budget_bytes": self.decode_budget_bytes,
            "body_budget_bytes": self.body_budget_bytes,
            "max_inflight": self.max_inflight,
            "max_queue": self.max_queue,
            "queue_timeout_s": self.queue_timeout_s,
            "max_image_pixels": self.max_image_pixels,
        }


def decode_cost(width: int, height: int, mode: str) -> int:
    """Peak bytes the decode of a ``width`` x ``height`` image in ``mode`` holds."""
    per_pixel = BYTES_PER_PIXEL + (0 if mode == "RGB" else CONVERT_BYTES_PER_PIXEL)
    return width * height * per_pixel


class Overloaded(Exception):
    """No room now and no room in the queue (or the wait ran out): answer 503 with Retry-After."""


class ByteBudget:
    """Bytes in use against a capacity; ``take`` never waits (bodies are refused, not queued)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.peak = 0

    def take(self, amount: int) -> bool:
        if self.used + amount > self.capacity:
            return False
        self.used += amount
        self.peak = max(self.peak, self.used)
        return True

    def give(self, amount: int) -> None:
        self.used = max(0, self.used - amount)


class Admission:
    """Requests admitted to decode and predict: at most ``max_inflight`` at once, holding at most
    ``budget`` bytes of decoded pixels; others wait first-come first-served in a queue of
    ``max_queue``, for ``timeout_s`` at most. Used from the event loop only (no locks needed)."""

    def __init__(self, *, budget: int, max_inflight: int, max_queue: int, timeout_s: float):
        self.budget = budget
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.used = 0
        self.inflight = 0
        self.peak_used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _fits(self, cost: int) -> bool:
        return self.inflight < self.max_inflight and self.used + cost <= self.budget

    def _grant(self, cost: int) -> None:
        self.inflight += 1
        self.used += cost
        self.peak_used = max(self.peak_used, self.used)

    async def acquire(self, cost: int, timeout_s: float | None = None) -> None:
        """Wait for room for ``cost`` bytes; raise Overloaded when the queue is full or the wait too
        long (``timeout_s``, when shorter than the queue's own)."""
        cost = min(cost, self.budget)  # one image larger than the budget runs alone
        if not self._waiters and self._fits(cost):
            self._grant(cost)
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded("queue full")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, future)
        self._waiters.append(entry)
        try:
            wait = self.timeout_s if timeout_s is None else max(0.0, min(self.timeout_s, timeout_s))
            await asyncio.wait_for(asyncio.shield(future), wait)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():
                # Granted just as the wait ended: hand the room on.
                self.release(cost)
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise Overloaded("queue wait timed out") from None

    def release(self, cost: int) -> None:
        cost = min(cost, self.budget)
        self.inflight = max(0, self.inflight - 1)
        self.used = max(0, self.used - cost)
        while self._waiters:
            head_cost, head = self._waiters[0]
            if head.cancelled():
                self._waiters.popleft()
                continue
            if not self._fits(head_cost):
                break
            self._waiters.popleft()
            self._grant(head_cost)
            head.set_result(None)



# Niceness of the threads that decode and run the model (and of the framework threads they start).
# The event loop keeps 0, so under full load it still gets the CPU first: health checks and
# refusals are answered at once instead of queueing behind inference for the container's cores.
WORKER_NICE = 10


def lower_priority() -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread and inherited by new threads)."""
    import threading

    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
