"""Dynamic batching: the prepared inputs of concurrent requests stacked into one forward pass.

Off by default (``SLIPWAY_BATCH_MAX`` <= 1). When on, each admitted request still runs on its own
slot thread, which decodes and preprocesses its image, hands the input to the ``Batcher`` and
waits; ``runners`` threads each take the first waiting input, gather more for at most
``delay_s`` (or until ``max_batch``), run the model once on the stack, and hand every request
its row of the outputs, which its own thread postprocesses. A runner waits only while another
admitted request is still being decoded or preprocessed (it will join the batch): a lone request
does not wait at all, and under load batches fill within ``delay_s``.

Only backends with ``staged = True`` (prepare / forward / finish) batch, and only when the model
takes a batch: ``Backend.check_batch`` proves it during warm-up, or the backend fails to start
with a message that names SLIPWAY_BATCH_MAX.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from serving.backends.base import Backend, Detection
from serving.limits import lower_priority


class _Item:
    __slots__ = ("done", "error", "index", "outputs", "x")

    def __init__(self, x: Any):
        self.x = x
        self.done = threading.Event()
        self.outputs: Any = None
        self.index = 0
        self.error: BaseException | None = None


class Batcher:
    def __init__(self, backend: Backend, *, max_batch: int, delay_s: float, runners: int = 1,
                 observe_batch=None):
        if not backend.staged:
            raise ValueError(f"the {backend.name} backend cannot batch: it runs one image per call")
        self.backend = backend
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.observe_batch = observe_batch
        # Prepared inputs waiting for a runner (None: a runner's signal to stop). A deque under a
        # condition, not queue.SimpleQueue: with SimpleQueue, a runner's get(timeout=<2 ms>) (the
        # other runner blocked in get()) was seen to stay blocked for over a minute, twice in about
        # ten load runs, leaving its request unanswered; none in as many runs since.
        self._waiting: collections.deque[_Item | None] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        # Requests on their way here (decoding or preprocessing): worth waiting for.
        self._coming = 0
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{i}", daemon=True) for i in range(max(1, runners))
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        with self._ready:
            self._waiting.extend([None] * len(self._threads))
            self._ready.notify_all()

    def _put(self, item: _Item) -> None:
        with self._ready:
            self._waiting.append(item)
            self._ready.notify()

    def expect(self) -> None:
        """A request is on its way (called before its image is decoded); ``settle`` when it has
        arrived (or failed on the way)."""
        with self._ready:
            self._coming += 1

    def settle(self) -> None:
        with self._ready:
            self._coming = max(0, self._coming - 1)
            # A runner waiting for this request need not wait longer if it failed on the way.
            self._ready.notify_all()

    def predict(self, image: Any, timings: dict[str, float]) -> list[Detection]:
        """Detections for one image, its forward pass shared with whatever else is waiting; on the
        caller's (slot) thread, stage times added to ``timings``. Settles an ``expect``."""
        backend = self.backend
        try:
            backend.check_input(image)
            t0 = time.perf_counter()
            x = backend.prepare(image)
            t1 = time.perf_counter()
            item = _Item(x)
            self._put(item)
        finally:
            self.settle()
        item.done.wait()
        t2 = time.perf_counter()
        if item.error is not None:
            raise item.error
        out = backend.finish(image, item.outputs, item.index)
        t3 = time.perf_counter()
        timings["preprocess"] = t1 - t0
        timings["infer"] = t2 - t1
        timings["postprocess"] = t3 - t2
        return out

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` and whatever joins it within ``delay_s``, while others are on their way."""
        items = [first]
        until = time.monotonic() + self.delay_s
        with self._ready:
            while len(items) < self.max_batch:
                if self._waiting:
                    item = self._waiting.popleft()
                    if item is None:
                        return items, True
                    items.append(item)
                    continue
                left = until - time.monotonic()
                if self._coming == 0 or left <= 0:
                    break  # nobody else is on the way, or the delay is spent: run now
                self._ready.wait(left)
        return items, False

    def _loop(self) -> None:
        lower_priority()
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                first = self._waiting.popleft()
            if first is None:
                return
            items, stop = self._gather(first)
            try:
                outputs = self.backend.forward(self.backend.stack([item.x for item in items]))
                for index, item in enumerate(items):
                    item.outputs, item.index = outputs, index
            except BaseException as exc:  # every waiting request gets the error, none hangs
                for item in items:
                    item.error = exc
            finally:
                for item in items:
                    item.x = None
                    item.done.set()
            if self.observe_batch is not None:
                self.observe_batch(len(items))
            if stop:
                return
