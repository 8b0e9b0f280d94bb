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


def resize_bilinear(image: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """[H, W, C] uint8 (or float32) -> float32 [C, height, width] (channels first, as the model takes it).

    Only the pixels the interpolation reads are converted to float32: the two source rows of each
    output row, and (for an image more than twice as wide as the output) the two source columns of
    each output column, gathered as bytes first. A 6000x6000 photo converts about 2 x height x
    2 x width pixels, not a 432 MB float copy of itself. Each value is computed exactly as
    ``(row0 * wy0 + row1 * wy1)[x0] * wx0 + (...)[x1] * wx1`` in float32, the same operations in
    the same order whatever the path, so the result does not depend on the image's size class.
    ``out``, if given, is the float32 [C, height, width] array to write into.
    """
    h, w = image.shape[:2]
    f32 = np.float32
    chw = image.transpose(2, 0, 1)
    if out is None:
        out = np.empty((image.shape[2], height, width), dtype=f32)
    if (h, w) == (height, width):
        out[...] = chw
        return out
    y0, y1, wy0, wy1 = _linear_weights(h, height)
    x0, x1, wx0, wx1 = _linear_weights(w, width)
    top, bottom = chw[:, y0], chw[:, y1]  # [C, height, w], still the image's dtype
    if w > 2 * width:
        # Keep only the columns some output column reads, and index into them.
        cols, inverse = np.unique(np.concatenate([x0, x1]), return_inverse=True)
        top, bottom = np.take(top, cols, axis=2), np.take(bottom, cols, axis=2)
        x0, x1 = inverse[:width], inverse[width:]
    rows = top.astype(f32)
    rows *= wy0[None, :, None]
    lower = bottom.astype(f32)
    lower *= wy1[None, :, None]
    rows += lower
    np.multiply(np.take(rows, x0, axis=2), wx0, out=out)
    right = np.take(rows, x1, axis=2)
    right *= wx1
    out += right
    return out


def preprocess(image: np.ndarray, spec: Any) -> np.ndarray:
    """One uint8 RGB image -> float32 [1, 3, H, W] for the model described by ``spec``."""
    return preprocess_batch([image], spec)


def preprocess_batch(images: Sequence[np.ndarray], spec: Any) -> np.ndarray:
    spec = InputSpec.from_any(spec)
    if spec.resize != "stretch":
        raise ValueError(f"unsupported resize mode {spec.resize!r} (only 'stretch')")
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    out = np.empty((len(images), 3, spec.height, spec.width), dtype=np.float32)
    for i, image in enumerate(images):
        check_image(image)
        # In place, in the output: (x / 255 - mean) / std, the contract's operations in its order.
        x = resize_bilinear(image, spec.height, spec.width, out=out[i])
        x /= np.float32(255.0)
        x -= mean
        x /= std
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
