"""Service configuration, read once from the environment (see docs/architecture.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("torchscript", "cpp", "onnx", "tensorflow", "tfserving")
# Backends whose model takes a stacked batch (when exported with a dynamic batch dimension).
BATCHING_BACKENDS = ("torchscript", "onnx")
DEVICES = ("auto", "cpu", "gpu")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class ConfigurationError(ValueError):
    """The environment does not describe a service that can start; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    model_dir: Path
    backend: str = "torchscript"
    device: str = "auto"
    tfserving_url: str | None = None
    tfserving_timeout_s: float = 30.0
    host: str = "0.0.0.0"
    port: int = 8080
    # Inference slots (parallel inferences on the one loaded model) and intra-op threads per slot;
    # None: chosen from the container's CPUs (serving.limits.parallelism).
    slots: int | None = None
    threads: int | None = None
    # Worker processes (serving/workers.py), each one slot; None: by the rule of
    # serving.limits.default_parallelism.
    workers: int | None = None
    # Dynamic batching: up to batch_max images per forward, waiting at most batch_delay_ms for
    # the batch to fill; off when batch_max <= 1.
    batch_max: int = 1
    batch_delay_ms: float = 2.0
    # TorchScript backends (torchscript on CPU, cpp): compile the model with libtorch's oneDNN
    # Graph fuser. About 3x faster forward passes on the example detector, same detections.
    onednn_fusion: bool = True
    # 32 MiB covers a lossless 8K photo; anything larger is almost certainly not a single image.
    max_body_bytes: int = 32 * 1024 * 1024
    # Checked against the header before any pixel is decoded; 20000x20000 (400 MP) must never be
    # allocated, while 8K (33 MP) is still a legitimate camera frame.
    max_image_pixels: int = 40_000_000
    log_level: str = "info"
    # Admission (serving/limits.py); None: derived from the container's memory limit and THREADS.
    memory_limit_bytes: int | None = None
    decode_budget_bytes: int | None = None
    body_budget_bytes: int | None = None
    max_inflight: int | None = None
    max_queue: int | None = None
    queue_timeout_s: float | None = None
    # Connections and requests uvicorn holds at once; beyond them it answers 503 at once.
    max_connections: int = 256
    # Seconds: request line and headers complete; body complete; whole request answered.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    request_timeout_s: float = 60.0
    keep_alive_s: float = 5.0

    def parallelism(self) -> tuple[int, int]:
        """(slots, threads per slot): as set, or chosen from the CPUs this process may use."""
        return self.layout()[1:]

    def layout(self) -> tuple[int, int, int]:
        """(worker processes, slots, threads per slot); one process means slots are threads of it.

        SLIPWAY_WORKERS=N > 1: N processes, one slot each. SLIPWAY_WORKERS=1, or SLIPWAY_SLOTS,
        SLIPWAY_THREADS or MAX_INFLIGHT set alone: one process (serving.limits.parallelism).
        Nothing set: serving.limits.default_parallelism."""
        from serving.limits import available_cpus, cgroup_memory_limit, default_parallelism, parallelism

        cpus = available_cpus()
        if self.workers and self.workers > 1:
            return self.workers, self.workers, self.threads or max(1, cpus // self.workers)
        if self.workers == 1 or self.slots or self.threads or self.max_inflight:
            return (1, *parallelism(cpus, self.slots or self.max_inflight, self.threads))
        memory = self.memory_limit_bytes or cgroup_memory_limit() or _physical_memory()
        return default_parallelism(cpus, self.backend, self.device, self.batch_max,
                                   model_bytes=self._model_bytes(), memory_bytes=memory)

    def _model_bytes(self) -> int:
        """Size of the model file this backend loads (0 when it cannot be read here)."""
        from serving.manifest import load_manifest, model_file

        kind, default = {"torchscript": ("torchscript", "model.torchscript.pt"), "cpp": ("torchscript", "model.torchscript.pt"),
                         "onnx": ("onnx", "model.onnx")}.get(self.backend, ("", ""))
        if not kind:
            return 0
        try:
            return (self.model_dir / model_file(load_manifest(self.model_dir), kind, default)).stat().st_size
        except (OSError, ValueError, KeyError):
            return 0

    def limits(self):
        from serving.limits import Limits

        slots, _ = self.parallelism()
        return Limits.derive(
            slots=slots, batch_max=self.batch_max, max_body_bytes=self.max_body_bytes, max_image_pixels=self.max_image_pixels,
            memory_limit_bytes=self.memory_limit_bytes, decode_budget_bytes=self.decode_budget_bytes,
            body_budget_bytes=self.body_budget_bytes, max_inflight=self.max_inflight, max_queue=self.max_queue,
            queue_timeout_s=self.queue_timeout_s,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def integer(key: str, default: int, minimum: int, maximum: int | None = None) -> int:
            raw = env.get(key, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{key}={raw!r}: expected an integer")
                return default
            if value < minimum or (maximum is not None and value > maximum):
                bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
                problems.append(f"{key}={value}: expected an integer {bound}")
            return value

        model_dir_raw = env.get("MODEL_DIR", "").strip()
        if not model_dir_raw:
            problems.append("MODEL_DIR is not set: it must name a folder holding model.json")
        backend = env.get("BACKEND", "torchscript").strip().lower() or "torchscript"
        if backend not in BACKENDS:
            problems.append(f"BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}")
        device = env.get("DEVICE", "auto").strip().lower() or "auto"
        if device not in DEVICES:
            problems.append(f"DEVICE={device!r}: expected one of {', '.join(DEVICES)}")
        tfserving_url = env.get("TFSERVING_URL", "").strip().rstrip("/") or None
        if backend == "tfserving" and not tfserving_url:
            problems.append("BACKEND=tfserving needs TFSERVING_URL (for example http://127.0.0.1:8501)")
        if tfserving_url and not tfserving_url.startswith(("http://", "https://")):
            problems.append(f"TFSERVING_URL={tfserving_url!r}: expected an http:// or https:// URL")
        fusion_raw = env.get("ONEDNN_FUSION", "").strip().lower()
        if fusion_raw not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
            problems.append(f"ONEDNN_FUSION={fusion_raw!r}: expected 1 or 0")
        onednn_fusion = fusion_raw not in ("0", "false", "no", "off")
        def seconds(key: str, default: float | None) -> float | None:
            raw = env.get(key, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
                if not value > 0:
                    raise ValueError
            except ValueError:
                problems.append(f"{key}={raw!r}: expected a positive number of seconds")
                return default
            return value

        def optional_int(key: str, minimum: int, maximum: int | None = None) -> int | None:
            return integer(key, 0, minimum, maximum) if env.get(key, "").strip() else None

        def first_int(keys: tuple[str, ...], minimum: int, maximum: int) -> int | None:
            """The first of ``keys`` that is set (the SLIPWAY_ name, then the older one)."""
            for key in keys:
                if env.get(key, "").strip():
                    return optional_int(key, minimum, maximum)
            return None

        batch_max = integer("SLIPWAY_BATCH_MAX", 1, 1, 1024)
        if batch_max > 1 and backend in BACKENDS and backend not in BATCHING_BACKENDS:
            problems.append(
                f"SLIPWAY_BATCH_MAX={batch_max}: BACKEND={backend} runs one image per call; dynamic "
                f"batching is for {' and '.join(BATCHING_BACKENDS)} (unset it or set it to 1)"
            )
        workers = first_int(("SLIPWAY_WORKERS",), 1, 256)
        slots_set = first_int(("SLIPWAY_SLOTS",), 1, 1024)
        if workers and workers > 1:
            if backend == "tfserving":
                problems.append(f"SLIPWAY_WORKERS={workers}: BACKEND=tfserving forwards to a model server; "
                                "it runs in one process (unset SLIPWAY_WORKERS or set it to 1)")
            if batch_max > 1:
                problems.append(f"SLIPWAY_WORKERS={workers} with SLIPWAY_BATCH_MAX={batch_max}: batching stacks "
                                "the images of one process; set one of them to 1")
            if slots_set and slots_set != workers:
                problems.append(f"SLIPWAY_SLOTS={slots_set} with SLIPWAY_WORKERS={workers}: each worker process is "
                                "one slot; unset SLIPWAY_SLOTS or make it equal")
        batch_delay_ms = cls.batch_delay_ms
        delay_raw = env.get("SLIPWAY_BATCH_DELAY_MS", "").strip()
        if delay_raw:
            try:
                batch_delay_ms = float(delay_raw)
                if not 0 <= batch_delay_ms <= 1000:
                    raise ValueError
            except ValueError:
                problems.append(f"SLIPWAY_BATCH_DELAY_MS={delay_raw!r}: expected milliseconds in 0..1000")
                batch_delay_ms = cls.batch_delay_ms

        timeout_raw = env.get("TFSERVING_TIMEOUT", "").strip()
        timeout = 30.0
        if timeout_raw:
            try:
                timeout = float(timeout_raw)
                if timeout <= 0:
                    raise ValueError
            except ValueError:
                problems.append(f"TFSERVING_TIMEOUT={timeout_raw!r}: expected a positive number of seconds")
                timeout = 30.0
        settings = cls(
            model_dir=Path(model_dir_raw or "."),
            backend=backend,
            device=device,
            tfserving_url=tfserving_url,
            tfserving_timeout_s=timeout,
            host=env.get("HOST", "0.0.0.0").strip() or "0.0.0.0",
            port=integer("PORT", 8080, 1, 65535),
            slots=slots_set,
            workers=workers,
            threads=first_int(("SLIPWAY_THREADS", "THREADS"), 1, 256),
            batch_max=batch_max,
            batch_delay_ms=batch_delay_ms,
            onednn_fusion=onednn_fusion,
            max_body_bytes=integer("MAX_BODY_BYTES", cls.max_body_bytes, 1),
            max_image_pixels=integer("MAX_IMAGE_PIXELS", cls.max_image_pixels, 1),
            log_level=env.get("LOG_LEVEL", "info").strip().lower() or "info",
            memory_limit_bytes=optional_int("MEMORY_LIMIT_BYTES", 1),
            decode_budget_bytes=optional_int("DECODE_BUDGET_BYTES", 1),
            body_budget_bytes=optional_int("BODY_BUDGET_BYTES", 1),
            max_inflight=optional_int("MAX_INFLIGHT", 1),
            max_queue=optional_int("MAX_QUEUE", 0),
            queue_timeout_s=seconds("QUEUE_TIMEOUT_S", None),
            max_connections=integer("MAX_CONNECTIONS", cls.max_connections, 1),
            header_timeout_s=seconds("HEADER_TIMEOUT_S", cls.header_timeout_s) or cls.header_timeout_s,
            body_timeout_s=seconds("BODY_TIMEOUT_S", cls.body_timeout_s) or cls.body_timeout_s,
            request_timeout_s=seconds("REQUEST_TIMEOUT_S", cls.request_timeout_s) or cls.request_timeout_s,
            keep_alive_s=seconds("KEEP_ALIVE_S", cls.keep_alive_s) or cls.keep_alive_s,
        )
        if problems:
            raise ConfigurationError(
                "invalid service configuration:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        return settings
