"""The interface every backend implements; the service only ever talks to this.

A backend owns one model: ``load`` reads it from ``model_dir``, ``warmup`` runs one inference so
the first real request does not pay for lazy initialisation, and ``predict`` turns a uint8 HWC
RGB image of any size into detections in original-image pixels::

    {"box": [x1, y1, x2, y2], "score": s, "class_id": c, "label": "circle"}

``start`` runs load + warmup and records the outcome in ``state`` ("loading", "ready", "error"),
which is what /readyz reports.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
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
        # One inference at a time: each backend already uses ``threads`` cores, so running requests
        # concurrently only oversubscribes the CPU and makes every latency worse.
        self._lock = threading.Lock()
        self._ready_event = threading.Event()
        self._start_lock = threading.Lock()
        self._last_attempt = 0.0

    # Seconds between retries of a start that failed because something external was unavailable.
    retry_interval_s: ClassVar[float] = 1.0

    # --- what a backend implements -------------------------------------------------------------
    @abstractmethod
    def load(self) -> None:
        """Read the model from ``model_dir``; raise with a message a user can act on."""

    @abstractmethod
    def _predict(self, image: np.ndarray) -> list[Detection]:
        """Detections for one uint8 HWC RGB image, boxes in the image's own pixels."""

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

    def predict(self, image: np.ndarray | Image.Image) -> list[Detection]:
        self._retry_if_waiting()
        if self.state != READY:
            raise BackendUnavailable(self.error or "model is loading")
        if self.input_kind == "pil":
            if getattr(image, "mode", None) != "RGB":
                raise ValueError(f"expected an RGB PIL image, got {type(image).__name__}")
        elif getattr(image, "dtype", None) != "uint8" or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HWC RGB array, got {getattr(image, 'dtype', type(image))}")
        with self._lock:
            return self._predict(image)
