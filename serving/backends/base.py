"""The interface every backend implements; the service only ever talks to this.

A backend owns one model: ``load`` reads it from ``model_dir``, ``warmup`` runs one inference so
the first real request does not pay for lazy initialisation, and ``predict`` turns a uint8 HWC
RGB image of any size into detections in original-image pixels::

    {"box": [x1, y1, x2, y2], "score": s, "class_id": c, "label": "circle"}

``start`` runs load + warmup and records the outcome in ``state`` ("loading", "ready", "error"),
which is what /readyz reports.

Concurrency: one loaded model serves several inference slots (threads) at once. TorchScript
modules, ONNX Runtime sessions, the C++ runtime's Detector and TensorFlow's concrete functions
all run concurrent calls on one instance; a backend that cannot sets ``concurrent = False`` and
its calls are serialised. ``threads`` is the intra-op thread count of ONE call.

Stages: a backend whose work splits into ``prepare`` (preprocess one image into a model input
with a leading batch dimension of 1), ``forward`` (run the model on a stacked batch) and
``finish`` (the detections of one image of the batch) sets ``staged = True``; ``predict`` then
times each stage, and dynamic batching (serving/batching.py) can stack the inputs of several
requests into one ``forward``.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger("serving.backend")

Detection = dict[str, Any]

LOADING = "loading"
READY = "ready"
ERROR = "error"


class BackendError(RuntimeError):
    """The backend failed in a way that is the server's fault (answered 500, never with details of internals)."""


class BackendUnavailable(BackendError):
    """The backend cannot serve right now (an external server is down, the model is still loading): 503."""


