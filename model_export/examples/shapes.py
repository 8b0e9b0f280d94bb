"""Synthetic detection data: coloured circles, squares and triangles on noisy backgrounds.

Every sample is fully determined by its seed, so training data, held-out evaluation data and the
golden images of an export can be regenerated anywhere without shipping a dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

LABELS: tuple[str, ...] = ("circle", "square", "triangle")

# (width, height); deliberately not all equal to the model input so that resizing is exercised.
SIZES: tuple[tuple[int, int], ...] = ((128, 128), (160, 120), (192, 160), (120, 160), (176, 144))

# Seeds below HELD_OUT_SEED are for training; evaluation and golden images use seeds above it.
HELD_OUT_SEED = 1_000_000


@dataclass(frozen=True)
class Sample:
    seed: int
    image: np.ndarray  # uint8 [H, W, 3] RGB
    boxes: np.ndarray  # float32 [M, 4] x1, y1, x2, y2 in pixels (x2/y2 exclusive)
    classes: np.ndarray  # int64 [M]

    def ground_truth(self) -> list[dict]:
        return [
            {"box": [float(v) for v in box], "class_id": int(c)}
            for box, c in zip(self.boxes, self.classes, strict=True)
        ]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _mask(kind: int, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    # Pixel centres (x + 0.5) so that a shape's extent does not depend on where it lands in the grid.
    px, py = xx + 0.5 - cx, yy + 0.5 - cy
    if kind == 0:
        return px * px + py * py <= r * r
    if kind == 1:
        return (np.abs(px) <= r) & (np.abs(py) <= r)
    # Upright isosceles triangle: apex at the top, base at the bottom of the r-square.
    frac = (py + r) / (2 * r)
    return (py >= -r) & (py <= r) & (np.abs(px) <= r * frac)


def make_sample(seed: int, size: tuple[int, int] | None = None) -> Sample:
    """One image with 1-4 shapes; ``size`` is (width, height), drawn from SIZES when omitted."""
    rng = np.random.default_rng(seed)
    width, height = size if size is not None else SIZES[int(rng.integers(len(SIZES)))]
    background = rng.integers(0, 256, 3).astype(np.float32)
    sigma = float(rng.uniform(4.0, 20.0))
    image = background + rng.normal(0.0, sigma, (height, width, 3)).astype(np.float32)
    # A soft brightness gradient so the background is not a flat colour plus noise.
    gx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None]
    image += gx * float(rng.uniform(-25.0, 25.0))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(30):
            kind = int(rng.integers(3))
            side = float(rng.uniform(0.12, 0.30)) * min(width, height)
            r = side / 2
            cx = float(rng.uniform(r + 1, width - r - 1))
            cy = float(rng.uniform(r + 1, height - r - 1))
            mask = _mask(kind, xx, yy, cx, cy, r)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
            if any(_iou(box, other) > 0.05 for other in boxes):
                continue
            colour = rng.integers(0, 256, 3).astype(np.float32)
            if np.linalg.norm(colour - background) < 120:
                continue
            image[mask] = colour + rng.normal(0.0, sigma / 2, (int(mask.sum()), 3)).astype(np.float32)
            boxes.append(box)
            classes.append(kind)
            break

    return Sample(
        seed=seed,
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.array(classes, dtype=np.int64),
    )


def samples(seeds: Iterable[int]) -> Iterator[Sample]:
    for seed in seeds:
        yield make_sample(seed)


def held_out_seeds(count: int, offset: int = 0) -> range:
    return range(HELD_OUT_SEED + offset, HELD_OUT_SEED + offset + count)


def golden(count: int, seed: int) -> list[tuple[np.ndarray, list[dict]]]:
    """The golden-set hook of the shapes examples (``models[].golden.hook`` in release.toml):
    ``count`` held-out samples from ``seed`` on, as (image, [{"box", "label"}])."""
    out = []
    for i in range(count):
        s = make_sample(seed + i)
        out.append((s.image, [{"box": [float(v) for v in box], "label": LABELS[int(c)]}
                              for box, c in zip(s.boxes, s.classes, strict=True)]))
    return out
