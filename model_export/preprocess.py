"""Image preprocessing shared by export, verification and serving (the contract in docs/architecture.md).

uint8 HWC RGB, any size -> float32 NCHW: convert to float (0..255), resize to the model input with
bilinear interpolation (half-pixel centres, no antialias, the same as
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``),
then ``(x / 255 - mean) / std``.  The numpy version is what deployments use; the torch version
feeds the eager reference, so verification also proves the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int = 3
    dtype: str = "uint8"
    resize: str = "stretch"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)

    @classmethod
    def from_any(cls, spec: Any) -> InputSpec:
        """From a model.json ``input`` dict, a config object with the same attributes, or an InputSpec."""
        if isinstance(spec, InputSpec):
            return spec
        get = spec.get if isinstance(spec, Mapping) else lambda k, d=None: getattr(spec, k, d)
        return cls(
            height=int(get("height")),
            width=int(get("width")),
            channels=int(get("channels", 3)),
            dtype=str(get("dtype", "uint8")),
            resize=str(get("resize", "stretch")),
            mean=tuple(float(v) for v in get("mean", (0.5, 0.5, 0.5))),
            std=tuple(float(v) for v in get("std", (0.25, 0.25, 0.25))),
        )

    def to_json(self) -> dict:
        return {
            "height": self.height, "width": self.width, "channels": self.channels, "dtype": self.dtype,
            "resize": self.resize, "mean": list(self.mean), "std": list(self.std),
        }


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {dtype} {shape}")


def _linear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Same index arithmetic as ATen's upsample_bilinear2d with align_corners=False, in float32.
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] (uint8 or float32) -> float32 [height, width, C].

    Only the rows the interpolation reads are converted to float32: a 6000x6000 photo costs two
    rows per output row, not a 432 MB float copy of the whole image. The values are the same
    (uint8 -> float32 is exact).
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)
    y0, y1, wy0, wy1 = _linear_weights(h, height)
    x0, x1, wx0, wx1 = _linear_weights(w, width)
    f32 = np.float32
    rows = image[y0].astype(f32, copy=False) * wy0[:, None, None] + image[y1].astype(f32, copy=False) * wy1[:, None, None]
    return rows[:, x0] * wx0[None, :, None] + rows[:, x1] * wx1[None, :, None]


def preprocess(image: np.ndarray, spec: Any) -> np.ndarray:
    """One uint8 RGB image -> float32 [1, 3, H, W] for the model described by ``spec``."""
    return preprocess_batch([image], spec)


def preprocess_batch(images: Sequence[np.ndarray], spec: Any) -> np.ndarray:
    spec = InputSpec.from_any(spec)
    if spec.resize != "stretch":
        raise ValueError(f"unsupported resize mode {spec.resize!r} (only 'stretch')")
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out = np.empty((len(images), 3, spec.height, spec.width), dtype=np.float32)
    for i, image in enumerate(images):
        check_image(image)
        x = resize_bilinear(image, spec.height, spec.width)
        x = (x / np.float32(255.0) - mean) / std
        out[i] = x.transpose(2, 0, 1)
    return out


def preprocess_torch(image: np.ndarray, spec: Any):
    """The same with torch ops, for the eager reference: float32 tensor [1, 3, H, W]."""
    import torch
    import torch.nn.functional as F

    spec = InputSpec.from_any(spec)
    check_image(image)
    # A copy: images decoded by PIL come as read-only arrays, which torch.from_numpy warns about.
    x = torch.from_numpy(np.array(image, order="C")).permute(2, 0, 1)[None].to(torch.float32)
    if tuple(x.shape[2:]) != (spec.height, spec.width):
        x = F.interpolate(x, size=(spec.height, spec.width), mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x / 255.0 - mean) / std
