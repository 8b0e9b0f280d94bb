"""ONNX Runtime: ``model.onnx`` from a PyTorch export (the onnx-cpu image; no torch)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from serving.backends._candidates import CandidatesMixin
from serving.backends.base import Backend, BackendError
from serving.manifest import model_file

log = logging.getLogger("serving.backend.onnx")


class OnnxBackend(CandidatesMixin, Backend):
    name = "onnx"

    def load(self) -> None:
        import onnxruntime as ort

        path = self.model_dir / model_file(self.manifest, "onnx", "model.onnx")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Spinning worker threads keep a core busy after each call, which slows down whatever
        # else runs on the machine (measured: the next process's inference got slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if self.device in ("gpu", "auto") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif self.device == "gpu":
            log.warning("DEVICE=gpu but onnxruntime offers only %s; running on the CPU", available)
        self._ort_version = ort.__version__
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name

    def forward(self, batch: np.ndarray):
        # One session, called from several slots at once: InferenceSession.run is thread-safe.
        # With THREADS=1 each call runs on its caller's thread; with more, the calls share the
        # session's intra-op pool of THREADS threads.
        return tuple(self._session.run(None, {self._input: batch})[:3])

    def check_batch(self, size: int) -> None:
        first = self._session.get_inputs()[0].shape[0] if self._session.get_inputs()[0].shape else None
        if isinstance(first, int):
            raise BackendError(
                f"SLIPWAY_BATCH_MAX={size}: the ONNX model's input {self._input!r} has a fixed batch "
                f"dimension of {first}; export it with a dynamic batch dimension to batch"
            )
        inp = self.manifest["input"]
        grey = np.full((inp["height"], inp["width"], 3), 127, dtype=np.uint8)
        try:
            outputs = self.forward(self.stack([self.prepare(grey)] * size))
        except Exception as exc:
            raise BackendError(
                f"SLIPWAY_BATCH_MAX={size}: the ONNX model does not run a batch of {size}: {str(exc)[:200]}"
            ) from None
        problem = self._batch_outputs_ok(outputs, size)
        if problem:
            raise BackendError(f"SLIPWAY_BATCH_MAX={size}: the ONNX model cannot batch: {problem}")

    def describe(self) -> dict[str, Any]:
        session = getattr(self, "_session", None)
        return {
            "device": "gpu" if session and "CUDAExecutionProvider" in session.get_providers() else "cpu",
            "runtime": f"onnxruntime {self._ort_version}" if session else None,
        }
