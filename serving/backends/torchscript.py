"""TorchScript from Python: ``model.torchscript.pt`` with torch (the pytorch-cpu and pytorch-gpu images)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

from serving.backends._candidates import CandidatesMixin
from serving.backends.base import Backend, BackendError
from serving.manifest import model_file

log = logging.getLogger("serving.backend.torchscript")


class TorchScriptBackend(CandidatesMixin, Backend):
    name = "torchscript"

    def load(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        # Inter-op threads can only be set before the first parallel op; a second app in the
        # same process (tests) finds it already set, which is harmless.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        path = self.model_dir / model_file(self.manifest, "torchscript", "model.torchscript.pt")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: TorchScript file not found")
        want_gpu = self.device in ("gpu", "auto") and torch.cuda.is_available()
        if self.device == "gpu" and not want_gpu:
            # A GPU image on a CPU-only host still serves (slowly) rather than refusing; /v1/models says so.
            log.warning(
                "DEVICE=gpu but CUDA is not available (torch %s); running on the CPU", torch.__version__
            )
        self._torch = torch
        self._device = torch.device("cuda" if want_gpu else "cpu")
        # libtorch's oneDNN Graph fuser (CPU only; a process-wide switch read when the graph is
        # optimised during warm-up): about 3x faster forward passes on the example detector.
        self._fused = not want_gpu and bool(self.options.get("onednn_fusion", True))
        torch.jit.enable_onednn_fusion(self._fused)
        self._module = torch.jit.load(str(path), map_location=self._device).eval()
        self._path = path
        self._fusion_error: str | None = None

    def warmup(self) -> None:
        # Several slots share this module; the threads of each call are set once for the process.
        # TorchScript's profiling executor records shapes on the first call and optimises the graph
        # on the second; measured here, those cost about 200 ms and 100 ms against about 10 ms after.
        # Three runs keep both out of the first real request, and prove the fused graph.
        try:
            for _ in range(3):
                super().warmup()
        except Exception as exc:
            if not self._fused:
                raise
            # libtorch's fuser fails on some graphs (a GRU's hidden-state list, for one): serve unfused.
            self._fusion_error = next((line.strip() for line in str(exc).splitlines() if line.strip()), repr(exc))
            log.warning("oneDNN fusion failed on this model (%s); running it unfused", self._fusion_error)
            self._fused = False
            self._torch.jit.enable_onednn_fusion(False)
            self._module = self._torch.jit.load(str(self._path), map_location=self._device).eval()
            for _ in range(3):
                super().warmup()

    def forward(self, batch: np.ndarray):
        # One module, called from several slots at once: the TorchScript interpreter runs concurrent
        # calls, each on ``threads`` intra-op threads (set once; libtorch applies it per calling thread).
        torch = self._torch
        x = torch.from_numpy(batch).to(self._device)
        with torch.inference_mode():
            boxes, scores, classes = self._module(x)
        return boxes.cpu().numpy(), scores.cpu().numpy(), classes.cpu().numpy()

    def check_batch(self, size: int) -> None:
        inp = self.manifest["input"]
        grey = np.full((inp["height"], inp["width"], 3), 127, dtype=np.uint8)
        x = self.prepare(grey)
        try:
            # Every batch size a request may meet, twice each: the profiling executor specialises
            # (and fuses) the graph per input shape, which must not happen on a request's time.
            for n in range(2, size + 1):
                for _ in range(2):
                    outputs = self.forward(self.stack([x] * n))
        except Exception as exc:
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), repr(exc))
            raise BackendError(
                f"SLIPWAY_BATCH_MAX={size}: the TorchScript model does not take a batch of {size} "
                f"(exported with a fixed batch of 1?): {first[:200]}"
            ) from None
        problem = self._batch_outputs_ok(outputs, size)
        if problem:
            raise BackendError(f"SLIPWAY_BATCH_MAX={size}: the TorchScript model cannot batch: {problem}")

    def describe(self) -> dict[str, Any]:
        torch = getattr(self, "_torch", None)
        return {
            "device": str(getattr(self, "_device", self.device)),
            "runtime": f"torch {torch.__version__}" if torch else None,
            "onednn_fusion": getattr(self, "_fused", None),
            **({"fusion_error": self._fusion_error} if getattr(self, "_fusion_error", None) else {}),
        }
