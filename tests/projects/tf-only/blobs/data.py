"""Generated data: bright discs and bars on dark, noisy backgrounds; each image set by its seed."""

from __future__ import annotations

import numpy as np

LABELS: tuple[str, ...] = ("disc", "bar")
SIZES: tuple[tuple[int, int], ...] = ((96, 96), (128, 96), (96, 128), (120, 120))
HELD_OUT_SEED = 100_000


def make_image(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [H, W, 3], boxes [M, 4] (x1, y1, x2, y2), classes [M]."""
    rng = np.random.default_rng(seed)
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    image = rng.uniform(0, 70, 3) + rng.normal(0, 8, (height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            kind = int(rng.integers(2))
            if kind == 0:
                r = rng.uniform(0.08, 0.2) * min(width, height)
                half_w = half_h = r
            else:
                long, short = rng.uniform(0.25, 0.45), rng.uniform(0.05, 0.09)
                half_w, half_h = (long, short) if rng.random() < 0.5 else (short, long)
                half_w, half_h = half_w * width / 2, half_h * height / 2
            cx, cy = rng.uniform(half_w + 1, width - half_w - 1), rng.uniform(half_h + 1, height - half_h - 1)
            box = np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
            if any(max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1])) > 0
                   for b in boxes):
                continue
            if kind == 0:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            else:
                mask = (np.abs(xx - cx) <= half_w) & (np.abs(yy - cy) <= half_h)
            image[mask] = rng.uniform(150, 255, 3) + rng.normal(0, 8, (int(mask.sum()), 3))
            ys, xs = np.nonzero(mask)
            boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32))
            classes.append(kind)
            break
    return (np.clip(np.rint(image), 0, 255).astype(np.uint8), np.array(boxes, np.float32).reshape(-1, 4),
            np.array(classes, np.int64))


def golden(count: int, seed: int) -> list[tuple[np.ndarray, list[dict]]]:
    """Golden-data hook named in release.toml: ``count`` held-out images from ``seed`` on."""
    out = []
    for i in range(count):
        image, boxes, classes = make_image(HELD_OUT_SEED + seed + i)
        out.append((image, [{"box": [float(v) for v in b], "label": LABELS[int(c)]}
                            for b, c in zip(boxes, classes, strict=True)]))
    return out
