"""TorchScript from Python: ``model.torchscript.pt`` with torch (the pytorch-cpu and pytorch-gpu images)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

from serving.backends._candidates import CandidatesMixin
from serving.backends.base import Backend, Detection
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
        self._module = torch.jit.load(str(path), map_location=self._device).eval()
        self._path = path

    def warmup(self) -> None:
        # TorchScript's profiling executor records shapes on the first call and optimises the graph
        # on the second; measured here, those cost about 200 ms and 100 ms against about 10 ms after.
        # Three runs keep both out of the first real request.
        for _ in range(3):
            super().warmup()

    def _predict(self, image: np.ndarray) -> list[Detection]:
        torch = self._torch
        x = torch.from_numpy(self._preprocess(image)).to(self._device)
        with torch.inference_mode():
            boxes, scores, classes = self._module(x)
        return self._postprocess(image, boxes.cpu().numpy(), scores.cpu().numpy(), classes.cpu().numpy())

    def describe(self) -> dict[str, Any]:
        torch = getattr(self, "_torch", None)
        return {
            "device": str(getattr(self, "_device", self.device)),
            "runtime": f"torch {torch.__version__}" if torch else None,
        }
