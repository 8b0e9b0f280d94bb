"""What every peer's handler runs: Slipway's own pre/postprocessing around the exported TorchScript model.

Runs inside a peer's virtualenv (torch, numpy, pillow at Slipway's pins), with Slipway's
``model_export`` package on ``PYTHONPATH``: the same functions Slipway's service calls, so the
servers differ only in how they serve. Settings come from the environment the runner sets:
``PEER_MODEL_DIR`` (the export folder), ``PEER_THREADS`` (intra-op threads per worker) and
``PEER_ONEDNN_FUSION`` (1, as Slipway's TorchScript backend runs on a CPU, or 0).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model_export.postprocess import postprocess
from model_export.preprocess import preprocess


class Pipeline:
    def __init__(self, model_dir: str | os.PathLike | None = None, threads: int | None = None):
        import torch

        self.torch = torch
        self.threads = int(threads or os.environ.get("PEER_THREADS") or 1)
        torch.set_num_threads(self.threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        folder = Path(model_dir or os.environ["PEER_MODEL_DIR"])
        self.manifest = json.loads((folder / "model.json").read_text())
        name = Path(self.manifest["files"]["torchscript"]["path"]).name
        path = folder / name if (folder / name).is_file() else folder / self.manifest["files"]["torchscript"]["path"]
        torch.jit.enable_onednn_fusion(os.environ.get("PEER_ONEDNN_FUSION", "1") == "1")
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        inp = self.manifest["input"]
        self.input_size = (int(inp["height"]), int(inp["width"]))
        # As Slipway's backend: the profiling executor optimises the graph over the first runs.
        blank = np.zeros((*self.input_size, 3), dtype=np.uint8)
        for _ in range(3):
            self.run([blank])

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))

    def run(self, images: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        torch = self.torch
        x = np.concatenate([preprocess(im, self.manifest["input"]) for im in images])
        with torch.inference_mode():
            boxes, scores, classes = (t.numpy() for t in self.module(torch.from_numpy(x)))
        return [postprocess(boxes[i], scores[i], classes[i], input_size=self.input_size,
                            image_size=(int(im.shape[0]), int(im.shape[1])), output=self.manifest["output"],
                            labels=self.manifest.get("labels") or [])
                for i, im in enumerate(images)]

    def __call__(self, data: bytes) -> dict[str, Any]:
        return {"detections": self.run([self.decode(data)])[0]}

    def batch(self, bodies: list[bytes]) -> list[dict[str, Any]]:
        return [{"detections": d} for d in self.run([self.decode(b) for b in bodies])]