class Backend(ABC):
    name: ClassVar[str]
    # What ``predict`` takes: "array" (uint8 HWC numpy array, the contract) or "pil" (an RGB PIL
    # image, for a backend that only forwards pixels and so lets its image go without numpy).
    input_kind: ClassVar[str] = "array"
    # Whether ``predict`` may run on several threads at once (on the one loaded model).
    concurrent: ClassVar[bool] = True
    # Whether the backend implements prepare / forward / finish (and so can batch).
    staged: ClassVar[bool] = False

    def __init__(
        self, model_dir: Path, manifest: dict[str, Any], *, threads: int = 2, device: str = "auto", **options
    ):
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.threads = threads
        self.device = device
        self.options = options
        self.state = LOADING
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.warmup_seconds: float | None = None
        self.ready_at: float | None = None  # time.monotonic() when it became ready
        # Serialises calls only for a backend that cannot run concurrently (and warm-up).
        self._lock = threading.Lock()
        self._call_guard = nullcontext() if self.concurrent else self._lock
        # Each stage timed apart, unless a subclass replaced _predict itself.
        self._timed_stages = self.staged and type(self)._predict is Backend._predict
        # The largest batch ``forward`` must take (dynamic batching); checked during warm-up.
        self.batch_max = 1
        self._ready_event = threading.Event()
        self._start_lock = threading.Lock()
        self._last_attempt = 0.0

    # Seconds between retries of a start that failed because something external was unavailable.
    retry_interval_s: ClassVar[float] = 1.0

    # --- what a backend implements -------------------------------------------------------------
    @abstractmethod
    def load(self) -> None:
        """Read the model from ``model_dir``; raise with a message a user can act on."""

    def _predict(self, image: np.ndarray) -> list[Detection]:
        """Detections for one uint8 HWC RGB image, boxes in the image's own pixels."""
        if not self.staged:
            raise NotImplementedError(f"{type(self).__name__} implements neither _predict nor the stages")
        return self.finish(image, self.forward(self.prepare(image)), 0)

    # --- stages (backends with ``staged = True``) -------------------------------------------------
    def prepare(self, image: Any) -> Any:
        """One image -> the model's input for it, with a leading batch dimension of 1."""
        raise NotImplementedError

    def stack(self, inputs: list[Any]) -> Any:
        """Prepared inputs -> one batch (numpy arrays concatenated on the batch dimension)."""
        import numpy as np

        return inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=0)

    def forward(self, batch: Any) -> Any:
        """The model on a batch -> its outputs (each with the batch dimension first)."""
        raise NotImplementedError

    def finish(self, image: Any, outputs: Any, index: int) -> list[Detection]:
        """The detections of image ``index`` of the batch ``outputs`` came from."""
        raise NotImplementedError

    def check_batch(self, size: int) -> None:
        """Prove during warm-up that ``forward`` takes a batch of ``size``; raise BackendError if not."""
        raise BackendError(f"the {self.name} backend runs one image per call: it cannot batch")

    def warmup(self) -> None:
        """One inference on a neutral grey image at the model's input size."""
        inp = self.manifest["input"]
        if self.input_kind == "pil":
            from PIL import Image

            self._predict(Image.new("RGB", (inp["width"], inp["height"]), (127, 127, 127)))
        else:
            import numpy as np

            self._predict(np.full((inp["height"], inp["width"], 3), 127, dtype=np.uint8))

    def check(self) -> str | None:
        """For backends that depend on something outside the process: why it cannot serve now, or None."""
        return None

    def describe(self) -> dict[str, Any]:
        """Backend-specific facts for /v1/models/{name} (device, runtime version, remote URL)."""
        return {}

    # --- what the service calls ------------------------------------------------------------------
    def start(self) -> None:
        """Load and warm up; never raises: the outcome is in ``state`` and ``error``."""
        with self._start_lock:
            self._last_attempt = time.monotonic()
            try:
                self._start()
            finally:
                self._ready_event.set()

    def _start(self) -> None:
        started = time.perf_counter()
        try:
            self.load()
            self.load_seconds = time.perf_counter() - started
            warm = time.perf_counter()
            with self._lock:
                self.warmup()
                if self.batch_max > 1:
                    self.check_batch(self.batch_max)
            self.warmup_seconds = time.perf_counter() - warm
        except BackendUnavailable as exc:
            # An external server that is down now may come up later: stay in "loading" and let
            # predict/readyz retry instead of failing for good.
            self.error = str(exc)
            log.warning("backend %s not ready yet: %s", self.name, exc)
            return
        except Exception as exc:
            self.state = ERROR
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("backend %s failed to start: %s", self.name, self.error, exc_info=True)
            return
        self.state = READY
        self.error = None
        self.ready_at = time.monotonic()
        log.info(
            "backend %s ready (load %.2fs, warm-up %.2fs)", self.name, self.load_seconds, self.warmup_seconds
        )

    def _retry_if_waiting(self) -> None:
        """A start that found an external dependency down is retried, at most every retry_interval_s."""
        if (
            self.state == LOADING
            and self._ready_event.is_set()
            and time.monotonic() - self._last_attempt >= self.retry_interval_s
            and not self._start_lock.locked()
        ):
            self.start()

    def wait_started(self, timeout: float | None = None) -> bool:
        """True once ``start`` has finished, whatever its outcome."""
        return self._ready_event.wait(timeout)

    def readiness(self, *, probe: bool = True) -> tuple[bool, str | None]:
        """(ready, reason): loaded, warmed up, and (with ``probe``) whatever it depends on reachable.

        Predict passes ``probe=False``: it finds out about an unreachable server by calling it,
        without paying for a status request first.
        """
        self._retry_if_waiting()
        if self.state == ERROR:
            return False, self.error
        if self.state == LOADING:
            return False, self.error or "model is loading"
        problem = self.check() if probe else None
        return problem is None, problem

    def check_input(self, image: Any) -> None:
        self._retry_if_waiting()
        if self.state != READY:
            raise BackendUnavailable(self.error or "model is loading")
        if self.input_kind == "pil":
            if getattr(image, "mode", None) != "RGB":
                raise ValueError(f"expected an RGB PIL image, got {type(image).__name__}")
        elif getattr(image, "dtype", None) != "uint8" or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HWC RGB array, got {getattr(image, 'dtype', type(image))}")

    def predict(self, image: np.ndarray | Image.Image, timings: dict[str, float] | None = None) -> list[Detection]:
        """Detections for one image; with ``timings``, the seconds of each stage are added to it
        (preprocess, infer, postprocess; a backend that is not staged reports all of it as infer)."""
        self.check_input(image)
        with self._call_guard:
            if timings is None:
                return self._predict(image)
            if not self._timed_stages:
                started = time.perf_counter()
                out = self._predict(image)
                timings["infer"] = timings.get("infer", 0.0) + time.perf_counter() - started
                return out
            t0 = time.perf_counter()
            x = self.prepare(image)
            t1 = time.perf_counter()
            outputs = self.forward(x)
            t2 = time.perf_counter()
            out = self.finish(image, outputs, 0)
            t3 = time.perf_counter()
        timings["preprocess"] = timings.get("preprocess", 0.0) + t1 - t0
        timings["infer"] = timings.get("infer", 0.0) + t2 - t1
        timings["postprocess"] = timings.get("postprocess", 0.0) + t3 - t2
        return out
